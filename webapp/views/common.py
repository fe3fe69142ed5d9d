"""What the chat's routes share: whose conversations these are, reading a send from the form, and
rendering the chat page. Plain helpers over `flask.session` and the store; no routes here.

A browser's conversations are listed under its own key in the store (`browser:<id>`, see
`Store.conversations`): the session holds only that id, so a turn in one conversation reads the
list and its own conversation, never the others, and two tabs cannot overwrite each other's list.
"""

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

from flask import abort, current_app, get_template_attribute, render_template, request, session
from markupsafe import Markup, escape
from werkzeug.exceptions import RequestEntityTooLarge

from .. import catalogue as models, conversation, render, sessions, turns, usage
from ..openrouter import REASONING_EFFORTS as EFFORTS, UpstreamError

QUEUE_WAIT = 30.0  # seconds a send waits for the reply before it in the same conversation
BUSY = ("A reply is still being written in this conversation. Your message is kept: send it again "
        "when the reply has finished.")
QUEUE_FULL = ("Another message is already waiting for the reply being written in this conversation. "
              "Yours is kept: send it when the reply has finished.")
FULL = "The server is answering as many messages as it can right now. Yours is kept: try again shortly."
TOO_MANY = ("You already have as many replies being written as one browser may. Yours is kept: send "
            "it when one has finished.")
STALE = ("The conversation changed since you pressed Edit or Regenerate (another tab or window sent "
         "a message), so nothing was replaced. Your text is kept in the box: send it as a new "
         "message, or press Edit again.")


def store():
    return current_app.extensions["chat_store"]


def client():
    return current_app.extensions["openrouter"]


def queue_limit():
    """How long a streamed send may wait for the reply before it: as long as that reply may go
    silent (a reasoning model thinks for minutes), and a little more."""
    return max(QUEUE_WAIT, current_app.config["OPENROUTER_READ_TIMEOUT"] + 30)


# --- whose conversations ------------------------------------------------------------------------------

def browser(create=False):
    """This browser's id in the store. Made at its first send, when the session id is issued anew:
    an id planted in the browser beforehand (fixation, cookie tossing) never holds its messages."""
    bid = session.get("browser")
    if bid is None and session.get("cid"):
        # A session from before several conversations per browser: its one conversation is listed.
        bid = session["browser"] = secrets.token_urlsafe(18)
        cid = session.pop("cid")
        title = conversation.title(store().load(cid))
        with store().update_conversations(bid) as entries:
            entries.append({"id": cid, "title": title, "at": time.time()})
    if bid is None and create:
        bid = session["browser"] = secrets.token_urlsafe(18)
        session["day"] = sessions.today()  # as keep_session_alive would on the next page
        sessions.rotate(current_app, session)
    return bid


def listed():
    """This browser's conversations, newest activity first."""
    bid = browser()
    return store().conversations(bid) if bid else []


def owned(cid, entries=None):
    """The list entry of conversation `cid` if this browser owns it; 404 otherwise (another browser's
    conversation and an unknown id look the same, and nothing about either is revealed)."""
    for entry in listed() if entries is None else entries:
        if entry["id"] == cid:
            return entry
    abort(404)


def new_id():
    return secrets.token_urlsafe(18)


def touch(cid, title=None):
    """Move `cid` to the top of this browser's list (it is being written in), adding it if new."""
    bid = browser(create=True)
    with store().update_conversations(bid) as entries:
        entry = next((e for e in entries if e["id"] == cid), None)
        if entries and entries[0] is entry:
            return  # already first: the list does not change (and is not rewritten)
        if entry is None:
            entry = {"id": cid, "title": conversation.short_title(title), "at": 0}
        else:
            entries.remove(entry)
        entry["at"] = time.time()
        entries.insert(0, entry)


def owner():
    """A short hash of the session id: enough to count a session's turns and to follow it in the
    logs, useless for taking the session over."""
    return hashlib.sha256(session.sid.encode()).hexdigest()[:12]


def current(cid):
    """The conversation to show; a dead pending turn is settled first so the page never hangs."""
    return turns.current(store(), cid) if cid else conversation.new()


# --- the models on offer --------------------------------------------------------------------------------

def model_list():
    """The catalogue (cached a few minutes), or None when OpenRouter's /models cannot be reached."""
    return current_app.extensions["catalogue"].get()


class Offer:
    """What pages and sends need from one fetch of the catalogue, worked out once per fetch (the
    real catalogue has hundreds of models; per request this was most of a page's time): the
    picker's groups, the ids on offer, prices by model, and the picker's rendered options."""

    def __init__(self, models_list, allowed, default):
        self.source, self.allowed, self.default = models_list, allowed, default
        self.groups = models.options(models_list or [], allowed, default)
        self.ids = frozenset(m["id"] for g in self.groups for m in g["models"])
        self.prices = {m["id"]: models.pricing(m) for m in models_list or []}
        self.by_id = {m["id"]: m for m in models_list or [] if isinstance(m, dict)}
        # For static/app.js (/models.json): each model's context length and the page's options it takes.
        self.page_models = {m["id"]: {"context": m["context_length"], "params": m["page_params"]}
                            for g in self.groups for m in g["models"]}
        self._html = None

    def options_html(self, chosen):
        """The picker's <optgroup>s with `chosen` selected (rendered once, then only marked)."""
        if self._html is None:
            self._html = render_template("_models.html", groups=self.groups)
        option = f'<option value="{escape(chosen)}"'
        return Markup(self._html.replace(option, option + " selected", 1))


def offer(models_list):
    """The `Offer` for this catalogue list (the same list object until the next fetch)."""
    allowed, default = current_app.config["ALLOWED_MODELS"], current_app.config["OPENROUTER_MODEL"]
    cached = current_app.extensions.get("offer")
    if (cached is None or cached.source is not models_list
            or (cached.allowed, cached.default) != (allowed, default)):
        cached = current_app.extensions["offer"] = Offer(models_list, allowed, default)
    return cached


def offered(models_list, conv=None):
    """The ids of the models on offer: the catalogue narrowed by ALLOWED_MODELS, the default always
    in it, and, while the list is unavailable, the conversation's own model (it was offered when
    chosen)."""
    ids = offer(models_list).ids
    return ids | {model_of(conv)} if models_list is None else ids


def model_of(conv):
    return ((conv or {}).get("settings") or {}).get("model") or current_app.config["OPENROUTER_MODEL"]


# --- reading a send ---------------------------------------------------------------------------------------

class BadInput(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def read_message(conv):
    """The message from the form, checked: returns (text, replace). `replace` is the id of the reply
    an edit or a regenerate takes the place of (the form names it, so a stale page cannot replace a
    turn it never showed); `text` is None for a regenerate (the last message is sent again).
    `conv()` gives the conversation, read only for an edit or a regenerate."""
    text = request.form.get("message", "")
    regenerate = request.form.get("regenerate", "")
    replace = regenerate or request.form.get("edit", "")
    if replace:
        last = conversation.last_reply_id(conv())
        if regenerate and not last:
            raise BadInput(400, "There is no reply to regenerate yet.")
        if replace != last:
            raise BadInput(409, STALE)
    if regenerate:
        text = None
    elif not text.strip():
        raise BadInput(400, "Type a message first: an empty message is not sent.")
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if text and len(text) > limit:
        raise RequestEntityTooLarge(f"The message is {len(text):,} characters long; the limit is "
                                    f"{limit:,}. Nothing was sent or stored.")
    if not current_app.config["OPENROUTER_API_KEY"]:
        raise BadInput(503, UpstreamError("no_key").message)
    return text, replace or None


def read_settings(models_list, conv=lambda: None):
    """The settings the form sets, checked: only the fields it carries (the conversation keeps the
    others; `turns.begin` merges them under its lock). A model that is not offered is refused:
    nothing is sent. `conv()` gives the conversation, needed only while the model list is down."""
    form = request.form
    settings = {}
    if "model" in form:
        wanted = form["model"].strip()
        if wanted not in offered(models_list, conv() if models_list is None else None):
            raise BadInput(400, "That model is not offered here. Pick one from the list; nothing "
                                "was sent.")
        settings["model"] = wanted
    if "instructions" in form:
        instructions = form["instructions"].strip()
        if len(instructions) > current_app.config["MAX_MESSAGE_CHARS"]:
            raise BadInput(400, "The system prompt is too long; nothing was sent.")
        settings["instructions"] = instructions
    if "max_output_tokens" in form:
        settings["max_output_tokens"] = _number(form["max_output_tokens"], int, 1, 1_000_000,
                                                "The output limit must be a whole number of tokens.")
    if "temperature" in form:
        settings["temperature"] = _number(form["temperature"], float, 0.0, 2.0,
                                          "The temperature must be a number from 0 to 2.")
    if "effort" in form:
        effort = form["effort"].strip()
        if effort and effort not in EFFORTS:
            raise BadInput(400, "Unknown reasoning effort.")
        settings["effort"] = effort or None
    return settings


def _number(raw, kind, low, high, problem):
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise BadInput(400, problem) from None
    if not low <= value <= high:
        raise BadInput(400, problem)
    return value


def planner(models_list):
    """`plan(conv, history, text)` for `turns.begin`: the request options for this turn (model,
    instructions and the options the model supports, each only when set), with `max_output_tokens`
    capped to what the model's context leaves; None when the turn would not fit at all."""
    default_max = current_app.config["MAX_OUTPUT_TOKENS"]
    by_id = offer(models_list).by_id

    def plan(conv, history, text):
        settings = conv.get("settings") or {}
        model_id = model_of(conv)
        model = by_id.get(model_id)
        instructions = settings.get("instructions") or ""
        wanted = settings.get("max_output_tokens") or default_max
        budget = usage.budget(models.context_length(model) if model else None, history, instructions,
                              text, wanted)
        if not budget["fits"]:
            return None
        return models.supported_options(model, {
            "model": model_id, "max_output_tokens": budget["max_output"],
            "instructions": instructions or None, "temperature": settings.get("temperature"),
            "reasoning_effort": settings.get("effort") or None})

    return plan


def latest():
    """This browser's most recent conversation, or None."""
    entries = listed()
    return entries[0]["id"] if entries else None


def target(cid):
    """The conversation a send to `/c/<cid>` goes to: this browser's own (else 404), or None for
    `new`; without a `cid` (`POST /`, `/turns`), the most recent one."""
    if cid is None:
        return latest()
    if cid == "new":
        return None
    owned(cid)
    return cid


class Deleted(turns.Stale):
    """The conversation was deleted while a send waited for it."""


class Cancelled(turns.Stale):
    """The person stopped a send while it waited for the reply before it."""


class Send:
    """One send, read from the form and begun: what the JS-off and the streamed routes share.

    `Send(cid)` reads and checks the message and settings (raises BadInput); `begin(wait)` gives the
    browser its id (a new session id: the turn is counted and logged under it), checks capacity,
    lists the conversation and marks the turn pending (raises what `turns.begin` raises, or
    `turns.Full`). A refused send gives up the waiting place it may hold with `release()`."""

    def __init__(self, cid):
        self.cid = cid
        self.models = model_list()
        # The conversation itself is read here only for an edit or regenerate (or while the model
        # list is down): `turns.begin` reads it anyway, under its lock.
        self._conv = None
        self.text, self.replace = read_message(self.conversation)
        self.settings = read_settings(self.models, self.conversation)
        self.plan = planner(self.models)
        self.waiter = new_id()
        self.options = None

    def conversation(self):
        if self._conv is None:
            self._conv = current(self.cid)
        return self._conv

    def begin(self, wait):
        if self.cid:
            turns.refuse_if_queue_full(store(), self.cid, self.waiter)
        browser(create=True)
        self.session_mark = sessions.fingerprint(session, current_app.config["SECRET_KEY"])
        self.options = turn_options()  # reserves this send's place among the running turns
        self.cid = self.cid or new_id()
        try:
            touch(self.cid, self.text)
            return self._try(wait, first=True)
        except turns.Busy as busy:
            if wait or isinstance(busy, turns.QueueFull):
                self.options["slot"].release()  # refused; only a send left queued keeps its place
            raise
        except BaseException:
            self.options["slot"].release()
            raise

    def again(self, wait=0):
        """Try again after `turns.Busy` (the conversation's reply before this one still runs)."""
        try:
            return self._try(wait)
        except turns.Busy as busy:
            if isinstance(busy, turns.QueueFull):
                self.options["slot"].release()
            raise
        except BaseException:
            self.options["slot"].release()
            raise

    def _try(self, wait, first=False):
        if not first and turns.waiter_cancelled(store(), self.waiter):
            raise Cancelled()  # stopped while it waited (its waiter id is not given out before)
        if not any(e["id"] == self.cid for e in listed()):
            raise Deleted()  # deleted meanwhile (another tab): never bring it back unlisted
        return turns.begin(store(), self.cid, self.text, wait, self.replace, self.waiter,
                           self.settings, self.plan)

    def release(self):
        """Give the send up: its waiting place behind another reply, and its reserved place."""
        self.options["slot"].release()
        turns.release(store(), self.cid, self.waiter)


def turn_options():
    """The options every turn of this request runs with, its place among the turns this process
    runs reserved among them (refuses with `turns.Full`)."""
    config = current_app.config
    slot = turns.reserve(config["MAX_RUNNING_TURNS"], owner(), config["MAX_TURNS_PER_SESSION"])
    return {"owner": owner(), "limit": config["OPENROUTER_TURN_TIMEOUT"], "slot": slot}


def refusal_for(exc):
    """(status, message) for a turn that cannot start now."""
    if isinstance(exc, Cancelled):
        return 409, "Not sent: your message is back in the box."
    if isinstance(exc, Deleted):
        return 404, "This conversation was deleted, so your message was not sent. It is back in the box."
    if isinstance(exc, turns.Full):
        return (429, TOO_MANY) if exc.too_many_for_session else (503, FULL)
    if isinstance(exc, turns.Stale):
        return 409, STALE
    return 409, (QUEUE_FULL if isinstance(exc, turns.QueueFull) else BUSY)


# --- the page -----------------------------------------------------------------------------------------------

def isotime(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock(epoch):
    # UTC on the server; static/app.js rewrites it in the reader's own time zone.
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M UTC")


def prices_by_model(models_list):
    return offer(models_list).prices


def budget_of(conv, models_list, draft=""):
    """How full the conversation's model context is (for the meter), with `draft` as the next message."""
    settings = conv.get("settings") or {}
    model = offer(models_list).by_id.get(model_of(conv))
    return usage.budget(models.context_length(model) if model else None,
                        conversation.sent_history(conv), settings.get("instructions") or "", draft or "",
                        settings.get("max_output_tokens") or current_app.config["MAX_OUTPUT_TOKENS"])


# Messages before a conversation's last turn never change once settled (an edit or a regenerate
# replaces only the last turn): each process keeps their rendered HTML, so a page view renders the
# last turn and the messages added since the last view, whatever the history's length. Per
# conversation: (how many messages, dropped, renderer version, html); the least recently used go.
_EARLIER = OrderedDict()
_EARLIER_LOCK = threading.Lock()
EARLIER_KEPT = 256  # conversations per process


def _with_html(shown, metas, prices):
    for m, meta in zip(shown, metas):
        if m["role"] == "assistant":
            m["html"] = render.stored(meta, m["text"])
            m["usage"] = usage.turn_usage(meta, prices.get(meta.get("model")))
            m["reasoning"] = meta.get("reasoning")
        else:
            m["html"] = render.plain(m["text"])
    return shown


def earlier_html(cid, conv, upto, dropped, prices):
    """The rendered messages `[0, upto)` of conversation `cid`, from this process's cache, rendering
    only those added since it was made."""
    key = (render.VERSION, dropped)
    with _EARLIER_LOCK:
        count, made_with, html = _EARLIER.get(cid, (0, key, ""))
        if cid in _EARLIER:
            _EARLIER.move_to_end(cid)
    if made_with != key or count > upto or cid is None:
        count, html = 0, ""
    if count < upto:
        article = get_template_attribute("_message.html", "article")
        shown = _with_html(conversation.messages(conv, count)[:upto - count], conv["meta"][count:upto], prices)
        html += "".join(str(article(m, count + i + 1, dropped)) for i, m in enumerate(shown))
        if cid is not None:
            with _EARLIER_LOCK:
                _EARLIER[cid] = (upto, key, html)
                _EARLIER.move_to_end(cid)
                while len(_EARLIER) > EARLIER_KEPT:
                    _EARLIER.popitem(last=False)
    return Markup(html)


def render_chat(cid, conv, *, draft="", error=None, hint=None, notice=None, status=200,
                editing=False, entries=None):
    """The chat page for conversation `cid` (None: a new, empty one)."""
    entries = listed() if entries is None else entries
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
    count = len(conv["items"])
    first = max(0, count - 2)  # the last turn is rendered for this view: it has the Edit/Regenerate tools
    models_list = model_list()
    prices = prices_by_model(models_list)
    dropped = min(conv.get("dropped", 0), count)
    earlier = earlier_html(cid, conv, first, dropped, prices)
    shown = _with_html(conversation.messages(conv, first), conv["meta"][first:], prices)
    editing = editing and count >= 2 and not conv.get("pending")
    if editing and not draft:
        draft = shown[-2]["text"]
    chosen = model_of(conv)
    on_offer = offer(models_list)
    model = on_offer.by_id.get(chosen)
    settings = conv.get("settings") or {}
    budget = budget_of(conv, models_list, draft)
    entry = next((e for e in entries if e["id"] == cid), None)
    title = (entry or {}).get("title") or conversation.title(conv)
    return render_template(
        "chat.html", cid=cid, entries=entries, earlier=earlier, first=first, messages=shown,
        pending=conv.get("pending"),
        draft=draft, error=error, hint=hint, notice=notice,
        failed=bool(failed) and not failed.get("stopped") and not failed.get("notice"),
        context_full=bool(failed and failed.get("context")),
        editing=editing, last_reply=conversation.last_reply_id(conv), title=title,
        dropped=dropped, totals=usage.totals(conv, prices),
        model_options=on_offer.options_html(chosen), chosen=chosen, model=model, settings=settings,
        # While the list is down, the conversation's own model stays pickable (it was offered).
        own_model=chosen if models_list is None and chosen not in on_offer.ids else None,
        supports=lambda param: bool(model) and models.supports(model, param),
        models_unavailable=models_list is None, budget=budget, efforts=EFFORTS,
        missing_key=not current_app.config["OPENROUTER_API_KEY"],
        session_mark=sessions.fingerprint(session, current_app.config["SECRET_KEY"]),
    ), status
