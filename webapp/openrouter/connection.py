"""Cancellable connections: each request's socket is handed to its turn's `StreamState` the moment it
exists, so Stop can cut a request in any phase (connecting, waiting for headers, thinking, streaming)."""

import select
import socket
import ssl
import threading
from dataclasses import dataclass, field

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..textsofar import TextSoFar


@dataclass
class StreamState:
    """What a reply has delivered so far, and the handle that cancels it. The caller keeps it, so a
    failure mid-stream keeps the text, and another thread can `cancel()` the request in any phase."""

    item_id: str | None = None
    _text: object = field(default_factory=TextSoFar, repr=False)  # the reply's words so far (`text`)
    annotations: list = field(default_factory=list)  # the reply's citations, as they streamed
    cancelled: bool = False
    _conn: object = field(default=None, repr=False)  # the urllib3 connection carrying this request
    _lock: object = field(default_factory=threading.Lock, repr=False)

    @property
    def text(self):
        return str(self._text)

    @text.setter
    def text(self, value):
        self._text = TextSoFar(value)

    def add_text(self, delta):
        """The reader's way to add words (the progress saver reads `text` meanwhile)."""
        self._text.add(delta)

    def attach(self, conn):
        """Called by the connection as soon as its socket exists (see `_CancellableConnection`)."""
        with self._lock:
            if self.cancelled:
                raise ConnectionAbortedError("the turn was stopped")
            self._conn = conn
            conn.chat_owner = self

    def ready(self, raw):
        """Whether more of this reply has already arrived (in http.client's buffer, in TLS, on the
        socket): reading it now does not wait. Never waits, never takes bytes off the stream. In
        any doubt, False: the caller then writes out what it holds before it reads."""
        try:
            return _ready(_socket(self._conn, raw), raw)
        except Exception:
            return False

    def arrives(self, raw, timeout):
        """Whether more of this reply arrives within `timeout` seconds (asked once `ready` said
        no). Lets whoever reads the reply do something else while the model pauses (a rendering,
        a keep-alive) and then read on, nothing lost. In any doubt, True: the caller just reads
        (and waits there)."""
        try:
            return _arrives(_socket(self._conn, raw), timeout)
        except Exception:
            return True

    def finish(self, raw, pieces):
        """After the reply's terminal event: read the rest of the body's `pieces` (OpenRouter's
        `[DONE]`, the chunked body's end) when it has already arrived, so the connection goes back
        to the pool and the next turn skips the DNS lookup and the TCP and TLS handshakes. Never waits: an end
        still on its way just means the connection is closed, as before. Detached first, so a late
        Stop cannot cut the connection once another turn has it."""
        with self._lock:
            conn, self._conn = self._conn, None
        try:
            for _ in range(4):  # `[DONE]`, then the last chunk: one or two reads
                if not _ready(conn.sock, raw) or not next(pieces, b""):
                    return
        except Exception:
            pass  # closed with the response, as before

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


def _socket(conn, raw):
    """The socket a reply comes on: its connection's, or, for a body that ends when the connection
    closes (no length, not chunked: http.client hands the socket to the response), the response's."""
    if conn is not None and conn.sock is not None:
        return conn.sock
    return raw._fp.fp.raw._sock  # http.client's reader, over the socket's SocketIO


def _ready(sock, raw):
    """StreamState.ready for the socket `sock` under the urllib3 response `raw`."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    reader = raw._fp.fp  # http.client's buffered reader over the socket
    saved = sock.gettimeout()
    sock.settimeout(0)  # so a peek with nothing buffered asks the socket once, without waiting
    try:
        try:
            buffered = reader.peek(3)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False  # nothing buffered, nothing on the socket
        # Whatever is buffered is more of the reply: a chunked body is read chunk by chunk with each
        # chunk's closing line break (`body_pieces`), so no framing is left behind in the buffer.
        return bool(buffered)  # (empty: the socket's reader says nothing has arrived)
    finally:
        sock.settimeout(saved)


def _arrives(sock, timeout):
    """StreamState.arrives for the socket `sock`: data, or the end of the stream, within `timeout`."""
    if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS: whether bytes are on the way
        return bool(select.select([sock], [], [], timeout)[0])
    # gevent's socket (the default worker): wait on the socket's own watcher, as its recv does once
    # the socket has said "nothing yet" (`ready` has just asked it), with no call that returns
    # nothing. Elsewhere a peek that waits: it leaves the bytes for the real read.
    wait = getattr(sock, "_wait", None) if timeout else None
    saved = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        if wait is not None:
            wait(sock._read_event)
        else:
            sock.recv(1, socket.MSG_PEEK)
    except (TimeoutError, BlockingIOError):
        return False
    finally:
        sock.settimeout(saved)
    return True


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
