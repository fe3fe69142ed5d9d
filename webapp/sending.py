"""The send use case: read a message and its settings from a form (any mapping), check them, and begin
a turn: what the JS-off and the streamed routes share; and making room for a message that does not
fit the model's context (`drop_oldest`). Plain: no Flask; a `Send` is given the
browser, the store, the models on offer and the settings it needs.

    send = Send(form, cid, browser=…, store=…, offers=…, config=…, session_mark=…)  # BadInput
    begun = send.begin(wait)      # what turns.begin raises, or turns.Full
    turns.start(…, **send.options) / turns.run(…)
"""

from werkzeug.exceptions import RequestEntityTooLarge

from . import attachments, catalogue, conversation, turns, usage
from .openrouter import REASONING_EFFORTS as EFFORTS, UpstreamError
from .ownership import new_id

QUEUE_WAIT = 30.0  # seconds a send waits for the reply before it in the same conversation
BUSY = ("A reply is still being written in this conversation. Your message is kept: send it again "
        "when the reply has finished.")
QUEUE_FULL = ("Another message is already waiting for the reply being written in this conversation. "
              "Yours is kept: send it when the reply has finished.")
FULL = "The server is answering as many messages as it can right now. Yours is kept: try again shortly."
TOO_MANY = ("You already have as many replies being written as one browser may. Yours is kept: send "
            "it when one has finished.")
SIGN_IN_FIRST = ("Sign in with OpenRouter first (at the top of the page): this chat answers on each "
                 "person's own OpenRouter account. Nothing was sent; your message is kept.")
STALE = ("The conversation changed since you pressed Edit or Regenerate (another tab or window sent "
         "a message), so nothing was replaced. Your text is kept in the box: send it as a new "
         "message, or press Edit again.")


class BadInput(Exception):
    """A send refused before anything was stored or sent. `hint`: about what was typed in the form
    (shown beside the box) rather than about the send as a whole (shown as the page's error)."""

    def __init__(self, status, message, hint=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.hint = status == 400 if hint is None else hint


def queue_limit(config):
    """How long a streamed send may wait for the reply before it: as long as that reply may go
    silent (a reasoning model thinks for minutes), and a little more."""
    return max(QUEUE_WAIT, config["OPENROUTER_READ_TIMEOUT"] + 30)


def read_message(form, conv, config, has_files=False, api_key=None):
    """The message from the form, checked: returns (text, replace). `replace` is the id of the reply
    an edit or a regenerate takes the place of, anywhere in the branch on screen (the form names it,
    so a stale page cannot replace a turn it never showed); `text` is None for a regenerate (the
    message it answers is sent again).
    `conv()` gives the conversation, read only for an edit or a regenerate. With files attached, the
    text may be empty. `api_key`: this person's own key (signed in with OpenRouter), if any; without
    it and without the operator's, the send is refused (asked to sign in, when sign-in is on)."""
    text = form.get("message", "")
    regenerate = form.get("regenerate", "")
    replace = regenerate or form.get("edit", "")
    if replace:
        found = conv()
        if regenerate and not conversation.last_reply_id(found):
            raise BadInput(400, "There is no reply to regenerate yet.")
        if conversation.reply_index(found, replace) is None:
            raise BadInput(409, STALE)  # not in the branch on screen (another tab changed it)
    if regenerate:
        text = None
    elif not text.strip() and not has_files:
        raise BadInput(400, "Type a message first: an empty message is not sent.")
    limit = config["MAX_MESSAGE_CHARS"]
    if text and len(text) > limit:
        raise RequestEntityTooLarge(f"The message is {len(text):,} characters long; the limit is "
                                    f"{limit:,}. Nothing was sent or stored.")
    if not (config["OPENROUTER_API_KEY"] or api_key):
        if config.get("SIGN_IN_WITH_OPENROUTER"):
            raise BadInput(401, SIGN_IN_FIRST, hint=False)
        raise BadInput(503, UpstreamError("no_key").message)
    return text, replace or None


def read_settings(form, offers, models_list, config, conv=lambda: None):
    """The settings the form sets, checked: only the fields it carries (the conversation keeps the
    others; `turns.begin` merges them under its lock). A model that is not offered is refused:
    nothing is sent. `conv()` gives the conversation, needed only while the model list is down."""
    settings = {}
    if "model" in form:
        wanted = form["model"].strip()
        if wanted not in offers.offered(models_list, conv() if models_list is None else None):
            raise BadInput(400, "That model is not offered here. Pick one from the list; nothing "
                                "was sent.")
        settings["model"] = wanted
    if "instructions" in form:
        instructions = form["instructions"].strip()
        if len(instructions) > config["MAX_MESSAGE_CHARS"]:
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


def planner(offer, model_of, default_max, web_search=None, api_key=None):
    """`plan(conv, history, item)` for `turns.begin` (`item`: the new user message, attachments
    and all): the request options for this turn (model, instructions and the options the model
    supports, each only when set), with `max_output_tokens` capped to what the model's context
    leaves; None when the turn would not fit at all. `web_search`: this message searches the web
    (that many results at most), on a model that takes tools. `api_key`: the person's own key
    (signed in with OpenRouter), carried with the turn's request to the client, never stored."""
    by_id = offer.by_id

    def plan(conv, history, item):
        settings = conversation.Settings.of(conv)
        model_id = model_of(conv)
        model = by_id.get(model_id)
        instructions = settings.instructions or ""
        wanted = settings.max_output_tokens or default_max
        budget = usage.budget(catalogue.context_length(model) if model else None, [*history, item],
                              instructions, None, wanted)
        if not budget["fits"]:
            return None
        options = catalogue.supported_options(model, {
            "model": model_id, "max_output_tokens": budget["max_output"],
            "instructions": instructions or None, "temperature": settings.temperature,
            "reasoning_effort": settings.effort or None, "web_search": web_search})
        if api_key:
            options["api_key"] = api_key
        return options

    return plan


class Deleted(turns.Stale):
    """The conversation was deleted while a send waited for it."""


class Cancelled(turns.Stale):
    """The person stopped a send while it waited for the reply before it."""


def no_images(model_name):
    return (f"{model_name} cannot read images, so nothing was sent. Pick a model that reads images "
            "(the list marks them), or send without the images. Your text is kept.")


def read_files(form, files, cid, conv, config):
    """The message's attachments: new uploads (checked, read; `Upload`s) and the ones kept from this
    conversation (a failed turn's, or an edited message's: references by sha). Raises BadInput."""
    try:
        uploads = attachments.read_uploads(files, config["MAX_ATTACHMENT_BYTES"], config["MAX_ATTACHMENTS"])
    except attachments.Refused as refused:
        raise BadInput(refused.status, refused.message) from None
    wanted = form.getlist("keep") if hasattr(form, "getlist") else []
    kept = []
    if wanted and cid:
        found = conv()
        kept = [ref for ref in map(lambda sha: attachments.find(found, sha), dict.fromkeys(wanted)) if ref]
    if len(uploads) + len(kept) > config["MAX_ATTACHMENTS"]:
        raise BadInput(413, f"At most {config['MAX_ATTACHMENTS']} files can go with one message. "
                            "Nothing was sent.")
    return uploads, kept


class Send:
    """One send, read from the form and begun.

    `Send(form, cid, …)` reads and checks the message and settings (raises BadInput); `begin(wait)`
    gives the browser its id (a new session id: the turn is counted and logged under it), reserves
    its place among the turns this process runs, lists the conversation and marks the turn pending
    (raises what `turns.begin` raises, or `turns.Full`). A send that gives up calls `release()`.
    `session_mark()` gives the session's public fingerprint once the browser has its id."""

    def __init__(self, form, cid, *, browser, store, offers, config, session_mark, files=(), api_key=None):
        self.cid, self.browser, self.store, self.config = cid, browser, store, config
        self._session_mark = session_mark
        self.models = offers.models()
        # The conversation itself is read here only for an edit or regenerate (or while the model
        # list is down): `turns.begin` reads it anyway, under its lock.
        self._conv = None
        has_files = any((getattr(f, "filename", "") or "").strip() for f in files) or (
            hasattr(form, "getlist") and bool(form.getlist("keep")))
        # `api_key`: this browser's own key (signed in with OpenRouter): the turn pays with it.
        self.text, self.replace = read_message(form, self.conversation, config, has_files, api_key)
        self.settings = read_settings(form, offers, self.models, config, self.conversation)
        if self.text is not None:  # a regenerate sends the last message's own attachments again
            self.uploads, self.kept = read_files(form, files, cid, self.conversation, config)
            if self.replace and "keep_listed" not in form:
                # An edit keeps the replaced message's attachments unless its form lists them.
                edited = self.conversation()["items"][conversation.replaced_at(self.conversation(), self.replace)]
                self.kept = attachments.refs(edited) + self.kept
        else:
            self.uploads, self.kept = [], []
        self._check_images(offers)
        self.web_search = "web_search" in form and self._check_search(offers)
        self.plan = planner(offers.offer(self.models), offers.model_of, config["MAX_OUTPUT_TOKENS"],
                            config["WEB_SEARCH_MAX_RESULTS"] if self.web_search else None, api_key)
        self.waiter = new_id()
        self.options = self.session_mark = None

    def _check_images(self, offers):
        """A model that cannot read images gets none: refused before anything is stored or sent."""
        model_id = self.settings.get("model")
        new_images = any(f.kind == attachments.IMAGE for f in self.uploads) or any(
            ref["kind"] == attachments.IMAGE for ref in self.kept)
        if not new_images and not (model_id and self.cid):
            return  # (a model chosen now, for a conversation that may already hold images)
        model_id = model_id or offers.model_of(self.conversation())
        model = offers.offer(self.models).by_id.get(model_id)
        if catalogue.reads_images(model):
            return
        if new_images or attachments.has_images(conversation.sent_history(self.conversation(),
                                                                          bool(self.replace))):
            name = catalogue.display_name(model, model_id)
            raise BadInput(400, no_images(name if name == model_id else f"{name} ({model_id})"), hint=False)

    def _check_search(self, offers):
        """Search the web only on a model that takes tools: refused before anything is sent."""
        model_id = self.settings.get("model") or offers.model_of(self.conversation() if self.cid else None)
        model = offers.offer(self.models).by_id.get(model_id)
        if not catalogue.supports(model, "tools"):
            name = catalogue.display_name(model, model_id)
            raise BadInput(400, f"{name if name == model_id else f'{name} ({model_id})'} cannot search "
                                "the web, so nothing was sent. Untick Search the web, or pick a model "
                                "that can. Your text is kept.", hint=False)
        return True

    def files(self):
        """The message's attachments as stored references: the new ones' bytes are stored now
        (once the conversation has its id), and let go of."""
        refs = {ref["sha"]: ref for ref in self.kept}
        for upload in self.uploads:
            ref = upload.ref()
            if ref["sha"] not in refs:
                self.store.put_file(self.cid, ref["sha"], upload.data)
                refs[ref["sha"]] = ref
        self.uploads = []
        self.kept = list(refs.values())
        return self.kept or None

    def conversation(self):
        if self._conv is None:
            self._conv = turns.current(self.store, self.cid) if self.cid else conversation.new()
        return self._conv

    def begin(self, wait):
        if self.cid:
            turns.refuse_if_queue_full(self.store, self.cid, self.waiter)
        self.browser.claim()
        self.session_mark = self._session_mark()
        owner, config = self.browser.owner(), self.config
        # This send's place among the running turns, reserved now (refused with turns.Full).
        slot = turns.reserve(config["MAX_RUNNING_TURNS"], owner, config["MAX_TURNS_PER_SESSION"])
        self.options = {"owner": owner, "limit": config["OPENROUTER_TURN_TIMEOUT"], "slot": slot}
        self.cid = self.cid or new_id()
        try:
            self.files()
            self.browser.touch(self.cid, self.text)
            return self._try(wait, first=True)
        except turns.Busy as busy:
            if wait or isinstance(busy, turns.QueueFull):
                slot.release()  # refused; only a send left queued keeps its place
            raise
        except BaseException:
            slot.release()
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
        if not first:  # it waited for the reply before it: was it stopped or deleted meanwhile?
            if turns.waiter_cancelled(self.store, self.waiter):
                raise Cancelled()  # stopped while it waited (its waiter id is not given out before)
            if not any(e["id"] == self.cid for e in self.browser.listed()):
                raise Deleted()  # deleted meanwhile (another tab): never bring it back unlisted
        return turns.begin(self.store, self.cid, self.text, wait, self.replace, self.waiter,
                           self.settings, self.plan, self.kept or None)

    def release(self):
        """Give the send up: its waiting place behind another reply, and its reserved place."""
        self.options["slot"].release()
        turns.release(self.store, self.cid, self.waiter)


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


def drop_oldest(store, cid, context_length, message):
    """Make room for `message` in conversation `cid`: stop sending just enough of the oldest turns for
    it to fit a context of `context_length` tokens (they stay on the page above a divider). Returns
    how many more messages stopped being sent (0 when none needed to), or None when even without
    earlier turns the message does not fit. The message is kept for sending, now with a neutral
    notice: the red "longer than the context" banner and its Drop button would invite dropping more
    than needed."""
    with store.update(cid) as conv:
        before = conv.get("dropped", 0)
        dropped = usage.oldest_to_drop(conv["items"], before, context_length,
                                       conversation.Settings.of(conv).instructions or "", message)
        if dropped == before and (conv.get("failed") or {}).get("context"):
            # Upstream refused it as too long although the estimate says it fits: drop a turn more.
            dropped = min(dropped + 2, max(0, len(conv["items"]) - 2))
        if dropped is None or dropped == before:
            return None if dropped is None else 0
        conv["dropped"] = min(dropped, len(conv["items"]))
        conv["rev"] = conv.get("rev", 0) + 1
        failed = conv.get("failed") or {}
        newly = conv["dropped"] - before
        conv["failed"] = {"text": message or failed.get("text", ""), "error": dropped_notice(newly),
                          "replace": failed.get("replace", False), "stopped": False, "notice": True}
        return newly


def dropped_notice(messages):
    """What a drop did, in words: how many turns (and messages) stopped being sent."""
    turns_ = (messages + 1) // 2
    what = ("The oldest turn" if turns_ == 1 else f"The {turns_} oldest turns") + f" ({messages} messages)"
    return (f"{what} {'is' if turns_ == 1 else 'are'} no longer sent to the model; "
            f"{'it stays' if turns_ == 1 else 'they stay'} above the divider. "
            "Your message fits now: send it.")
