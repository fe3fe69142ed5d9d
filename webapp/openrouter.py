"""The OpenRouter Responses API client: the only module that speaks HTTP upstream.

It builds the request, reads a reply (whole or streamed) and turns every failure into one
`UpstreamError(kind, status, detail, retry_after)` whose message a user can read. It never logs the
API key, and `UpstreamError` itself scrubs every registered key from the upstream's words and cuts
them short, so no path can pass on a key or a page-long message.
"""

import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)

# What a user is told for each kind of failure. `{detail}` is OpenRouter's own message when it sent one.
MESSAGES = {
    "no_key": "No OpenRouter API key is configured. The operator must set OPENROUTER_API_KEY "
    "(in the environment or a .env file) and restart the app.",
    "bad_request": "OpenRouter rejected the request (400): {detail}",
    "auth": "OpenRouter did not accept the API key (401). The operator must check OPENROUTER_API_KEY.",
    "credits": "The OpenRouter account is out of credits (402). Add credits, then retry.",
    "moderation": "The message was flagged by moderation (403): {detail}",
    "timeout": "The model took too long to answer. Try again.",
    "rate_limited": "OpenRouter is rate limiting requests (429). Try again {when}.",
    "unavailable": "The model provider is unavailable right now ({status}). Try again in a moment.",
    "connection": "Could not reach OpenRouter. Check the network, then try again.",
    "bad_response": "OpenRouter sent a reply the app could not read. Try again.",
    "no_message": "The model finished without an answer. Try again.",
    "failed": "The model stopped with an error: {detail}",
    "upstream": "OpenRouter answered with an error ({status}): {detail}",
    "cut": "The connection to the model was cut before the reply finished. Try again.",
    "stopped": "Stopped before the model answered.",
}


DETAIL_LIMIT = 300  # characters of the upstream's own words a user is shown (and a conversation keeps)
REDACTED = "[redacted]"
MIN_SECRET = 8  # shorter "keys" are no real key, and scrubbing them would garble every message
MAX_RETRY_AFTER = 86400  # seconds; a longer Retry-After is not believed
MODELS_READ_TIMEOUT = 10.0  # seconds for GET /models: a page waits on it, so never the turn's long read
REASONING_EFFORTS = ("minimal", "low", "medium", "high")

# Every API key a Client in this process was given. Replaced whole (never changed in place) under
# the lock, so `scrub` reads it without one.
_secrets = frozenset()
_secrets_lock = threading.Lock()


def register_secret(secret):
    """Make `scrub` (so every `UpstreamError`) remove `secret` from the text it passes on."""
    global _secrets
    if isinstance(secret, str) and len(secret) >= MIN_SECRET:
        with _secrets_lock:
            _secrets = _secrets | {secret}


def scrub(text):
    """`text` without any registered secret (longest first, so no part of one is left behind)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def clean_detail(detail):
    """The upstream's words as a user may see them: scrubbed first, then cut to DETAIL_LIMIT
    characters (cutting first could leave half a key that scrubbing no longer recognises)."""
    text = scrub(detail if isinstance(detail, str) else str(detail or ""))
    return text if len(text) <= DETAIL_LIMIT else text[:DETAIL_LIMIT].rstrip() + "\u2026"


def parse_retry_after(value, now=None):
    """Seconds to wait from a `Retry-After` header, or None when it is missing or not believable.

    Only what RFC 9110 allows: ASCII digits (not `str.isdigit`, which takes '²' and other digits
    `int` refuses or misreads), up to a day, or an HTTP-date, as seconds from `now` (0 if past)."""
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    if re.fullmatch(r"[0-9]{1,9}", value):
        seconds = int(value)
        return seconds if seconds <= MAX_RETRY_AFTER else None
    if not re.search(r"[A-Za-z]", value) or len(value) > 64:
        return None  # an HTTP-date names its day and month; anything else is not one
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None  # "-0000": no known zone, so no known moment
    seconds = math.ceil(when.timestamp() - (time.time() if now is None else now))
    return max(0, seconds) if seconds <= MAX_RETRY_AFTER else None


class UpstreamError(Exception):
    """A turn could not be completed. `message` is safe to show a user and to store: the upstream's
    words in it (and in `detail`) are scrubbed of every registered key and cut to DETAIL_LIMIT."""

    def __init__(self, kind, status=None, detail="", retry_after=None):
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.detail = clean_detail(detail)  # for the operator's log line; `message` is what users see
        if retry_after:
            when = f"in {retry_after} second{'s' if retry_after != 1 else ''}"
        else:
            when = "shortly"
        self.message = MESSAGES[kind].format(
            detail=self.detail or "no reason given", status=status, when=when
        )
        super().__init__(self.message)


def error_for_status(status, detail="", retry_after=None):
    """Map an HTTP error status from OpenRouter to an `UpstreamError`."""
    kinds = {400: "bad_request", 401: "auth", 402: "credits", 403: "moderation", 408: "timeout",
             429: "rate_limited"}
    if status in kinds:
        return UpstreamError(kinds[status], status, detail, retry_after)
    if status >= 500:
        return UpstreamError("unavailable", status, detail, retry_after)
    return UpstreamError("upstream", status, detail, retry_after)


@dataclass
class Reply:
    """The assistant's answer: the message item's own id and status, its text, and usage beside it."""

    item_id: str
    status: str
    text: str
    usage: dict | None = None
    model: str | None = None
    incomplete_reason: str | None = None
    # The reasoning summary (its parts joined with blank lines), when the model sent one. Never part of
    # `text`, and never sent back upstream.
    reasoning: str | None = None


@dataclass
class StreamState:
    """What a reply has delivered so far, and the handle that cancels it. The caller keeps it, so a
    failure mid-stream keeps the text, and another thread can `cancel()` the request in any phase."""

    item_id: str | None = None
    text: str = ""
    cancelled: bool = False
    _conn: object = field(default=None, repr=False)  # the urllib3 connection carrying this request
    _lock: object = field(default_factory=threading.Lock, repr=False)

    def attach(self, conn):
        """Called by the connection as soon as its socket exists (see `_CancellableConnection`)."""
        with self._lock:
            if self.cancelled:
                raise ConnectionAbortedError("the turn was stopped")
            self._conn = conn
            conn.chat_owner = self

    def detach(self):
        with self._lock:
            self._conn = None

    def cancel(self):
        """Stop the request now, whatever phase it is in. Shutting the socket down wakes a thread
        blocked in connect's aftermath, in sending, waiting for headers or reading the stream; a
        request still connecting sees the flag as soon as its socket exists."""
        with self._lock:
            self.cancelled = True
            conn = self._conn
            # A finished request's connection goes back to the pool: never cut another turn's.
            sock = conn.sock if conn is not None and getattr(conn, "chat_owner", None) is self else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


# The StreamState of the request this thread is making (one request at a time per thread).
_current = threading.local()


class _CancellableConnection:
    """Mixin for urllib3's connections: hand the socket to the current turn's StreamState the moment
    it exists (a fresh connection) or is reused (a pooled one), so Stop can cut a request that has
    no response object yet: waiting for headers while the model queues or thinks."""

    def connect(self):
        super().connect()
        state = getattr(_current, "state", None)
        if state is not None:
            state.attach(self)

    def request(self, *args, **kwargs):
        state = getattr(_current, "state", None)
        if state is not None and self.sock is not None:
            state.attach(self)
        return super().request(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = type("CancellableHTTPConnection", (_CancellableConnection, HTTPConnectionPool.ConnectionCls), {})


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = type("CancellableHTTPSConnection", (_CancellableConnection, HTTPSConnectionPool.ConnectionCls), {})


def sse_data(raw):
    """Yield each SSE event's `data` (a str) from a urllib3 response, or None for a comment line.

    `read1` returns whatever bytes have arrived, so no event waits for a buffer to fill (requests'
    `iter_lines` reads 512-byte blocks and holds small events back when the body is not chunked)."""
    buf, data = b"", []
    while True:
        chunk = raw.read1(65536)
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith(b":"):
                yield None  # keep-alive comment (": OPENROUTER PROCESSING"): alive, not JSON
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8"))
            # `event:`, `id:` and `retry:` lines carry nothing this client needs.


def _error_detail(body):
    """OpenRouter's error message from `{"error": {"code", "message"}}` or a flat error event."""
    if not isinstance(body, dict):
        return ""
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    message = err.get("message")
    return message if isinstance(message, str) else ""


def _summary_texts(item):
    """The summary texts of a `reasoning` output item: `{"type": "summary_text", "text"}` entries per
    the spec, plain strings per one docs page."""
    summary = item.get("summary") if isinstance(item, dict) else None
    if not isinstance(summary, list):
        return []
    texts = []
    for entry in summary:
        if isinstance(entry, str):
            texts.append(entry)
        elif isinstance(entry, dict) and entry.get("type", "summary_text") == "summary_text" \
                and isinstance(entry.get("text"), str):
            texts.append(entry["text"])
    return texts


def _join_summary(texts):
    return "\n\n".join(text for text in texts if text) or None


def reasoning_from_output(output):
    """The reasoning summary of a response's `output` list (blank lines between parts), or None."""
    if not isinstance(output, list):
        return None
    return _join_summary([text for item in output
                          if isinstance(item, dict) and item.get("type") == "reasoning"
                          for text in _summary_texts(item)])


def reply_from_response(body):
    """Read a non-streamed response object: join the assistant message item(s); the reasoning
    summary goes to `Reply.reasoning`, never into the text."""
    if isinstance(body, dict) and (body.get("status") == "failed" or (
            not isinstance(body.get("output"), list) and isinstance(body.get("error"), dict))):
        raise UpstreamError("failed", detail=_error_detail(body))  # an error where a reply belongs
    if not isinstance(body, dict) or not isinstance(body.get("output"), list):
        raise UpstreamError("bad_response")
    messages = [
        item for item in body["output"]
        if isinstance(item, dict) and item.get("type") == "message"
        and item.get("role", "assistant") == "assistant" and item.get("id")
    ]
    if not messages:
        raise UpstreamError("no_message")
    text = "".join(
        part.get("text", "")
        for item in messages for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    )
    # With several message items the history keeps one item; the last one's id and status stand for it.
    last = messages[-1]
    status = last.get("status") or body.get("status") or "completed"
    if body.get("status") == "incomplete":
        status = "incomplete"
    reason = (body.get("incomplete_details") or {}).get("reason") if status == "incomplete" else None
    return Reply(last["id"], status, text, body.get("usage"), body.get("model"), reason,
                 reasoning_from_output(body["output"]))


class _Summary:
    """A streamed reasoning summary: its parts in order, keyed by (item id, summary index), and how
    much of it was yielded, so the yielded pieces always add up to a prefix of `text()`."""

    def __init__(self):
        self.parts = {}
        self.shown = []  # the pieces yielded so far
        self.shown_len = 0
        self.total = 0  # len(self.text())

    def text(self):
        return _join_summary(list(self.parts.values()))

    def delta(self, key, delta):
        """Append a `reasoning_summary_text.delta`; return the piece to yield ("" for none)."""
        last = next(reversed(self.parts)) if self.parts else None
        if key == last and self.parts[key] and self.shown_len == self.total:
            # The common case, kept O(len(delta)): more words for the part being shown.
            self.parts[key] += delta
            self.total += len(delta)
            return self._show(delta)
        self.parts[key] = self.parts.get(key, "") + delta
        return self._catch_up()

    def replace(self, key, text):
        """The whole text of one part (`reasoning_summary_text.done`)."""
        self.parts[key] = text
        return self._catch_up()

    def replace_item(self, item_id, texts):
        """The whole summary of one reasoning item (`output_item.done`)."""
        for index, text in enumerate(texts):
            self.parts[(item_id, index)] = text
        return self._catch_up()

    def _show(self, piece):
        self.shown.append(piece)
        self.shown_len += len(piece)
        return piece

    def _catch_up(self):
        full = self.text() or ""
        self.total = len(full)
        shown = "".join(self.shown)
        self.shown = [shown] if shown else []
        if len(full) > len(shown) and full.startswith(shown):
            return self._show(full[len(shown):])
        return ""  # a correction of words already shown: the final reply carries the truth


class Client:
    """One per process: a pooled `requests.Session`, the key and the request defaults."""

    def __init__(self, api_key, base_url, model, max_output_tokens, connect_timeout=10.0,
                 read_timeout=300.0, app_url="", app_title="", pool_size=512):
        self.api_key = api_key
        register_secret(api_key)  # every UpstreamError now scrubs it, whichever path built it
        self.url = f"{base_url}/responses"
        self.models_url = f"{base_url}/models"
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.timeout = (connect_timeout, read_timeout)
        self.http = requests.Session()
        # One pooled connection per turn in flight: the default pool keeps 10 and opens (and logs
        # discarding) a new connection for every turn beyond that.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        adapter.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self.http.mount("https://", adapter)
        self.http.mount("http://", adapter)
        # requests re-reads the proxy variables from the whole environment on every request (over a
        # millisecond of CPU per turn); read them once here instead, with the same meaning.
        self.http.proxies.update(requests.utils.get_environ_proxies(self.url))
        self.http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.http.trust_env = False
        # Concurrent `post` calls on one Session are fine; mutating it is not, so headers are set once here.
        self.http.headers.update({"Authorization": f"Bearer {api_key}",
                                  "Content-Type": "application/json"})
        if app_url:
            self.http.headers["HTTP-Referer"] = app_url
        if app_title:
            self.http.headers["X-OpenRouter-Title"] = app_title

    @classmethod
    def from_config(cls, config):
        return cls(config["OPENROUTER_API_KEY"], config["OPENROUTER_BASE_URL"],
                   config["OPENROUTER_MODEL"], config["MAX_OUTPUT_TOKENS"],
                   config["OPENROUTER_CONNECT_TIMEOUT"], config["OPENROUTER_READ_TIMEOUT"],
                   config["OPENROUTER_APP_URL"], config["OPENROUTER_APP_TITLE"])

    def body(self, items, stream=False, *, model=None, instructions=None, max_output_tokens=None,
             temperature=None, reasoning_effort=None):
        """The request body. Each option is sent only when given (None: not sent); `model` and
        `max_output_tokens` fall back to the client's own. A value the API would refuse raises
        `ValueError` here, before anything is sent: check user input before it reaches a turn."""
        model = self.model if model is None else model
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a model id, got {model!r}")
        limit = self.max_output_tokens if max_output_tokens is None else max_output_tokens
        if type(limit) is not int or limit <= 0:
            raise ValueError(f"max_output_tokens must be a positive integer, got {limit!r}")
        body = {"model": model, "input": items, "max_output_tokens": limit, "stream": stream}
        if instructions is not None:
            if not isinstance(instructions, str):
                raise ValueError(f"instructions must be a string, got {type(instructions).__name__}")
            if instructions.strip():
                body["instructions"] = instructions
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                    or not 0 <= temperature <= 2:  # NaN fails the comparison too
                raise ValueError(f"temperature must be a number from 0 to 2, got {temperature!r}")
            body["temperature"] = float(temperature)
        if reasoning_effort is not None:
            if reasoning_effort not in REASONING_EFFORTS:
                raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                                 f"got {reasoning_effort!r}")
            body["reasoning"] = {"effort": reasoning_effort, "summary": "auto"}
        return body

    def models(self):
        """The model list from `GET {base}/models`: its `data`, the dicts that have an `id`.

        Any failure (no key is not one: the list is public) raises `UpstreamError`. The read timeout
        is short, since a page waits on this; callers cache it (see `catalogue.Catalogue`)."""
        # A connection this GET takes from the pool may have carried a finished turn whose Stop
        # could still come: claim it for a state of our own, so that Stop cannot cut this request.
        state = StreamState()
        _current.state = state
        try:
            response = self.http.get(self.models_url, timeout=(self.timeout[0], MODELS_READ_TIMEOUT),
                                     headers={"Content-Type": None})
        except requests.RequestException as exc:
            raise UpstreamError("timeout" if isinstance(exc, requests.Timeout) else "connection",
                                detail=str(exc)) from None
        finally:
            _current.state = None
            state.detach()
        try:
            if response.status_code != 200:
                try:
                    detail = _error_detail(response.json())
                except ValueError:
                    detail = ""
                raise error_for_status(response.status_code, detail,
                                       parse_retry_after(response.headers.get("Retry-After")))
            try:
                body = response.json()
            except ValueError:
                raise UpstreamError("bad_response") from None
        finally:
            response.close()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError("bad_response")
        return [model for model in data
                if isinstance(model, dict) and isinstance(model.get("id"), str) and model["id"]]

    def _post(self, items, stream, state, options):
        if not self.api_key:
            raise UpstreamError("no_key")
        if state.cancelled:
            raise UpstreamError("stopped")
        data = json.dumps(self.body(items, stream, **options))  # a bad option fails before connecting
        _current.state = state
        try:
            response = self.http.post(self.url, data=data,
                                      timeout=self.timeout, stream=stream,
                                      headers={"Accept-Encoding": "identity"} if stream else None)
        except requests.RequestException as exc:
            if state.cancelled:
                raise UpstreamError("stopped") from None
            raise UpstreamError("timeout" if isinstance(exc, requests.Timeout) else "connection",
                                detail=str(exc)) from None
        finally:
            _current.state = None
        if response.status_code != 200:
            try:
                detail = _error_detail(response.json())
            except ValueError:
                detail = ""
            finally:
                response.close()
            raise error_for_status(response.status_code, detail,
                                   parse_retry_after(response.headers.get("Retry-After")))
        return response

    def respond(self, items, state=None, **options):
        """Send the history, wait for the whole answer, return a `Reply` (`state.cancel()` stops it).
        `options`: `body`'s keywords (model, instructions, max_output_tokens, temperature,
        reasoning_effort)."""
        state = state or StreamState()
        try:
            response = self._post(items, False, state, options)
            try:
                body = response.json()
            except ValueError:
                raise UpstreamError("bad_response") from None
        finally:
            state.detach()
        return reply_from_response(body)

    def stream(self, items, state, **options):
        """Send the history with `stream: true` and yield `(kind, value)` events as they arrive:
        ("alive", None) for keep-alives and other progress, ("delta", text), ("reasoning", text) for
        the reasoning summary as it streams (never part of the reply's text; its pieces add up to the
        start of `Reply.reasoning`, blank lines between parts included), and last ("done", Reply).
        `options`: as for `respond`.

        `state` collects the item id and text so far, so a caller that sees an `UpstreamError` (or
        stops early: closing this generator closes the upstream connection) still has them."""
        summary, reasoning_id = _Summary(), None
        try:
            response = self._post(items, True, state, options)
        except UpstreamError:
            state.detach()
            raise
        try:
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                # Some failures arrive as a plain JSON body even when a stream was asked for.
                yield "done", reply_from_response(response.json())
                return
            for data in sse_data(response.raw):
                if data is None:
                    yield "alive", None
                    continue
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    continue  # one unreadable event is not worth failing the reply for
                kind = event.get("type") if isinstance(event, dict) else None
                if kind in ("response.output_text.delta", "response.content_part.delta"):
                    delta = event.get("delta")
                    if isinstance(delta, str) and delta:
                        state.text += delta
                        yield "delta", delta
                        continue
                elif kind == "response.output_item.added":
                    item = event.get("item") or {}
                    if item.get("type") == "message" and item.get("id"):
                        state.item_id = item["id"]
                    elif item.get("type") == "reasoning" and isinstance(item.get("id"), str):
                        reasoning_id = item["id"]
                elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_summary_text.done"):
                    item_id, index = event.get("item_id"), event.get("summary_index")
                    key = (item_id if isinstance(item_id, str) else reasoning_id,
                           index if type(index) is int else 0)
                    field_ = "delta" if kind.endswith("delta") else "text"
                    value = event.get(field_)
                    if isinstance(value, str) and value:
                        piece = summary.delta(key, value) if field_ == "delta" else summary.replace(key, value)
                        if piece:
                            yield "reasoning", piece
                            continue
                elif kind == "response.output_item.done":
                    item = event.get("item")
                    if isinstance(item, dict) and item.get("type") == "reasoning":
                        item_id = item.get("id") if isinstance(item.get("id"), str) else reasoning_id
                        piece = summary.replace_item(item_id, _summary_texts(item))
                        if piece:
                            yield "reasoning", piece
                            continue
                elif kind in ("response.completed", "response.incomplete", "response.done"):
                    yield "done", self._final(event.get("response"), state, kind, summary.text())
                    return
                elif kind == "response.failed":
                    raise UpstreamError("failed", detail=_error_detail(event.get("response")))
                elif kind == "error":
                    raise UpstreamError("failed", detail=_error_detail(event))
                yield "alive", None
            raise UpstreamError("cut")  # ended without a terminal event
        except ValueError:
            raise UpstreamError("bad_response") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if state.cancelled:
                raise UpstreamError("stopped") from None
            timeout = isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
            raise UpstreamError("timeout" if timeout else "cut") from None
        finally:
            state.detach()
            response.close()

    @staticmethod
    def _final(body, state, kind, reasoning=None):
        """The reply from a terminal event: its full response object when it has one, else what the
        deltas built (the item id came with `output_item.added`). `reasoning`: the summary the
        stream delivered, for a response object without one."""
        try:
            reply = reply_from_response(body)
        except UpstreamError as exc:
            # A failed response is a failure whatever event carried it (the words so far stay in
            # `state`); only a terminal event without a readable response falls back to the deltas.
            if exc.kind == "failed" or not state.item_id:
                raise
            status = "incomplete" if kind == "response.incomplete" else "completed"
            details = (body or {}).get("incomplete_details") or {}
            return Reply(state.item_id, status, state.text, (body or {}).get("usage"),
                         (body or {}).get("model"), details.get("reason"), reasoning)
        state.item_id, state.text = reply.item_id, reply.text
        if reply.reasoning is None:
            reply.reasoning = reasoning
        return reply
