"""An attachment's bytes, for the browser that owns its conversation only (any other gets a 404):
images are shown in the conversation (their `<img src>`), other files download under their name."""

import io

from flask import Blueprint, abort, send_file

from .. import attachments
from . import wiring

bp = Blueprint("files", __name__)


@bp.get("/c/<cid>/files/<sha>")
def attachment(cid, sha):
    wiring.browser().owned(cid)
    found = attachments.stored(wiring.store(), cid, sha)
    if found is None:
        abort(404)
    ref, data = found
    image = ref["kind"] == attachments.IMAGE
    response = send_file(io.BytesIO(data), mimetype=ref["mime"], as_attachment=not image,
                         download_name=ref["name"], etag=sha, conditional=True, max_age=None)
    # Someone's file: kept by their browser (it never changes: its name is its hash), never by a proxy.
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response
