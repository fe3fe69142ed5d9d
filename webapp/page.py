"""Assembling a conversation's page: what the chat template shows (`chat`), and what the page's script
is told when a streamed reply ends (`finished`), from the stored conversation, the browser's list
and the models on offer. Plain: no Flask; the message macro that renders one message
(`article`) is given to it, and the view renders the template with what `chat` returns.

Settled replies carry the HTML rendered when they settled (render.stored); messages before a
conversation's last turn never change, so each process keeps their rendered HTML (`earlier`).
"""

import threading
from collections import OrderedDict
from datetime import datetime, timezone

from markupsafe import Markup

from . import attachments, catalogue, conversation, render, usage
from .openrouter import REASONING_EFFORTS as EFFORTS
from .turns.events import DONE


def isotime(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock(epoch):
    # UTC on the server; static/app.js rewrites it in the reader's own time zone.
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M UTC")


def budget_of(conv, offer, model_of, default_max, draft=""):
    """How full the conversation's model context is (for the meter), with `draft` as the next message."""
    settings = conversation.Settings.of(conv)
    model = offer.by_id.get(model_of(conv))
    return usage.budget(catalogue.context_length(model) if model else None,
                        conversation.sent_history(conv), settings.instructions or "", draft or "",
                        settings.max_output_tokens or default_max)


# Messages before a conversation's last turn never change once settled (an edit or a regenerate
# replaces only the last turn): each process keeps their rendered HTML, so a page view renders the
# last turn and the messages added since the last view, whatever the history's length. Per
# conversation: (how many messages, dropped, renderer version, html); the least recently used go.
_EARLIER = OrderedDict()
_EARLIER_LOCK = threading.Lock()
EARLIER_KEPT = 256  # conversations per process


def with_html(shown, metas, prices, cid=None, share=None):
    """The messages `shown` (conversation.messages) of conversation `cid`, each with its HTML, and a
    reply's usage (a message's attachments link to `/c/<cid>/files/<sha>`; in a shared snapshot,
    `share` its token, to `/s/<token>/files/<sha>`, and no usage: what it cost is the owner's)."""
    for m, meta in zip(shown, metas):
        m["cid"], m["share"] = cid, share
        if m["role"] == "assistant":
            m["html"] = render.stored(meta, m["text"])
            m["usage"] = None if share else usage.turn_usage(meta, prices.get(meta.get("model")))
            m["reasoning"] = meta.get("reasoning")
        else:
            m["html"] = render.plain(m["text"])
    return shown


def _branch_mark(conv, upto):
    """What the first `upto` messages' HTML depends on besides their count: which branch is on
    screen (its replies' ids) and each version control's place."""
    ids = tuple(item.get("id") for item in conv["items"][:upto] if item["role"] == "assistant")
    forks = tuple(sorted((int(k), f["current"], len(f["versions"]))
                         for k, f in (conv.get("forks") or {}).items() if int(k) < upto))
    return hash((ids, forks))


def tools_of(m):
    """Every message can be edited (a user's) or regenerated (a reply) into a new version."""
    if not m.get("reply"):
        return None
    return "regenerate" if m["role"] == "assistant" else "edit"


def earlier(cid, conv, upto, dropped, prices, article, edit_url=None):
    """The rendered messages `[0, upto)` of conversation `cid`, from this process's cache, rendering
    only those added since it was made (`article(message, number, dropped, …)` renders one)."""
    key = (render.VERSION, dropped, _branch_mark(conv, upto))
    with _EARLIER_LOCK:
        count, made_with, html = _EARLIER.get(cid, (0, key, ""))
        if cid in _EARLIER:
            _EARLIER.move_to_end(cid)
    if made_with[:2] != key[:2] or count > upto or cid is None or made_with[2] != _branch_mark(conv, count):
        count, html = 0, ""
    if count < upto:
        shown = with_html(conversation.messages(conv, count)[:upto - count], conv["meta"][count:upto], prices,
                          cid)
        html += "".join(str(article(m, count + i + 1, dropped, False, tools_of(m), m["reply"], edit_url))
                        for i, m in enumerate(shown))
        if cid is not None:
            with _EARLIER_LOCK:
                _EARLIER[cid] = (upto, key, html)
                _EARLIER.move_to_end(cid)
                while len(_EARLIER) > EARLIER_KEPT:
                    _EARLIER.popitem(last=False)
    return Markup(html)


def chat(cid, conv, *, entries, offers, config, article, session_mark, draft="", error=None, hint=None,
         notice=None, editing=False, edit_url=None):
    """What chat.html shows for conversation `cid` (None: a new, empty one)."""
    failed = conv.get("failed")
    if failed and not draft:
        draft = failed["text"]
        if failed.get("notice"):  # not a failure: e.g. turns were dropped, the message fits now
            notice = notice or failed["error"]
        elif failed.get("stopped"):
            notice = notice or f"{failed['error']} Your message is back in the box."
        else:
            error = error or failed["error"]
        editing = editing or failed.get("replace", False)
    pending = conv.get("pending")
    # While an edit or a regenerate is answered, the branch it replaces is not shown below it.
    replacing = conversation.replaced_at(conv, pending.get("replace")) if pending else None
    count = len(conv["items"]) if replacing is None else replacing
    first = max(0, count - 2)  # the last turn is rendered for this view: it has the Edit/Regenerate tools
    models_list = offers.models()
    on_offer = offers.offer(models_list)
    prices = on_offer.prices
    dropped = min(conv.get("dropped", 0), count)
    shown = with_html(conversation.messages(conv, first)[:count - first], conv["meta"][first:count], prices, cid)
    # Editing: which reply the edit replaces (True or "1": the last one), and the message it answers.
    edit_reply = conversation.last_reply_id(conv) if editing in (True, "1") else editing or None
    edit_at = None if pending else conversation.replaced_at(conv, edit_reply)
    editing = edit_at is not None
    if editing and not draft:
        draft = conversation.item_text(conv["items"][edit_at])
    chosen = offers.model_of(conv)
    model = on_offer.by_id.get(chosen)
    entry = next((e for e in entries if e["id"] == cid), None)
    # Attachments of a message that comes back to the box (a failed turn's, an edited one's).
    keep_files = (failed or {}).get("files") or (attachments.refs(conv["items"][edit_at]) if editing else [])
    return dict(
        keep_files=keep_files, accept_files=attachments.ACCEPT_ATTRIBUTE, shared=conv.get("share"),
        cid=cid, entries=entries, earlier=earlier(cid, conv, first, dropped, prices, article, edit_url),
        first=first, messages=shown, pending=pending, edit_reply=edit_reply if editing else None,
        pending_html=render.plain(pending["text"] or "") if pending else None,  # formulas as in the log
        draft=draft, error=error, hint=hint, notice=notice,
        failed=bool(failed) and not failed.get("stopped") and not failed.get("notice"),
        context_full=bool(failed and failed.get("context")),
        editing=editing, last_reply=conversation.last_reply_id(conv),
        title=(entry or {}).get("title") or conversation.title(conv),
        dropped=dropped, totals=usage.totals(conv, prices),
        model_options=on_offer.options_html(chosen), chosen=chosen, model=model,
        settings=conversation.Settings.of(conv),
        # While the list is down, the conversation's own model stays pickable (it was offered).
        own_model=chosen if models_list is None and chosen not in on_offer.ids else None,
        supports=lambda param: bool(model) and catalogue.supports(model, param),
        models_unavailable=models_list is None, efforts=EFFORTS,
        budget=budget_of(conv, on_offer, offers.model_of, config["MAX_OUTPUT_TOKENS"], draft),
        missing_key=not config["OPENROUTER_API_KEY"], session_mark=session_mark)


def last_turn(cid, conv, prices, article, edit_url):
    """The last turn's two messages (the user's and the reply) as the page renders them, with the
    tools every message has (Edit, Regenerate) and its versions."""
    count = len(conv["items"])
    first = max(0, count - 2)
    shown = with_html(conversation.messages(conv, first), conv["meta"][first:], prices, cid)
    dropped = min(conv.get("dropped", 0), count)
    return "".join(str(article(m, first + i + 1, dropped, i == len(shown) - 1, tools_of(m), m["reply"],
                               edit_url)) for i, m in enumerate(shown))


def finished(outcome_kind, data, conv, offers, config, article=None, edit_url=None, cid=None):
    """What the browser needs when a reply ends: the last turn as the page renders it (`articles`,
    when `article` renders a message; the reply's sanitised HTML alone in `html`), who wrote it when,
    what it used, the reply an edit or regenerate would now replace, the history size to check, the
    conversation's title and total, and how full its context is."""
    payload = dict(data or {})
    offer = offers.offer(offers.models())
    prices = offer.prices
    if outcome_kind == DONE:
        stored_a_reply = not payload.get("stopped") or payload.get("kept")
        last = conv["items"][-1] if conv["items"] else None
        reply = stored_a_reply and last is not None and last["role"] == "assistant"
        text = payload.get("text", "")
        meta = conv["meta"][-1] if reply else {}
        if reply and conversation.item_text(last) == text:
            payload["html"] = str(render.stored(meta, text))  # rendered when it settled
        else:
            payload["html"] = str(render.markdown(text))
        if reply:
            payload.update(model=meta.get("model"), at=meta.get("at"),
                           usage=usage.turn_usage(meta, prices.get(meta.get("model")))["text"],
                           reasoning=meta.get("reasoning"))
            if article is not None:
                payload["articles"] = last_turn(cid, conv, prices, article, edit_url)
    payload["title"] = conversation.title(conv)  # for a new conversation's tab (a rename is the list's)
    payload["count"] = len(conv["items"])
    payload["last_reply"] = conversation.last_reply_id(conv)
    payload["total"] = usage.totals(conv, prices)["text"]
    budget = budget_of(conv, offer, offers.model_of, config["MAX_OUTPUT_TOKENS"])
    payload["budget"] = {"used": budget["used"], "limit": budget["limit"], "text": budget["text"]}
    return payload
