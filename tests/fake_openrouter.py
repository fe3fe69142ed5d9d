"""A strict fake of OpenRouter's Responses API: a real HTTP server on loopback that speaks real SSE.

Mocking `requests` would hide exactly the bugs that matter here (buffered streams, keep-alive comments,
connections closed mid-reply, ids the app made up), so the app talks to this over TCP like it would to
https://openrouter.ai/api/v1. It validates every request the way the real API would and records why it
refused one in `rejections`, so a test can assert that the app never sent anything the real API rejects.

    with FakeOpenRouter() as fake:
        fake.queue(reply("Hello"), error(429, "slow down", retry_after=3))
        ... point the app at fake.base_url with fake.api_key ...

Behaviours (`reply`, `error`, `raw`, `no_message`, `hang`, `stream_error`) are consumed one per accepted
POST /responses; with none queued the fake answers with `reply()`.

GET /models serves `fake.models` (default: a copy of MODELS), which is also the list a request's
`model` must be in and whose `supported_parameters` and `context_length` it is checked against:

    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}   # reset() restores the default
    fake.models_response = error(503, "down")               # make GET /models fail (error, raw or hang)
    fake.model_fetches                                      # how many GET /models arrived

Sign in with OpenRouter (OAuth PKCE), as OpenRouter does it: `GET {fake.auth_url}?callback_url=…&
code_challenge=…&code_challenge_method=S256` (the page a browser is sent to) issues a single-use code
bound to that challenge and redirects to `callback_url?code=…`; `POST /api/v1/auth/keys` with `code`,
`code_verifier` and `code_challenge_method` answers `{"key", "user_id"}` only when base64url(SHA-256(
code_verifier)) is that challenge (else 403, and the code is spent either way). Each key it issues is
then accepted by POST /responses like the operator's; every request records the key it carried
(`fake.requests[i]["key"]`), so a test can tell who paid. `GET /api/v1/key` answers a key's limit and
usage (`fake.key_limits[key] = (limit, usage)`; default (10, 0.25)). `fake.revoked.add(key)`: that key
gets 401 everywhere. `fake.exchanges` records each POST /auth/keys (body, headers, status).
"""

import base64
import copy
import hashlib
import json
import math
import re
import select
import socket
import secrets
import threading
import time
from dataclasses import KW_ONLY, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
REASONING_TEXT = "thinking\u2026"
ROLES = {"user", "assistant", "system", "developer"}
ITEM_KEYS = {"type", "role", "content", "id", "status"}
ASSISTANT_STATUSES = {"completed", "incomplete", "in_progress"}
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
MODELS = {"data": [
    {"id": "openai/o4-mini", "name": "OpenAI: o4-mini", "context_length": 200000,
     "pricing": {"prompt": "0.0000011", "completion": "0.0000044"},
     "supported_parameters": ["max_tokens", "reasoning", "tools"],
     "architecture": {"input_modalities": ["text", "image", "file"], "output_modalities": ["text"]}},
    {"id": "openai/gpt-4o-mini", "name": "OpenAI: GPT-4o-mini", "context_length": 128000,
     "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
     "supported_parameters": ["max_tokens", "temperature", "top_p", "tools"],
     "architecture": {"input_modalities": ["text", "image", "file"], "output_modalities": ["text"]}}]}
# A small-context model without reasoning, for tests of context limits (not in MODELS: add it).
TINY_MODEL = {"id": "tiny/4k", "name": "Tiny: 4K", "context_length": 4096,
              "pricing": {"prompt": "0", "completion": "0"},
              "supported_parameters": ["max_tokens", "temperature"],
              "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]}}
REASONING_EFFORTS = {"minimal", "low", "medium", "high"}
REASONING_SUMMARIES = {"auto", "concise", "detailed"}
REASONING_KEYS = {"effort", "summary", "max_tokens", "exclude", "enabled"}
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 32 bytes, without padding
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636's code_verifier
DEFAULT_KEY_LIMIT = (10.0, 0.25)  # (limit, usage) in dollars of a key GET /key describes


# --- behaviours: plain data, so a test reads like a script of what upstream will do -----------------

# Each constructor is the dataclass itself (reply = Reply, ...): one place for the defaults.
@dataclass
class Reply:
    """A successful answer; text=None echoes "Reply {n}: {last user text}" so tests can see what was sent."""
    text: object = None
    _: KW_ONLY
    status: str = "completed"
    reasoning: object = True      # True: one summary part REASONING_TEXT; a str or list of str: these parts
    chunks: object = None         # the exact deltas; default: the text in ~4-character pieces
    delay: float = 0.0            # silence before answering (streams: after response.in_progress)
    chunk_delay: float = 0.0
    keepalive_every: object = None
    gate: object = None           # threading.Event holding the stream after its first delta
    tail_delay: float = 0.0       # silence between the terminal event and `[DONE]` (streams)
    usage: bool = True
    # url_citation annotations of the reply's text (sent as the API does: streamed after the deltas,
    # and in the final part); default when the request asks for web search: one citation per result.
    annotations: object = None


@dataclass
class Error:
    status: int
    message: str = "Upstream error"
    _: KW_ONLY
    code: object = None
    metadata: object = None
    retry_after: object = None
    delay: float = 0.0


@dataclass
class Raw:
    status: int
    body: object                  # bytes or str, sent exactly as given
    content_type: str = "text/html"


@dataclass
class NoMessage:
    pass


@dataclass
class Hang:
    seconds: float


@dataclass
class StreamError:
    after_chunks: int = 2
    _: KW_ONLY
    style: str = "flat"           # flat | nested | failed | truncated
    chunk_delay: float = 0.0
    text: str = "partial answer text here"
    message: str = "Provider disconnected"  # the upstream's own words (also the 502's for a non-stream request)
    # style "failed" only: the terminal event carrying the failed response. The spec sends
    # response.failed; a hostile upstream may put a failed response in response.completed/incomplete.
    terminal: str = "response.failed"

    def __post_init__(self):
        if self.style not in ("flat", "nested", "failed", "truncated"):
            raise ValueError(f"unknown stream_error style {self.style!r}")
        if self.terminal not in ("response.failed", "response.completed", "response.incomplete"):
            raise ValueError(f"unknown stream_error terminal event {self.terminal!r}")
        if self.terminal != "response.failed" and self.style != "failed":
            raise ValueError("stream_error(terminal=...) needs style='failed'")


reply, error, raw, no_message, hang, stream_error = Reply, Error, Raw, NoMessage, Hang, StreamError


# --- validation: what the real API would refuse, phrased so a failing test explains itself ----------

IMAGE_URL = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+=*")
PDF_URL = re.compile(r"data:application/pdf;base64,[A-Za-z0-9+/]+=*")


def _attachment_problem(part, where):
    """A user message's image or file part, as the API takes it (data URLs of real base64)."""
    if part.get("type") == "input_image":
        if set(part) - {"type", "image_url", "detail"}:
            return f"{where}: input_image has unknown keys {sorted(set(part) - {'type', 'image_url', 'detail'})}"
        if not isinstance(part.get("image_url"), str) or not IMAGE_URL.fullmatch(part["image_url"]):
            return f"{where}: input_image needs 'image_url' as an image data URL"
        if part.get("detail", "auto") not in ("auto", "low", "high"):
            return f"{where}: input_image 'detail' must be auto, low or high"
        return None
    if set(part) != {"type", "filename", "file_data"}:
        return f"{where}: input_file needs exactly 'filename' and 'file_data', got {sorted(part)}"
    if not isinstance(part["filename"], str) or not part["filename"]:
        return f"{where}: input_file needs a 'filename'"
    if not isinstance(part["file_data"], str) or not PDF_URL.fullmatch(part["file_data"]):
        return f"{where}: input_file needs 'file_data' as a PDF data URL"
    return None


def _parts_problem(content, part_type, where):
    if part_type == "input_text" and isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}: content must be {'a string or ' if part_type == 'input_text' else ''}a list of parts"
    for j, part in enumerate(content):
        if part_type == "input_text" and isinstance(part, dict) and part.get("type") in ("input_image", "input_file"):
            if problem := _attachment_problem(part, f"{where}: content[{j}]"):
                return problem
            continue
        allowed = {"type", "text", "annotations"} if part_type == "output_text" else {"type", "text"}
        if not isinstance(part, dict) or part.get("type") != part_type or not isinstance(part.get("text"), str):
            return f"{where}: content[{j}] must be {{'type': '{part_type}', 'text': str}}, got {part!r}"
        if part_type == "output_text" and not isinstance(part.get("annotations"), list):
            return f"{where}: content[{j}] needs 'annotations' (a list)"
        for annotation in part.get("annotations") or ():
            if not isinstance(annotation, dict) or annotation.get("type") != "url_citation" \
                    or not isinstance(annotation.get("url"), str) or not isinstance(annotation.get("title"), str) \
                    or type(annotation.get("start_index")) is not int or type(annotation.get("end_index")) is not int:
                return f"{where}: content[{j}] has an annotation the API did not give: {annotation!r}"
        if set(part) - allowed:
            return f"{where}: content[{j}] has unknown keys {sorted(set(part) - allowed)}"
    return None


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _options_problem(body, model):
    """The sampling and reasoning options, checked against the model's `supported_parameters`."""
    supported = model.get("supported_parameters") or []
    for name, top in (("temperature", 2), ("top_p", 1)):
        if name in body:
            if not _number(body[name]) or not 0 <= body[name] <= top:
                return f"'{name}' must be a number from 0 to {top}, got {body[name]!r}"
            if name not in supported:
                return f"'{name}' is not supported by {model['id']}"
    if "tools" in body:
        tools = body["tools"]
        if not isinstance(tools, list) or not tools:
            return f"'tools' must be a non-empty list, got {tools!r}"
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "openrouter:web_search":
                return f"the fake knows only the openrouter:web_search tool, got {tool!r}"
            if set(tool) - {"type", "parameters"}:
                return f"a tool has unknown keys {sorted(set(tool) - {'type', 'parameters'})}"
            params = tool.get("parameters", {})
            if not isinstance(params, dict) or set(params) - {"max_results", "search_context_size", "engine"}:
                return f"web_search parameters must be max_results, search_context_size or engine, got {params!r}"
            if "max_results" in params and (type(params["max_results"]) is not int
                                            or not 1 <= params["max_results"] <= 25):
                return f"'max_results' must be a whole number from 1 to 25, got {params['max_results']!r}"
        if "tools" not in supported:
            return f"No endpoints found that support tool use ({model['id']})"
    if "reasoning" in body:
        reasoning = body["reasoning"]
        if not isinstance(reasoning, dict):
            return f"'reasoning' must be an object, got {reasoning!r}"
        if set(reasoning) - REASONING_KEYS:
            return f"'reasoning' has unknown keys {sorted(set(reasoning) - REASONING_KEYS)}"
        if "effort" in reasoning and reasoning["effort"] not in REASONING_EFFORTS:
            return f"'reasoning.effort' must be one of {sorted(REASONING_EFFORTS)}, got {reasoning['effort']!r}"
        if "summary" in reasoning and reasoning["summary"] not in REASONING_SUMMARIES:
            return f"'reasoning.summary' must be one of {sorted(REASONING_SUMMARIES)}, got {reasoning['summary']!r}"
        if "reasoning" not in supported:
            return f"'reasoning' is not supported by {model['id']}"
    return None


def _context_length(model):
    length = model.get("context_length")
    if type(length) is not int:
        length = (model.get("top_provider") or {}).get("context_length")
    return length if type(length) is int else None


def _context_problem(body, model):
    """Input (estimated at 4 characters a token) plus max_output_tokens past the model's context length:
    refused the way providers word it."""
    limit = _context_length(model)
    if limit is None:
        return None
    items = body["input"]
    chars = len(body.get("instructions") or "")
    for item in [items] if isinstance(items, str) else items:
        content = item if isinstance(item, str) else item.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text", "")) for part in content if isinstance(part, dict))
    tokens, output = math.ceil(chars / 4), body.get("max_output_tokens") or 0
    if tokens + output > limit:
        return (f"This endpoint's maximum context length is {limit} tokens. However, you requested about "
                f"{tokens + output} tokens ({tokens} of text input, {output} in the output). Please reduce "
                "the length of either one, or use the \"middle-out\" transform to compress your prompt "
                "automatically.")
    return None


def _body_problem(body, issued_ids, models=None):
    """None if the real API would accept this body, else the reason it would send a 400.
    `models`: id -> model dict (default: MODELS); the body's model must be one of them."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' must be a non-empty string"
    models = {m["id"]: m for m in MODELS["data"]} if models is None else models
    model = models.get(body["model"])
    if model is None:
        return f"{body['model']} is not a valid model ID"
    if "instructions" in body and not isinstance(body["instructions"], str):
        return "'instructions' must be a string"
    if problem := _options_problem(body, model):
        return problem
    if body.get("store") is True:
        return "'store: true' is not supported (the API is stateless)"
    if "previous_response_id" in body:
        return "'previous_response_id' is not supported (send the full history)"
    limit = body.get("max_output_tokens")
    if "max_output_tokens" in body and (type(limit) is not int or limit <= 0):
        return f"'max_output_tokens' must be a positive integer, got {limit!r}"
    if "stream" in body and not isinstance(body["stream"], bool):
        return f"'stream' must be a boolean, got {body['stream']!r}"
    items = body.get("input")
    if isinstance(items, str):
        return _context_problem(body, model)
    if not isinstance(items, list) or not items:
        return "'input' must be a string or a non-empty list of items"
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, dict) and item.get("type") == "reasoning":
            continue  # earlier reasoning may be sent back; the fake ignores it
        if not isinstance(item, dict) or item.get("type") != "message":
            return f"{where}: must be an item with type 'message', got {item!r}"
        if set(item) - ITEM_KEYS:
            return f"{where}: unknown keys {sorted(set(item) - ITEM_KEYS)} (app metadata leaked upstream?)"
        role = item.get("role")
        if role not in ROLES:
            return f"{where}: role must be one of {sorted(ROLES)}, got {role!r}"
        if role == "assistant":
            if not isinstance(item.get("id"), str):
                return f"{where}: assistant item needs the 'id' the API gave it"
            if item.get("status") not in ASSISTANT_STATUSES:
                return f"{where}: assistant item needs 'status' in {sorted(ASSISTANT_STATUSES)}"
            if item["id"] not in issued_ids:
                return f"{where}: unknown assistant id {item['id']!r} (the app invented an id)"
        kind = "output_text" if role == "assistant" else "input_text"
        if problem := _parts_problem(item.get("content"), kind, where):
            return problem
    if items[-1].get("type") != "message" or items[-1].get("role") != "user":
        return "the last input item must be the user's message"
    images = any(isinstance(p, dict) and p.get("type") == "input_image"
                 for item in items if isinstance(item.get("content"), list) for p in item["content"])
    if images and "image" not in (model.get("architecture") or {}).get("input_modalities", ["image"]):
        return "No endpoints found that support image input"
    return _context_problem(body, model)


def _user_texts(items):
    """The text of each user turn in a (validated) input."""
    contents = [items] if isinstance(items, str) else [
        item["content"] for item in items if item.get("type") == "message" and item.get("role") == "user"]
    return [c if isinstance(c, str) else "".join(part.get("text", "") for part in c) for c in contents]


class _Abort(Exception):
    """Drop the connection without finishing the response (truncated streams, server stopping)."""


# --- the server ----------------------------------------------------------------------------------

class FakeOpenRouter:
    def __init__(self, api_key="sk-or-v1-test-0123456789abcdef", host="127.0.0.1", chunked=True):
        self.api_key, self.host, self.chunked = api_key, host, chunked
        self.requests, self.rejections, self.issued_ids, self.disconnects = [], [], set(), 0
        self._queue = []
        self.models = copy.deepcopy(MODELS)  # GET /models' body, and the models a request may name
        self.models_response = None  # a behaviour (error, raw, hang) GET /models answers with instead
        self.model_fetches = 0
        self.default = Reply()  # what a POST /responses gets when nothing is queued (benchmarks set it)
        # Sign in with OpenRouter: codes issued by GET /auth (code -> its challenge), keys issued by
        # POST /auth/keys (key -> user id), keys revoked (401), keys' (limit, usage), and each exchange.
        self.auth_codes, self.user_keys, self.revoked, self.key_limits = {}, {}, set(), {}
        self.exchanges, self.key_fetches = [], 0
        # One condition guards all shared state; it also wakes wait_for_requests.
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = self.base_url = None

    def start(self):
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"fake": self})
        # A deep accept backlog: benchmarks open hundreds of connections at once.
        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 1024})
        self._server = server_class((self.host, 0), handler)
        self._server.daemon_threads = True  # a hung or gated stream must never keep pytest alive
        self.base_url = f"http://{self.host}:{self._server.server_address[1]}/api/v1"
        threading.Thread(target=self._server.serve_forever, name="fake-openrouter", daemon=True).start()
        return self

    @property
    def auth_url(self):
        """OPENROUTER_AUTH_URL of an app on this fake: its sign-in page."""
        return self.base_url.rsplit("/api/v1", 1)[0] + "/auth"

    def key_valid(self, key):
        return key not in self.revoked and (key == self.api_key or key in self.user_keys)

    def stop(self):
        if self._server:
            self._stopping.set()  # wakes delays and hangs, so their threads end promptly
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def queue(self, *behaviours):
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self):
        # Cleared in place: issued ids stay valid because a conversation may outlive a test's reset.
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.rejections.clear()
            self.disconnects = 0
            self.models = copy.deepcopy(MODELS)
            self.models_response = None
            self.model_fetches = 0
            self.auth_codes.clear()
            self.user_keys.clear()
            self.revoked.clear()
            self.key_limits.clear()
            self.exchanges.clear()
            self.key_fetches = 0

    def wait_for_requests(self, n, timeout=5.0):
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= n, timeout)

    # Called from handler threads.
    def _record(self, entry, reject=None):
        with self._lock:
            self.requests.append(entry)
            if reject:
                self.rejections.append(reject)
            self._lock.notify_all()

    def _next(self):
        with self._lock:
            return self._queue.pop(0) if self._queue else self.default

    def _issue_message_id(self):
        new_id = f"msg_{secrets.token_hex(12)}"
        with self._lock:
            self.issued_ids.add(new_id)
        return new_id


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse in the app's Session is exercised
    fake = None  # set per server by FakeOpenRouter.start

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body are separate writes: without TCP_NODELAY, Nagle holds the body until the
        # client's delayed ACK (~40 ms), a delay real servers do not add and benchmarks would measure.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self):
        try:
            super().handle()
        except GONE:
            pass  # a client that left while we answered is normal here; streams count it themselves

    # -- plumbing --
    def _send(self, status, data, content_type="application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status, message, metadata=None, code=None, headers=None):
        err = {"code": code or status, "message": message, **({} if metadata is None else {"metadata": metadata})}
        self._send(status, json.dumps({"error": err}).encode(), headers=headers)

    def _sleep(self, seconds):
        if seconds and self.fake._stopping.wait(seconds):
            raise _Abort()

    def _hold(self, seconds):
        """Send nothing for `seconds` (no status line, no headers), but notice a client that hangs up
        meanwhile, as a real server would: count it in `disconnects` and stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.fake._stopping.is_set():
                raise _Abort()
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                with self.fake._lock:
                    self.fake.disconnects += 1
                raise _Abort()

    # -- routes --
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/auth":
            return self._authorize()
        if path == "/api/v1/key":
            return self._key()
        if path != "/api/v1/models":
            return self._not_found()
        with self.fake._lock:
            self.fake.model_fetches += 1
            behaviour, models = self.fake.models_response, self.fake.models
        try:
            if behaviour is None:
                self._send(200, json.dumps(models).encode())
            elif not isinstance(behaviour, (Error, Raw, Hang)):
                self._send_error(500, "fake: models_response must be error(), raw() or hang()")
            else:
                self._serve(behaviour, {})
        except _Abort:
            self.close_connection = True

    def _reject(self, status, reason, message=None):
        with self.fake._lock:
            self.fake.rejections.append(f"{status} {self.command} {self.path.split('?')[0]}: {reason}")
        self._send_error(status, message or reason)

    def _key_used(self):
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _authorize(self):
        """OpenRouter's sign-in page, with the person saying yes at once: a single-use code bound to the
        challenge, and a redirect to the app's callback with it."""
        query = parse_qs(urlsplit(self.path).query)
        callback = (query.get("callback_url") or [""])[0]
        challenge = (query.get("code_challenge") or [""])[0]
        method = (query.get("code_challenge_method") or [""])[0]
        if urlsplit(callback).scheme not in ("http", "https") or not urlsplit(callback).netloc:
            return self._reject(400, f"callback_url must be an http(s) URL, got {callback!r}")
        if method != "S256":
            return self._reject(400, f"code_challenge_method must be S256, got {method!r}")
        if not CHALLENGE.fullmatch(challenge):
            return self._reject(400, f"code_challenge must be base64url(SHA-256) without padding, got {challenge!r}")
        code = secrets.token_urlsafe(24)
        with self.fake._lock:
            self.fake.auth_codes[code] = challenge
        location = callback + ("&" if "?" in callback else "?") + urlencode({"code": code})
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _exchange(self, raw_body):
        try:
            body = json.loads(raw_body.decode("utf-8"))
        except ValueError:
            body = None
        entry = {"body": body, "headers": dict(self.headers), "status": 403}
        with self.fake._lock:
            self.fake.exchanges.append(entry)
        if not isinstance(body, dict) or set(body) != {"code", "code_verifier", "code_challenge_method"}:
            entry["status"] = 400
            return self._reject(400, f"the body must hold code, code_verifier and code_challenge_method, got {body!r}")
        verifier = body["code_verifier"]
        if body["code_challenge_method"] != "S256" or not isinstance(verifier, str) or not VERIFIER.fullmatch(verifier):
            entry["status"] = 400
            return self._reject(400, "code_challenge_method must be S256 and code_verifier 43-128 characters")
        with self.fake._lock:
            challenge = self.fake.auth_codes.pop(body["code"], None) if isinstance(body["code"], str) else None
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge is None or challenge != expected:
            why = "unknown or spent code" if challenge is None else "code_verifier does not match the challenge"
            return self._reject(403, why, "Invalid code or code_verifier")
        key, user = f"sk-or-v1-user-{secrets.token_hex(24)}", f"user_{secrets.token_hex(6)}"
        with self.fake._lock:
            self.fake.user_keys[key] = user
        entry["status"] = 200
        self._send(200, json.dumps({"key": key, "user_id": user}).encode())

    def _key(self):
        key = self._key_used()
        with self.fake._lock:
            self.fake.key_fetches += 1
            valid = key is not None and self.fake.key_valid(key)
            limit, usage = self.fake.key_limits.get(key, DEFAULT_KEY_LIMIT)
        if not valid:
            return self._send_error(401, "User not found.")
        data = {"label": "sk-or-v1-…", "limit": limit, "usage": usage, "is_free_tier": False,
                "limit_remaining": None if limit is None else round(limit - usage, 10)}
        self._send(200, json.dumps({"data": data}).encode())

    def _not_found(self):
        # Recorded as a rejection too: an app calling a wrong URL is a bug the tests should see.
        reason = f"404 {self.command} {self.path}: no such route"
        with self.fake._lock:
            self.fake.rejections.append(reason)
        self._send_error(404, "Not Found")

    def do_POST(self):
        # Read the whole body even for a request we refuse, so the keep-alive connection stays in step.
        raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] == "/api/v1/auth/keys":
            return self._exchange(raw_body)
        if self.path.split("?")[0] != "/api/v1/responses":
            return self._not_found()
        try:
            body = json.loads(raw_body.decode("utf-8"))
        except ValueError:
            body = None
        key = self._key_used()
        entry = {"path": self.path, "headers": dict(self.headers), "body": body, "key": key,
                 "accepted": False, "rejection": None,
                 "peer": self.client_address}  # the client's (host, port): one per connection
        with self.fake._lock:
            valid = key is not None and self.fake.key_valid(key)
        if not valid:
            status, reason = 401, "missing, wrong or revoked 'Authorization: Bearer <key>' header"
        else:
            with self.fake._lock:
                issued, models = set(self.fake.issued_ids), self.fake.models
            data = models.get("data") if isinstance(models, dict) else None
            known = {m["id"]: m for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)}
            status, reason = 400, _body_problem(body, issued, known)
        if reason:
            entry["rejection"] = f"{status}: {reason}"
            self.fake._record(entry, entry["rejection"])
            message = "No auth credentials found" if status == 401 else reason
            return self._send_error(status, message)
        entry["accepted"] = True
        self.fake._record(entry)
        behaviour = self.fake._next()
        self.terminal_written = False
        try:
            self._serve(behaviour, body)
        except _Abort:
            self.close_connection = True
        except GONE:
            self.close_connection = True
            # A client that hangs up once it has the terminal event (before [DONE] and the body's
            # end arrive) has read the reply whole: only an earlier hang-up is a disconnect.
            if body.get("stream") is True and not isinstance(behaviour, (Error, Raw)) \
                    and not self.terminal_written:
                with self.fake._lock:
                    self.fake.disconnects += 1

    def _serve(self, b, body):
        stream = body.get("stream") is True
        if isinstance(b, Error):
            self._sleep(b.delay)
            headers = {"Retry-After": str(b.retry_after)} if b.retry_after is not None else None
            self._send_error(b.status, b.message, b.metadata, b.code, headers)
        elif isinstance(b, Raw):
            self._send(b.status, b.body.encode() if isinstance(b.body, str) else b.body, b.content_type)
        elif isinstance(b, Hang):
            self._hold(b.seconds)
            raise _Abort()  # close without a byte: the client sees its read timeout or a dropped connection
        elif isinstance(b, StreamError) and not stream:
            self._send_error(502, b.message)
        elif not stream:
            self._sleep(getattr(b, "delay", 0.0))
            self._send(200, json.dumps(_Turn(self.fake, body, b).final()).encode())
        else:
            _SSE(self, _Turn(self.fake, body, b)).run()


class _Turn:
    """The ids, text and response objects of one answer, shared by the JSON and the streamed forms."""

    def __init__(self, fake, body, behaviour):
        self.fake, self.b, self.model = fake, behaviour, body["model"]
        users = _user_texts(body["input"])
        text = getattr(behaviour, "text", None)
        self.text = text if text is not None else f"Reply {len(users)}: {users[-1] if users else ''}"
        self.status = getattr(behaviour, "status", "completed")
        self.id = f"resp_{secrets.token_hex(12)}"
        reasoning = getattr(behaviour, "reasoning", True)
        self.summary = ([REASONING_TEXT] if reasoning is True else [] if not reasoning
                        else [reasoning] if isinstance(reasoning, str) else list(reasoning))
        self.reasoning = bool(reasoning)
        self.has_message = not isinstance(behaviour, NoMessage)
        self.input_chars = sum(len(t) for t in users)
        self.msg_id = None
        search = [t for t in body.get("tools") or () if t.get("type") == "openrouter:web_search"]
        self.searched = (search[0].get("parameters") or {}).get("max_results", 5) if search else 0
        found = getattr(behaviour, "annotations", None)
        if found is None and self.searched:
            found = [{"type": "url_citation", "url": f"https://example.org/result-{i}",
                      "title": f"Result {i}", "start_index": 0, "end_index": len(self.text)}
                     for i in range(1, min(self.searched, 2) + 1)]
        self.annotations = list(found or [])

    def search_item(self):
        return {"type": "web_search_call", "id": f"ws_{secrets.token_hex(12)}", "status": "completed"}

    def reasoning_item(self):
        return {"type": "reasoning", "id": f"rs_{secrets.token_hex(12)}",
                "summary": [{"type": "summary_text", "text": text} for text in self.summary]}

    def message_item(self, status, text):
        if self.msg_id is None:
            self.msg_id = self.fake._issue_message_id()
        annotations = self.annotations if status != "in_progress" else []
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": annotations}]
        return {"type": "message", "id": self.msg_id, "status": status, "role": "assistant", "content": content}

    def usage(self):
        if not getattr(self.b, "usage", True):
            return None
        reasoning = 8 if self.reasoning else 0
        inp, out = max(1, self.input_chars // 4), len(self.text) // 4 + 1 + reasoning
        return {"input_tokens": inp, "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": inp + out,
                # Search results are priced per result ($4 per 1,000), inside usage.cost.
                "cost": round(inp * 1.1e-6 + out * 4.4e-6 + self.searched * 0.004, 10)}

    def response(self, status, output, usage=None):
        return {"id": self.id, "object": "response", "model": self.model, "status": status, "output": output,
                "usage": usage, "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete" else None}

    def final(self):
        output = [self.reasoning_item()] if self.reasoning or not self.has_message else []
        if self.searched:
            output.append(self.search_item())
        if self.has_message:
            output.append(self.message_item(self.status, self.text))
        return self.response(self.status, output, self.usage())


class _SSE:
    """Writes one event stream: every event its own flushed write (its own chunk when chunked)."""

    def __init__(self, handler, turn):
        self.h, self.t, self.b = handler, turn, turn.b
        self.seq = 0
        self.last_write = time.monotonic()
        self.keepalive = getattr(self.b, "keepalive_every", None)

    def write(self, data):
        if self.h.fake.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.h.wfile.write(data)
        self.h.wfile.flush()
        self.last_write = time.monotonic()

    def event(self, kind, **fields):
        self.write(b"data: " + json.dumps({"type": kind, "sequence_number": self.seq, **fields}).encode() + b"\n\n")
        self.seq += 1

    def wait(self, seconds, until=None):
        """Stay silent for `seconds` (or until `until` is set), but send keep-alive comments whenever
        `keepalive_every` passes without a write, as OpenRouter does during long reasoning."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline and not (until and until.is_set()):
            step = deadline - now
            if self.keepalive:
                step = min(step, max(0.0, self.last_write + self.keepalive - now))
            if until is not None:
                until.wait(min(step, 0.05))  # wakes at once when set; the cap keeps the stop flag polled
            if self.h.fake._stopping.wait(0 if until is not None else step):
                raise _Abort()
            if self.keepalive and time.monotonic() - self.last_write >= self.keepalive:
                self.write(KEEPALIVE)

    def run(self):
        h, t, b = self.h, self.t, self.b
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        # Unchunked means no length either: the body ends when the socket closes, as behind some proxies.
        h.send_header(*(("Transfer-Encoding", "chunked") if h.fake.chunked else ("Connection", "close")))
        h.close_connection = not h.fake.chunked
        h.end_headers()
        self.write(KEEPALIVE)
        opening = t.response("in_progress", [])
        self.event("response.created", response=opening)
        self.event("response.in_progress", response=opening)
        self.wait(getattr(b, "delay", 0.0))  # the "model is thinking" silence before any output
        output = []
        if t.reasoning or not t.has_message:
            item = t.reasoning_item()
            self.event("response.output_item.added", output_index=0, item={**item, "summary": []})
            for index, text in enumerate(t.summary):
                ids = {"item_id": item["id"], "output_index": 0, "summary_index": index}
                self.event("response.reasoning_summary_part.added", **ids, part={"type": "summary_text", "text": ""})
                for i in range(0, len(text), 8):
                    self.event("response.reasoning_summary_text.delta", **ids, delta=text[i:i + 8])
                self.event("response.reasoning_summary_text.done", **ids, text=text)
                self.event("response.reasoning_summary_part.done", **ids, part={"type": "summary_text", "text": text})
            self.event("response.output_item.done", output_index=0, item=item)
            output.append(item)
        if not t.has_message:
            return self.finish("response.completed", t.response("completed", output, t.usage()))
        if t.searched:
            item = t.search_item()
            self.event("response.output_item.added", output_index=len(output), item={**item, "status": "in_progress"})
            self.event("response.output_item.done", output_index=len(output), item=item)
            output.append(item)
        index = len(output)
        # Added (and so issued) before any delta: a reply cut short still has an id the app may send back.
        self.event("response.output_item.added", output_index=index, item=t.message_item("in_progress", None))
        ids = {"item_id": t.msg_id, "output_index": index, "content_index": 0}
        self.event("response.content_part.added", **ids, part={"type": "output_text", "text": "", "annotations": []})
        chunks = getattr(b, "chunks", None) or [t.text[i:i + 4] for i in range(0, len(t.text), 4)]
        limit = b.after_chunks if isinstance(b, StreamError) else len(chunks)
        for i, chunk in enumerate(chunks[:limit]):
            if i:
                self.wait(b.chunk_delay)
            self.event("response.output_text.delta", **ids, delta=chunk)
            if i == 0 and getattr(b, "gate", None) is not None:
                self.wait(30.0, until=b.gate)
        if isinstance(b, StreamError):
            return self.fail(output + [t.message_item("incomplete", "".join(chunks[:limit]))])
        for number, annotation in enumerate(t.annotations):
            self.event("response.output_text.annotation.added", **ids, annotation_index=number,
                       annotation=annotation)
        part = {"type": "output_text", "text": t.text, "annotations": t.annotations}
        self.event("response.output_text.done", **ids, text=t.text)
        self.event("response.content_part.done", **ids, part=part)
        final = t.message_item(t.status, t.text)
        self.event("response.output_item.done", output_index=index, item=final)
        terminal = {"incomplete": "response.incomplete", "failed": "response.failed"}
        self.finish(terminal.get(t.status, "response.completed"), t.response(t.status, output + [final], t.usage()))

    def fail(self, output):
        problem = {"code": "server_error", "message": self.b.message}
        style = self.b.style
        if style == "truncated":
            raise _Abort()  # no terminal event, no [DONE], not even the end of the chunked body
        if style == "failed":
            return self.finish(self.b.terminal, {**self.t.response("failed", output), "error": problem})
        # The spec's flat shape, or the errors page's nested one; after either the stream just ends
        # (cleanly, but without [DONE]).
        self.event("error", **(dict(problem, param=None) if style == "flat" else {"error": problem}))
        self.end()

    def finish(self, kind, response):
        self.event(kind, response=response)
        self.h.terminal_written = True
        self.wait(getattr(self.b, "tail_delay", 0.0))
        self.write(b"data: [DONE]\n\n")
        self.end()

    def end(self):
        if self.h.fake.chunked:
            self.h.wfile.write(b"0\r\n\r\n")
            self.h.wfile.flush()
