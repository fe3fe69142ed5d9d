"""The client: one per process, a pooled `requests.Session` with the key, the request body, and the
whole or streamed reply read into events. The only code that sends anything to OpenRouter."""

import json
import os

import requests
import urllib3

from .connection import StreamState, _current, _HTTPPool, _HTTPSPool
from .errors import UpstreamError, error_detail, error_for_status, parse_retry_after, register_secret
from .parsing import (CAUGHT_UP, IDLE, Reply, _Summary, _summary_texts, body_pieces, reply_from_response,
                      sse_data)

MODELS_READ_TIMEOUT = 10.0  # seconds for GET /models: a page waits on it, so never the turn's long read
SIGNIN_READ_TIMEOUT = 30.0  # seconds for POST /auth/keys: the person waits on the callback page
KEY_READ_TIMEOUT = 3.0  # seconds for GET /key (a signed-in person's credit): a page waits on it
REASONING_EFFORTS = ("minimal", "low", "medium", "high")


def _failure(response, own_key=False):
    """The `UpstreamError` of a non-200 answer: its status, OpenRouter's own words, its Retry-After.
    `own_key`: the request carried a person's own key (a 401 or 402 is then theirs)."""
    try:
        detail = error_detail(response.json())
    except ValueError:
        detail = ""
    return error_for_status(response.status_code, detail,
                            parse_retry_after(response.headers.get("Retry-After")), own_key)


def _body(response):
    """A 200 answer's JSON body; one the app cannot read is a `bad_response`."""
    try:
        return response.json()
    except ValueError:
        raise UpstreamError("bad_response") from None


def _answer(response, own_key=False, refused=None):
    """The JSON body of a short request's 200 answer, the response closed either way: another status
    is its `UpstreamError` (`refused`: a set of statuses that mean the request itself was refused,
    raised as kind "signin_refused")."""
    try:
        if refused and response.status_code in refused:
            raise UpstreamError("signin_refused", response.status_code)
        if response.status_code != 200:
            raise _failure(response, own_key)
        return _body(response)
    finally:
        response.close()


class _Waiting:
    """What `sse_data` asks before each read of a stream read with `idle()` (see `Client.stream`)."""

    def __init__(self, state, raw, idle):
        self.state, self.raw, self.idle = state, raw, idle

    def ready(self):
        # idle() None: nobody waits on this reading any more (a turn handed to its own thread):
        # read on without looking.
        return self.idle() is None or self.state.ready(self.raw)

    def wait(self):
        wait = self.idle()
        return wait is not None and not self.state.arrives(self.raw, wait)


class Client:
    """One per process: a pooled `requests.Session`, the key and the request defaults."""

    def __init__(self, api_key, base_url, model, max_output_tokens, connect_timeout=10.0,
                 read_timeout=300.0, app_url="", app_title="", pool_size=512):
        self.api_key = api_key
        register_secret(api_key)  # every UpstreamError now scrubs it, whichever path built it
        self.url = f"{base_url}/responses"
        self.models_url = f"{base_url}/models"
        self.auth_keys_url = f"{base_url}/auth/keys"  # PKCE: a sign-in's code for a person's key
        self.key_url = f"{base_url}/key"  # the key a request carries: its limit and usage
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
        self.http.headers["Content-Type"] = "application/json"
        if api_key:  # none: people sign in with their own (SIGN_IN_WITH_OPENROUTER), sent per request
            self.http.headers["Authorization"] = f"Bearer {api_key}"
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
             temperature=None, reasoning_effort=None, web_search=None):
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
        if web_search:  # OpenRouter's server tool: it searches, the reply cites (url_citation)
            if type(web_search) is not int or not 1 <= web_search <= 25:
                raise ValueError(f"web_search must be a number of results from 1 to 25, got {web_search!r}")
            body["tools"] = [{"type": "openrouter:web_search", "parameters": {"max_results": web_search}}]
        return body

    def models(self):
        """The model list from `GET {base}/models`: its `data`, the dicts that have an `id`.

        Any failure (no key is not one: the list is public) raises `UpstreamError`. The read timeout
        is short, since a page waits on this; callers cache it (see `catalogue.Catalogue`)."""
        body = _answer(self._call("GET", self.models_url, MODELS_READ_TIMEOUT, headers={"Content-Type": None}))
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError("bad_response")
        return [model for model in data
                if isinstance(model, dict) and isinstance(model.get("id"), str) and model["id"]]

    def _call(self, method, url, read_timeout, **kwargs):
        """One short request that is not a turn (the model list, sign-in, a key's credit): its
        response, or an `UpstreamError` when OpenRouter cannot be reached. A connection it takes from
        the pool may have carried a finished turn whose Stop could still come: it claims a state of
        its own, so that Stop cannot cut this request."""
        state = StreamState()
        _current.state = state
        try:
            return self.http.request(method, url, timeout=(self.timeout[0], read_timeout), **kwargs)
        except requests.RequestException as exc:
            raise UpstreamError("timeout" if isinstance(exc, requests.Timeout) else "connection",
                                detail=str(exc)) from None
        finally:
            _current.state = None
            state.detach()

    def exchange_code(self, code, verifier):
        """The key OpenRouter issues for a sign-in (OAuth PKCE): `POST {base}/auth/keys` with the
        `code` the callback brought and the `verifier` whose S256 challenge started the sign-in.
        Returns the key (registered for scrubbing at once). A code or verifier OpenRouter refuses
        (wrong, used, expired: 400/401/403/404) raises `UpstreamError("signin_refused")`; any other
        failure the usual `UpstreamError`. The operator's key is not sent: this request needs none."""
        response = self._call("POST", self.auth_keys_url, SIGNIN_READ_TIMEOUT,
                              data=json.dumps({"code": code, "code_verifier": verifier,
                                               "code_challenge_method": "S256"}),
                              headers={"Authorization": None})
        body = _answer(response, refused={400, 401, 403, 404})
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
            raise UpstreamError("bad_response")
        register_secret(key)
        return key

    def key_info(self, api_key):
        """What OpenRouter says of `api_key` (`GET {base}/key`): its `data` dict (`limit`,
        `limit_remaining`, `usage`…). Any failure raises `UpstreamError`; the read timeout is short,
        since a page waits on it (callers cache it)."""
        response = self._call("GET", self.key_url, KEY_READ_TIMEOUT,
                              headers={"Authorization": f"Bearer {api_key}", "Content-Type": None})
        body = _answer(response, own_key=True)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise UpstreamError("bad_response")
        return data

    def _post(self, items, stream, state, options):
        # `api_key`: a person's own key (signed in with OpenRouter) for this request only; without
        # one, the operator's. A failure on a person's key is theirs: never retried on the operator's.
        own_key = options.pop("api_key", None)
        if not (own_key or self.api_key):
            raise UpstreamError("no_key")
        if state.cancelled:
            raise UpstreamError("stopped")
        data = json.dumps(self.body(items, stream, **options))  # a bad option fails before connecting
        headers = {"Accept-Encoding": "identity"} if stream else {}
        if own_key:
            headers["Authorization"] = f"Bearer {own_key}"
        _current.state = state
        try:
            response = self.http.post(self.url, data=data,
                                      timeout=self.timeout, stream=stream, headers=headers or None)
        except requests.RequestException as exc:
            if state.cancelled:
                raise UpstreamError("stopped") from None
            raise UpstreamError("timeout" if isinstance(exc, requests.Timeout) else "connection",
                                detail=str(exc)) from None
        finally:
            _current.state = None
        if response.status_code != 200:
            try:
                raise _failure(response, own_key=bool(own_key))
            finally:
                response.close()
        return response

    def respond(self, items, state=None, **options):
        """Send the history, wait for the whole answer, return a `Reply` (`state.cancel()` stops it).
        `options`: `body`'s keywords (model, instructions, max_output_tokens, temperature,
        reasoning_effort, web_search), and `api_key`: a person's own key for this request (else the
        operator's)."""
        state = state or StreamState()
        try:
            body = _body(self._post(items, False, state, options))
        finally:
            state.detach()
        return reply_from_response(body)

    def stream(self, items, state, idle=None, **options):
        """Send the history with `stream: true` and yield `(kind, value)` events as they arrive:
        ("alive", None) for keep-alives and other progress, ("delta", text), ("reasoning", text) for
        the reasoning summary as it streams (never part of the reply's text; its pieces add up to the
        start of `Reply.reasoning`, blank lines between parts included), and last ("done", Reply).
        `options`: as for `respond`. `idle()`, when given, says how many seconds the caller would wait
        for the next event (None: as long as it takes); after that long without one, ("idle", None)
        is yielded and the reading goes on. With `idle`, ("caught_up", None) also comes before
        every read that would wait: all that had arrived is read (a stream writes what it holds).

        `state` collects the item id and text so far, so a caller that sees an `UpstreamError` (or
        stops early: closing this generator closes the upstream connection) still has them."""
        summary, reasoning_id, ended = _Summary(), None, False
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
            waiting = None if idle is None else _Waiting(state, response.raw, idle)
            pieces = body_pieces(response.raw)
            for data in sse_data(pieces, waiting):
                if data is IDLE or data is CAUGHT_UP:
                    yield data, None
                    continue
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
                        state.add_text(delta)
                        yield "delta", delta
                        continue
                elif kind == "response.output_text.annotation.added":
                    annotation = event.get("annotation")
                    if isinstance(annotation, dict):
                        # Kept for the reply (the page lists its sources when it ends).
                        state.annotations.append(annotation)
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
                    final = self._final(event.get("response"), state, kind, summary.text())
                    ended = True
                    yield "done", final
                    return
                elif kind == "response.failed":
                    raise UpstreamError("failed", detail=error_detail(event.get("response")))
                elif kind == "error":
                    raise UpstreamError("failed", detail=error_detail(event))
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
            if ended:
                state.finish(response.raw, pieces)  # the connection back to the pool, when its end is here
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
                         (body or {}).get("model"), details.get("reason"), reasoning,
                         list(state.annotations))
        state.item_id, state.text = reply.item_id, reply.text
        if reply.reasoning is None:
            reply.reasoning = reasoning
        if not reply.annotations and state.annotations:
            reply.annotations = list(state.annotations)  # streamed, but not repeated at the end
        return reply
