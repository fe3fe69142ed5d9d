"""A browser's conversations as a list: start a new one, rename, delete, and drop the oldest turns
of one that outgrew its model's context. Every route checks the conversation is this browser's."""

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from .. import conversation, turns, usage
from .. import catalogue as models
from . import common

bp = Blueprint("conversations", __name__)
TITLE_LIMIT = 200


@bp.post("/new")
def new_chat():
    """New chat: the open conversation stays in the list; an empty one opens (stored at its first send),
    on the model the page's picker showed (the button submits the page's form), when it is offered."""
    model = request.form.get("model", "")
    if model and model != current_app.config["OPENROUTER_MODEL"] and model in common.offered(common.model_list()):
        return redirect(url_for("chat.blank", model=model), code=303)
    return redirect(url_for("chat.blank"), code=303)


@bp.route("/c/<cid>/rename", methods=["GET", "POST"])
def rename(cid):
    entry = common.owned(cid)
    if request.method == "GET":
        return render_template("rename.html", cid=cid, title=entry["title"])
    title = conversation.clean_title(request.form.get("title", ""))
    if not title or len(title) > TITLE_LIMIT:
        return render_template("rename.html", cid=cid, title=title, status=400,
                               error=f"A title needs 1 to {TITLE_LIMIT} characters."), 400
    with common.store().update_conversations(common.browser()) as entries:
        for e in entries:
            if e["id"] == cid:
                e["title"] = title
    return redirect(url_for("chat.conversation_page", cid=cid), code=303)


@bp.route("/c/<cid>/delete", methods=["GET", "POST"])
def delete(cid):
    entry = common.owned(cid)
    if request.method == "GET":  # a confirmation page, script or not
        return render_template("delete.html", cid=cid, title=entry["title"])
    store = common.store()
    pending = store.load_pending(cid)
    if pending:
        turns.stop(store, cid, pending["turn"])  # a reply being written goes with it
    with store.update_conversations(common.browser()) as entries:
        entries[:] = [e for e in entries if e["id"] != cid]
    store.delete(cid)
    return redirect(url_for("chat.index"), code=303)


@bp.post("/c/<cid>/drop")
def drop_oldest(cid):
    """Stop sending the oldest turns, just enough of them for the next message to fit; they stay
    on the page above a divider. The message waiting in the box is kept."""
    common.owned(cid)
    store = common.store()
    models_list = common.model_list()
    message = request.form.get("message", "")
    if store.load_pending(cid):
        return common.render_chat(cid, common.current(cid), draft=message, status=409,
                                  error="A reply is still being written: drop turns once it has finished.")
    with store.update(cid) as conv:
        model = models.find(models_list or [], common.model_of(conv))
        settings = conv.get("settings") or {}
        dropped = usage.oldest_to_drop(conv["items"], conv.get("dropped", 0),
                                       models.context_length(model) if model else None,
                                       settings.get("instructions") or "", message)
        if dropped == conv.get("dropped", 0) and (conv.get("failed") or {}).get("context"):
            # Upstream refused it as too long although the estimate says it fits: drop a turn more.
            dropped = min(dropped + 2, max(0, len(conv["items"]) - 2))
        if dropped is not None and dropped != conv.get("dropped", 0):
            newly = min(dropped, len(conv["items"])) - conv.get("dropped", 0)
            conv["dropped"] = min(dropped, len(conv["items"]))
            conv["rev"] = conv.get("rev", 0) + 1
            failed = conv.get("failed") or {}
            # The message is kept for sending, now as a neutral notice: the red "longer than the
            # context" banner and its Drop button would invite dropping more than needed.
            conv["failed"] = {"text": message or failed.get("text", ""), "error": dropped_notice(newly),
                              "replace": failed.get("replace", False), "stopped": False, "notice": True}
    if dropped is None:
        return common.render_chat(cid, common.current(cid), draft=message, status=400,
                                  error="Even without earlier turns this message does not fit the "
                                        "model's context: shorten it, or pick a model with a larger "
                                        "context.")
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor="dropped"), code=303)


def dropped_notice(messages):
    """What a drop did, in words: how many turns (and messages) stopped being sent."""
    turns_ = (messages + 1) // 2
    what = ("The oldest turn" if turns_ == 1 else f"The {turns_} oldest turns") + f" ({messages} messages)"
    return (f"{what} {'is' if turns_ == 1 else 'are'} no longer sent to the model; "
            f"{'it stays' if turns_ == 1 else 'they stay'} above the divider. Your message fits now: send it.")


def title_of(cid, conv):
    entry = common.owned(cid)
    return entry["title"] or conversation.title(conv) or "Conversation"
