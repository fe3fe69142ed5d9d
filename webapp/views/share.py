"""Sharing: the owner shares a conversation (a confirmation page, then a snapshot under a link) or
stops sharing it; anyone with the link reads the snapshot, `/s/<token>`, without the app around it."""

import io

from flask import Blueprint, abort, redirect, render_template, request, send_file, url_for

from .. import page, sharing
from .conversations import title_of
from . import wiring

bp = Blueprint("share", __name__)


@bp.route("/c/<cid>/share", methods=["GET", "POST"])
def share(cid):
    entry = wiring.browser().owned(cid)
    conv = wiring.current(cid)
    if request.method == "GET":
        return render_template("share.html", cid=cid, title=title_of(entry, conv), shared=conv.get("share"))
    sharing.share(wiring.store(), cid, title_of(entry, conv))
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor="shared"), code=303)


@bp.post("/c/<cid>/share/stop")
def stop(cid):
    wiring.browser().owned(cid)
    sharing.stop(wiring.store(), cid)
    return redirect(url_for("chat.conversation_page", cid=cid), code=303)


@bp.get("/s/<token>")
def view(token):
    snapshot = sharing.shared(wiring.store(), token)
    if snapshot is None:
        abort(404)
    shown = page.with_html(sharing.messages(snapshot), snapshot["meta"], {}, share=token)
    response = render_template("shared.html", title=snapshot.get("title") or "Conversation", messages=shown,
                               at=snapshot.get("at"), dropped=min(snapshot.get("dropped", 0), len(shown)))
    return response, 200, {"X-Robots-Tag": "noindex, nofollow"}


@bp.get("/s/<token>/files/<sha>")
def file(token, sha):
    snapshot = sharing.shared(wiring.store(), token)
    found = sharing.file_of(wiring.store(), snapshot, sha) if snapshot else None
    if found is None:
        abort(404)
    ref, data = found
    response = send_file(io.BytesIO(data), mimetype=ref["mime"], as_attachment=ref["kind"] != "image",
                         download_name=ref["name"], etag=sha, conditional=True, max_age=None)
    response.headers["Cache-Control"] = "private, max-age=86400"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response
