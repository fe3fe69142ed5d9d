"""Keeping and sharing: export a conversation as Markdown or as JSON (its exact Responses API items
plus metadata), and import such a JSON file as a new conversation of this browser."""

import json
import re

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for

from .. import conversation, render, transfer
from ..limits import per_session_and_address
from ..ownership import new_id
from ..settings import upload_limit
from . import wiring
from .conversations import title_of

bp = Blueprint("transfer", __name__)
IMPORTED = " (imported)"  # so the copy is told apart from its original in the list


def _filename(title, ext):
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-")[:60] or "conversation"
    return f"{stem}.{ext}"


def _prices():
    offers = wiring.offers()
    return offers.offer(offers.models()).prices


def _download(body, content_type, filename):
    # content_type, not mimetype: Flask would append its own charset to a text/ mimetype.
    response = Response(body, content_type=content_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.get("/c/<cid>/export.md")
def export_markdown(cid):
    entry = wiring.browser().owned(cid)  # 404 unless this browser's, before anything is read
    conv = wiring.current(cid)
    title = title_of(entry, conv)
    prices = _prices()
    return _download(transfer.to_markdown(conv, title, prices), "text/markdown; charset=utf-8",
                     _filename(title, "md"))


@bp.get("/c/<cid>/export.json")
def export_json(cid):
    entry = wiring.browser().owned(cid)  # 404 unless this browser's, before anything is read
    conv = wiring.current(cid)
    title = title_of(entry, conv)
    prices = _prices()
    store = wiring.store()
    body = json.dumps(transfer.to_json(conv, title, prices, read=lambda sha: store.get_file(cid, sha)),
                      ensure_ascii=False, indent=1)
    return _download(body, "application/json", _filename(title, "json"))


@bp.route("/import", methods=["GET", "POST"])
@per_session_and_address  # counted like a send: each import stores a conversation
def import_conversation():
    if request.method == "GET":
        return render_template("import.html")
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return render_template("import.html", error="Choose a JSON file exported from this app."), 400
    config = current_app.config
    try:
        limit = upload_limit(config)
        conv = transfer.from_bytes(upload.read(limit + 1), limit, max_chars=config["MAX_MESSAGE_CHARS"],
                                   max_file_bytes=config["MAX_ATTACHMENT_BYTES"])
    except transfer.ImportProblem as problem:
        return render_template("import.html", error=f"That file cannot be imported: {problem}"), 400
    offers = wiring.offers()
    if conv["settings"].get("model") not in offers.offered(offers.models()):
        conv["settings"]["model"] = None  # not offered here: the default model answers it
    for item, meta in zip(conv["items"], conv["meta"]):
        if item["role"] == "assistant":  # rendered once, now, like every reply that settles here
            meta.update(html=str(render.markdown(conversation.item_text(item))), rv=render.VERSION)
    me = wiring.browser()
    me.claim()
    cid = new_id()
    title = conv.pop("title", None)
    # Cut to leave room for the mark: the list keeps conversation.TITLE_CHARS of it (Browser.touch).
    title = (conversation.short_title(title, conversation.TITLE_CHARS - len(IMPORTED)) + IMPORTED
             if title else "Imported conversation")
    store = wiring.store()
    for upload in conv.pop("uploads"):
        store.put_file(cid, upload.sha, upload.data)
    with store.update(cid) as stored:
        stored.update(conv)
        stored["rev"] = stored.get("rev", 0) + 1
    me.touch(cid, title)  # listed only once stored
    return redirect(url_for("chat.conversation_page", cid=cid), code=303)
