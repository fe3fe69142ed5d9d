"""The load generator for the bursts: raw HTTP/1.1 over asyncio, one connection per chat.

An asyncio client costs microseconds per request, so a thousand chats at once do not steal the 2 cores
from the app being measured. It speaks just enough HTTP for this app and its fake upstreams:
Content-Length and chunked bodies, Set-Cookie, redirects to a path, and Server-Sent Events.

Every burst is built the same way for the app and for the "ideal" (the same requests sent straight to
the fake upstream, in the same run): `burst(n, one)` starts `n` coroutines at once and times them.
Sessions (a cookie and its CSRF token, from `GET /`) are made beforehand, outside the timed burst.
"""

import asyncio
import json
import re
import time
from urllib.parse import quote, urlsplit

CSRF = re.compile(rb'name="csrf_token" value="([^"]+)"')


class HTTPError(Exception):
    pass


class Conn:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    def close(self):
        self.writer.close()

    async def send(self, method, path, headers=(), body=b""):
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def head(self):
        """(status, {lower-case name: value}, [Set-Cookie values])"""
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers, cookies = {}, []
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                name, value = name.strip().lower(), value.strip()
                headers[name] = value
                if name == "set-cookie":
                    cookies.append(value)
        return status, headers, cookies

    async def chunks(self, headers):
        """The body's pieces as they arrive (chunked, Content-Length or until close)."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                yield await self.reader.readexactly(length)
        else:
            while data := await self.reader.read(65536):
                yield data

    async def body(self, headers):
        return b"".join([c async for c in self.chunks(headers)])

    async def request(self, method, path, headers=(), body=b""):
        await self.send(method, path, headers, body)
        status, hdrs, cookies = await self.head()
        return status, hdrs, cookies, await self.body(hdrs)


async def sse(conn, headers):
    """(event, data) pairs of an SSE body as they arrive, with the time each was read."""
    buffer = b""
    async for chunk in conn.chunks(headers):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            now = time.time()
            kind, data = "message", []
            for line in block.decode().split("\n"):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                yield kind, "\n".join(data), now


def cookie_of(set_cookies, current):
    for value in set_cookies:
        pair = value.split(";", 1)[0]
        if pair.split("=", 1)[0] in ("session", "__Host-session"):
            return pair
    return current


# --- sessions ----------------------------------------------------------------------------------------

async def new_session(port):
    """A browser that loaded the page once: its session cookie and CSRF token."""
    conn = await Conn.open(port)
    try:
        status, headers, cookies, body = await conn.request("GET", "/", ["Connection: close"])
    finally:
        conn.close()
    match = CSRF.search(body)
    if status != 200 or not match:
        raise HTTPError(f"GET / answered {status}")
    return {"cookie": cookie_of(cookies, None), "token": match.group(1).decode()}


async def new_sessions(port, n, concurrency=16):
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            return await new_session(port)

    return await asyncio.gather(*(one() for _ in range(n)))


def _form(session, **fields):
    fields = {"csrf_token": session["token"], **fields}
    return "&".join(f"{k}={quote(str(v))}" for k, v in fields.items()).encode()


def _app_headers(session, *extra):
    return [f"Cookie: {session['cookie']}", f"X-CSRFToken: {session['token']}",
            "Content-Type: application/x-www-form-urlencoded", *extra]


# --- one chat of each kind -----------------------------------------------------------------------------

async def nojs_turn(port, session, text):
    """JS off: POST / (the reply is read before the 303), then GET the page it redirects to."""
    started = time.perf_counter()
    conn = await Conn.open(port)
    try:
        status, headers, cookies, _ = await conn.request(
            "POST", "/", _app_headers(session), _form(session, message=text))
        posted = time.perf_counter()
        if status != 303:
            raise HTTPError(f"POST / answered {status}")
        cookie = cookie_of(cookies, session["cookie"])  # the id is issued anew at a first send
        path = urlsplit(headers["location"]).path
        status, _, _, page = await conn.request("GET", path, [f"Cookie: {cookie}", "Connection: close"])
        if status != 200 or b'data-role="assistant"' not in page:
            raise HTTPError(f"GET {path} answered {status}")
    finally:
        conn.close()
    return {"post_s": posted - started, "get_s": time.perf_counter() - posted}


async def streamed_turn(port, session, text):
    """JS on: POST /turns and read the SSE to its `done` event; every delta's lag and count (by the
    upstream's deltas in the text, however many events carried them)."""
    conn = await Conn.open(port)
    lags = []
    try:
        await conn.send("POST", "/turns", _app_headers(session, "Accept: text/event-stream",
                                                       "Connection: close"),
                        _form(session, message=text))
        status, headers, _ = await conn.head()
        if status != 200:
            raise HTTPError(f"POST /turns answered {status}")
        async for kind, data, now in sse(conn, headers):
            if kind == "delta":
                lags.extend(_lags(json.loads(data), now))
            elif kind == "error":
                raise HTTPError(f"stream error: {data[:200]}")
            elif kind == "done":
                return {"lags": lags}
        raise HTTPError("stream ended without done")
    finally:
        conn.close()


async def direct_turn(port, path, body, api_key):
    """The identical upstream request, straight to the fake: the JSON reply, or the SSE to its end."""
    conn = await Conn.open(port)
    lags = []
    try:
        await conn.send("POST", path, [f"Authorization: Bearer {api_key}",
                                       "Content-Type: application/json", "Connection: close"], body)
        status, headers, _ = await conn.head()
        if status != 200:
            raise HTTPError(f"upstream answered {status}")
        if not headers.get("content-type", "").startswith("text/event-stream"):
            json.loads(await conn.body(headers))
            return {}
        async for _, data, now in sse(conn, headers):
            if data == "[DONE]":
                continue
            event = json.loads(data)
            if event["type"] == "response.output_text.delta":
                lags.extend(_lags(event["delta"], now))
            elif event["type"] in ("response.completed", "response.failed", "response.incomplete"):
                return {"lags": lags}
        raise HTTPError("upstream stream ended without response.completed")
    finally:
        conn.close()


def _lags(delta, now):
    """Seconds since the upstream sent each delta in this text: the `ticks` upstream's deltas are its
    send times, and the app may send several adjacent deltas as one event when its listener fell
    behind, so one event can carry several. [None] for any other text (counted, not timed)."""
    try:
        return [now - float(tick) for tick in delta.split()] or [None]
    except ValueError:
        return [None]


async def gradio_turn(port, text):
    """Gradio's REST API: POST /gradio_api/call/chat, then its SSE to `complete`."""
    conn = await Conn.open(port)
    try:
        status, _, _, body = await conn.request(
            "POST", "/gradio_api/call/chat", ["Content-Type: application/json"],
            json.dumps({"data": [text]}).encode())
        if status != 200:
            raise HTTPError(f"gradio answered {status}")
        event_id = json.loads(body)["event_id"]
        await conn.send("GET", f"/gradio_api/call/chat/{event_id}", ["Connection: close"])
        status, headers, _ = await conn.head()
        if status != 200:
            raise HTTPError(f"gradio stream answered {status}")
        async for kind, data, _ in sse(conn, headers):
            if kind == "complete":
                return {"text": json.loads(data)[0]}
            if kind == "error":
                raise HTTPError(f"gradio error: {data[:200]}")
        raise HTTPError("gradio stream ended without complete")
    finally:
        conn.close()


async def _timed(coro):
    started = time.perf_counter()
    result = await coro
    result["s"] = time.perf_counter() - started
    return result


async def _burst(make, n):
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(_timed(make(i)) for i in range(n)), return_exceptions=True)
    return time.perf_counter() - started, outcomes


def burst(make, n):
    """Run `make(i)` for i < n all at once; (wall seconds, [result dict or exception])."""
    return asyncio.run(_burst(make, n))


def sessions(port, n):
    return asyncio.run(new_sessions(port, n))


async def _get_json(port, path):
    conn = await Conn.open(port)
    try:
        _, _, _, body = await conn.request("GET", path, ["Connection: close"])
    finally:
        conn.close()
    return json.loads(body)


def get_json(port, path):
    return asyncio.run(_get_json(port, path))
