"""A browser's conversations as a list: start a new one, rename, delete, and drop the oldest turns
of one that outgrew its model's context. Every route checks the conversation is this browser's."""

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from .. import catalogue, conversation, sending, turns
from . import wiring

bp = Blueprint("conversations", __name__)
TITLE_LIMIT = 200


@bp.post("/new")
def new_chat():
    """New chat: the open conversation stays in the list; an empty one opens (stored at its first send),
    on the model the page's picker showed (the button submits the page's form), when it is offered."""
    model, offers = request.form.get("model", ""), wiring.offers()
    if model and model != current_app.config["OPENROUTER_MODEL"] and model in offers.offered(offers.models()):
        return redirect(url_for("chat.blank", model=model), code=303)
    return redirect(url_for("chat.blank"), code=303)


@bp.route("/c/<cid>/rename", methods=["GET", "POST"])
def rename(cid):
    me = wiring.browser()
    entry = me.owned(cid)
    if request.method == "GET":
        return render_template("rename.html", cid=cid, title=entry["title"])
    title = conversation.clean_title(request.form.get("title", ""))
    if not title or len(title) > TITLE_LIMIT:
        return render_template("rename.html", cid=cid, title=title, status=400,
                               error=f"A title needs 1 to {TITLE_LIMIT} characters."), 400
    me.rename(cid, title)
    return redirect(url_for("chat.conversation_page", cid=cid), code=303)


@bp.route("/c/<cid>/delete", methods=["GET", "POST"])
def delete(cid):
    me = wiring.browser()
    entry = me.owned(cid)
    if request.method == "GET":  # a confirmation page, script or not
        return render_template("delete.html", cid=cid, title=entry["title"])
    store = wiring.store()
    pending = store.load_pending(cid)
    if pending:
        turns.stop(store, cid, pending["turn"])  # a reply being written goes with it
    me.forget(cid)
    store.delete(cid)
    return redirect(url_for("chat.index"), code=303)


@bp.post("/c/<cid>/drop")
def drop_oldest(cid):
    """Stop sending the oldest turns, just enough of them for the next message to fit; they stay
    on the page above a divider. The message waiting in the box is kept."""
    wiring.browser().owned(cid)
    store, offers = wiring.store(), wiring.offers()
    message = request.form.get("message", "")
    if store.load_pending(cid):
        return wiring.render_chat(cid, wiring.current(cid), draft=message, status=409,
                                  error="A reply is still being written: drop turns once it has finished.")
    model = offers.offer(offers.models()).by_id.get(offers.model_of(store.load(cid)))
    if sending.drop_oldest(store, cid, catalogue.context_length(model), message) is None:
        return wiring.render_chat(cid, wiring.current(cid), draft=message, status=400,
                                  error="Even without earlier turns this message does not fit the "
                                        "model's context: shorten it, or pick a model with a larger "
                                        "context.")
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor="dropped"), code=303)


def title_of(entry, conv):
    """A conversation's title, from this browser's list `entry` (or from its first message)."""
    return entry["title"] or conversation.title(conv) or "Conversation"
