"""docs/nginx.conf, as documented, in front of the app under gunicorn: streaming, slow clients, JS-off,
limits, forwarded headers, and its HTTPS example.

Each nginx runs the documented file with only its ports, paths and (shorter) timeouts substituted,
wrapped in the few main-context lines a throwaway nginx needs (foreground, files in a tmp dir)."""

import contextlib
import http.server
import os
import re
import socket
import subprocess
import threading
import time
from html import unescape

import pytest
import requests

from tests.conftest import messages
from tests.fake_openrouter import reply
from tests.serving import ROOT, Gunicorn, free_port, require_program, served_env, stop_process
from tests.sse import events, until

pytestmark = pytest.mark.nginx

DOC = os.path.join(ROOT, "docs", "nginx.conf")
TIMEOUT = 2  # the tests' client_header_timeout and client_body_timeout (the document says 10s)

WRAPPER = """\
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/default-access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {site};
}}
"""


def substitute(text, old, new, count=1):
    """Replace `old` in the documented config, failing if the document no longer says it."""
    found = text.count(old)
    assert found == count, f"docs/nginx.conf should contain {old!r} {count}× (found {found}×)"
    return text.replace(old, new)


def documented(https=False):
    """docs/nginx.conf as nginx reads it: the plain-HTTP site, or (https=True) the same http-level lines
    with the commented HTTPS example in place of the plain server, its placeholder filled in as told."""
    with open(DOC) as f:
        doc = f.read()
    live = re.sub(r"(?m)^\s*#.*\n", "", doc)
    if not https:
        return live
    prelude, plain = live.split("\nserver {\n")
    body = plain[plain.index("    client_header_timeout"):plain.rstrip().rindex("}")]
    example = doc[doc.index("# HTTPS"):]
    example = re.sub(r"(?m)^# ?", "", example[example.index("# server {"):])
    placeholder = ("    (here every line of the plain-HTTP server above from client_header_timeout on, "
                   "unchanged)\n")
    return prelude + "\n" + substitute(example, placeholder, body)


def site_config(directory, port, app_port, limit=None, as_documented=False, tls=None):
    """docs/nginx.conf with test ports, paths and timeouts. `tls`: (https port, cert, key) to run
    the HTTPS example instead, its redirecting plain-HTTP server on `port`."""
    text = documented(https=bool(tls))
    log = "/var/log/nginx/chat.access.log"
    text = substitute(text, log, f"{directory}/chat-access.log", count=2 if tls else 1)
    if as_documented:
        return text
    text = substitute(text, "listen 80;\n    listen [::]:80;\n", f"listen 127.0.0.1:{port};\n")
    if tls:
        tls_port, cert, key = tls
        text = substitute(text, "listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n",
                          f"listen 127.0.0.1:{tls_port} ssl http2;\n")
        text = substitute(text, "/etc/letsencrypt/live/chat.example.org/fullchain.pem", cert)
        text = substitute(text, "/etc/letsencrypt/live/chat.example.org/privkey.pem", key)
    text = substitute(text, "http://127.0.0.1:8000;", f"http://127.0.0.1:{app_port};", count=2)
    text = substitute(text, "client_header_timeout 10s;", f"client_header_timeout {TIMEOUT}s;")
    text = substitute(text, "client_body_timeout 10s;", f"client_body_timeout {TIMEOUT}s;")
    if limit:
        text = substitute(text, "limit_conn chat_per_ip 50;", f"limit_conn chat_per_ip {limit};")
    return text


def write_config(directory, site):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "chat.conf"), "w") as f:
        f.write(site)
    # Started as root, nginx's workers would switch to `nobody`, who cannot write the tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w") as f:
        f.write(WRAPPER.format(user=user, dir=directory, site=os.path.join(directory, "chat.conf")))
    return path


class Nginx:
    """nginx in the foreground on a free port, proxying to `app_port` with docs/nginx.conf."""

    def __init__(self, binary, directory, app_port, tls=None, **options):
        self.binary, self.dir = binary, str(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if tls:  # (cert, key): the HTTPS example, on a second port
            self.tls_port = free_port()
            self.https_url = f"https://127.0.0.1:{self.tls_port}"
            tls = (self.tls_port, *tls)
        self.conf = write_config(self.dir, site_config(self.dir, self.port, app_port, tls=tls, **options))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-p", self.dir, "-e", f"{self.dir}/error.log",
                                      "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {self.errors()}")

    def stop(self):
        stop_process(self.proc)

    def errors(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def access_log(self):
        with open(os.path.join(self.dir, "chat-access.log")) as f:
            return f.read()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="module")
def nginx_binary():
    return require_program("nginx", "nginx-light")


@pytest.fixture(scope="module")
def app_server(nginx_binary, fake_server, tmp_path_factory):
    """The app as deployed behind nginx: gunicorn on loopback, trusting one proxy's X-Forwarded-*."""
    path = tmp_path_factory.mktemp("behind-nginx")
    env = served_env(fake_server, path, "nginx-test", TRUSTED_PROXIES="1")
    with Gunicorn(env, path / "gunicorn.log") as running:
        yield running


@pytest.fixture(scope="module")
def proxy(nginx_binary, app_server, tmp_path_factory):
    with Nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), app_server.port) as running:
        yield running


class Browser(requests.Session):
    """A browser on one origin: sends its Origin, and the page's CSRF token when it has one."""

    def __init__(self, origin):
        super().__init__()
        self.origin = origin
        self.headers["Origin"] = origin

    def refresh_token(self):
        page = self.get(self.origin + "/", timeout=10)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf_token"[^>]*value="([^"]*)"', page.text)
        if found:
            self.headers["X-CSRFToken"] = unescape(found.group(1))
        return page

    def post_form(self, path, fields, **kwargs):
        token = self.headers.get("X-CSRFToken")
        data = dict(fields, csrf_token=token) if token else fields
        return self.post(self.origin + path, data=data, timeout=kwargs.pop("timeout", 30), **kwargs)


def start_turn(browser, text, cid="new"):
    """Send `text` as the page does: to /c/<cid>/turns (/c/new/turns starts a conversation)."""
    response = browser.post_form(f"/c/{cid}/turns", {"message": text}, stream=True,
                                 headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip"})
    return streamed(response)


def streamed(response):
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in response.headers  # gzip would hold the deltas back
    return response


def wait_for_text(read, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read()
        if text in found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {read()!r}")


# --- streaming ------------------------------------------------------------------------------------

def test_a_reply_streams_through_nginx_on_the_pages_own_paths(proxy, fake):
    """A first send to /c/new/turns, a reload's GET /c/<id>/turns/<turn>, the next send to
    /c/<id>/turns: each delta reaches the browser while the upstream still holds the rest."""
    gate = threading.Event()
    fake.queue(reply("Hello there, streaming world", gate=gate,
                     chunks=["Hello", " there,", " streaming world"]))
    browser = Browser(proxy.url)
    browser.refresh_token()
    stream = events(start_turn(browser, "hi"))
    started, _ = until("started", stream)
    cid, turn = started["conversation"], started["turn"]
    first, _ = until("delta", stream)
    assert first == "Hello" and not gate.is_set()  # nginx passed it on while the fake holds the rest
    # A reload picks the reply up where the page found it (from this worker's relay or the store)
    resumed = events(streamed(browser.get(f"{proxy.url}/c/{cid}/turns/{turn}", stream=True,
                                          headers={"Accept": "text/event-stream"}, timeout=30)))
    again, _ = until("delta", resumed)
    assert again.startswith("Hello") and not gate.is_set()
    gate.set()
    done, seen = until("done", stream)
    assert "".join(d for k, d in seen if k == "delta") == " there, streaming world"
    assert "Hello there, streaming world" in done["html"]
    _, seen = until("done", resumed)
    assert again + "".join(d for k, d in seen if k == "delta") == "Hello there, streaming world"

    second = threading.Event()
    fake.queue(reply("A second answer", gate=second, chunks=["A second", " answer"]))
    stream = events(start_turn(browser, "and again", cid=cid))
    started, _ = until("started", stream)
    assert started["conversation"] == cid
    first, _ = until("delta", stream)
    assert first == "A second" and not second.is_set()
    second.set()
    until("done", stream)
    page = browser.get(f"{proxy.url}/c/{cid}", timeout=10)
    assert messages(page.text) == [("user", "hi"), ("assistant", "Hello there, streaming world"),
                                   ("user", "and again"), ("assistant", "A second answer")]


def test_nginx_logs_the_streaming_paths_without_conversation_or_turn_ids(proxy, fake):
    gate = threading.Event()
    fake.queue(reply("Logged but not its ids", gate=gate, chunks=["Logged", " but not its ids"]))
    browser = Browser(proxy.url)
    browser.refresh_token()
    before = len(proxy.access_log())
    stream = events(start_turn(browser, "log me"))
    started, _ = until("started", stream)
    cid, turn = started["conversation"], started["turn"]
    until("delta", stream)
    resumed = browser.get(f"{proxy.url}/c/{cid}/turns/{turn}", stream=True, timeout=30)
    gate.set()
    until("done", stream)
    until("done", events(streamed(resumed)))
    fake.queue(reply("Once more"))
    until("done", events(start_turn(browser, "once more", cid=cid)))
    browser.get(f"{proxy.url}/c/{cid}?edit=1&c={cid}", timeout=10)  # an id in the query string
    browser.get(f"{proxy.url}/c/{cid}/export.md", timeout=10)
    log = wait_for_text(lambda: proxy.access_log()[before:], '"GET /c/.../export.md HTTP/1.1" 200')
    assert log.count('"POST /c/.../turns HTTP/1.1" 200') >= 2  # /c/new/turns, then /c/<id>/turns
    assert '"GET /c/.../turns/... HTTP/1.1" 200' in log
    assert '"GET /c/... HTTP/1.1" 200' in log  # the path only: no query string
    assert cid not in log and turn not in log


class Streamer(http.server.BaseHTTPRequestHandler):
    """An upstream that streams like the app's turns, but without the app's X-Accel-Buffering header:
    one event at once, the next when the test sets `release`."""
    release = threading.Event()

    def respond(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(b'event: delta\ndata: "first"\n\n')
        self.wfile.flush()
        Streamer.release.wait(10)
        self.wfile.write(b'event: done\ndata: "rest"\n\n')

    do_GET = do_POST = respond

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def streaming_upstream(nginx_binary, tmp_path_factory):
    """nginx with docs/nginx.conf in front of a Streamer."""
    with upstream_server(Streamer) as port, \
            Nginx(nginx_binary, tmp_path_factory.mktemp("streamer"), port) as front:
        yield front


def read_until(sock, seconds, marker=None):
    """What `sock` gives within `seconds`: until `marker` shows, or it is closed."""
    data = b""
    deadline = time.monotonic() + seconds
    while (marker is None or marker not in data) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("method, path, streams", [
    ("POST", "/c/new/turns", True),            # a page's first send
    ("POST", "/c/abc123/turns", True),         # every later one
    ("GET", "/c/abc123/turns/xyz789", True),   # a reload picking a reply up
    ("POST", "/turns", True),                  # the same, on the browser's latest conversation
    ("GET", "/turns/xyz789", True),
    ("GET", "/c/abc123", False),               # everything else is buffered
    ("GET", "/c/abc123/export.md", False),
    ("GET", "/turnstile", False),
])
def test_nginx_itself_passes_the_streaming_paths_on_as_they_come(streaming_upstream, method, path, streams):
    """Not only because the app says X-Accel-Buffering: no (this upstream does not say it)."""
    Streamer.release = release = threading.Event()
    body = b"message=hi" if method == "POST" else b""
    sock = socket.create_connection(("127.0.0.1", streaming_upstream.port), timeout=10)
    try:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        # A buffered response holds the first event until the upstream ends: give it a second.
        early = read_until(sock, 5 if streams else 1, marker=b'"first"')
        assert (b'"first"' in early) == streams, early
        release.set()
        whole = early + read_until(sock, 10)
    finally:
        release.set()
        sock.close()
    assert whole.startswith(b"HTTP/1.1 200 ") and b'"first"' in whole and b'"rest"' in whole, whole


# --- JS off ---------------------------------------------------------------------------------------

def test_a_js_off_turn_works_through_nginx_and_redirects_back_to_it(proxy, fake):
    fake.queue(reply("An answer without JavaScript"))
    browser = Browser(proxy.url)
    browser.refresh_token()
    response = browser.post_form("/", {"message": "no script here"})
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [303]
    assert response.url.startswith(proxy.url + "/")  # the redirect stays on nginx's address
    assert messages(response.text) == [("user", "no script here"),
                                       ("assistant", "An answer without JavaScript")]


def test_a_body_larger_than_the_apps_limit_is_refused_by_nginx(proxy, app_server, fake):
    browser = Browser(proxy.url)
    response = browser.post(proxy.url + "/too-large-body", data=b"x" * (1024 * 1024 + 1),
                            headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert response.status_code == 413
    assert "/too-large-body" not in app_server.output()  # gunicorn never saw it


# --- slow clients ---------------------------------------------------------------------------------

def held_until_closed(port, first, then=b"", every=None, limit=15.0):
    """Send `first`, then (if `every`) one byte of `then` at a time every `every` s; return the
    seconds until nginx closed the connection and what it answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit)
    started = time.monotonic()
    answer = b""
    try:
        sock.sendall(first)
        sock.settimeout(every or limit)
        for byte in then if every else ():
            try:
                chunk = sock.recv(4096)
                answer += chunk
                if not chunk:
                    break
            except socket.timeout:
                sock.sendall(bytes([byte]))
                continue
        while time.monotonic() - started < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return time.monotonic() - started, answer


@pytest.mark.parametrize("how", ["stalls", "trickles"])
def test_a_client_slow_to_send_its_headers_is_cut_off_after_client_header_timeout(proxy, app_server, how):
    partial = b"GET /slow-headers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    # "trickles": one more header byte every half second (slowloris), which must not reset the clock.
    elapsed, answer = held_until_closed(proxy.port, partial, b"X-Slow: " + b"a" * 40,
                                        every=0.5 if how == "trickles" else None)
    assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 3, elapsed
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert "/slow-headers" not in app_server.output()
    # nginx is still serving everyone else
    assert requests.get(proxy.url + "/static/app.css", timeout=5).status_code == 200


def test_a_client_slow_to_send_its_body_is_cut_off_after_client_body_timeout(proxy, app_server):
    head = (b"POST /slow-body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: 100\r\n\r\nmessage=hi")
    elapsed, answer = held_until_closed(proxy.port, head)
    assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 3, elapsed
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert "/slow-body" not in app_server.output()  # the request never reached gunicorn


# --- connections per address ----------------------------------------------------------------------

def test_connections_per_address_are_limited(nginx_binary, app_server, fake, tmp_path):
    gate = threading.Event()
    fake.queue(reply("first held", gate=gate, chunks=["first", " held"]),
               reply("second held", gate=gate, chunks=["second", " held"]))
    with Nginx(nginx_binary, tmp_path / "limited", app_server.port, limit=2) as limited:
        streams = []
        try:
            for _ in range(2):  # two tabs, each holding a connection while its reply streams
                browser = Browser(limited.url)
                browser.refresh_token()
                stream = events(start_turn(browser, "hold on"))
                until("delta", stream)
                streams.append(stream)
            assert requests.get(limited.url + "/static/app.css", timeout=5).status_code == 429
        finally:
            gate.set()
        for stream in streams:
            until("done", stream)
        assert requests.get(limited.url + "/static/app.css", timeout=5).status_code == 200


# --- what the app is told -------------------------------------------------------------------------

class Recorder(http.server.BaseHTTPRequestHandler):
    seen = []

    def do_GET(self):
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def upstream_server(handler):
    """`handler` served on a free loopback port (yielded) in a thread, until the block ends."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield upstream.server_address[1]
    finally:
        upstream.shutdown()
        upstream.server_close()


@pytest.fixture(scope="module")
def recorded(nginx_binary, tmp_path_factory):
    """nginx with docs/nginx.conf in front of a Recorder."""
    with upstream_server(Recorder) as port, \
            Nginx(nginx_binary, tmp_path_factory.mktemp("recorded"), port) as front:
        yield front


@pytest.mark.parametrize("target, logged", [
    # as tests/test_accesslog.py masks them in gunicorn's log, with ASCII dots
    ("/turns/abc123", "/turns/..."),
    ("/turns/abc123/", "/turns/..."),
    ("/turns/a/b/c", "/turns/..."),
    ("/turns", "/turns"),
    ("/turns/", "/turns/"),
    ("/", "/"),
    ("/static/app.css", "/static/app.css"),
    ("/c/abc123", "/c/..."),
    ("/c/abc123/turns/xyz", "/c/.../turns/..."),
    ("/c/abc123/export.md", "/c/.../export.md"),
    ("/c/", "/c/"),
    ("/returns/abc", "/returns/abc"),
    ("/turnsX/abc", "/turnsX/abc"),
    # nginx logs the path it matched, without the query string: decoded, slashes merged, dots resolved
    ("/c/abc123?edit=1&c=abc123", "/c/..."),
    ("//turns//abc123", "/turns/..."),
    ("/%63/abc123/%74urns/xyz", "/c/.../turns/..."),
    ("/static/../c/abc123", "/c/..."),
    ("/turns/ab%0aINJECTED", "/turns/..."),
    ("/x%0aINJECTED%22%C3%A9", "/x\\x0AINJECTED\\x22\\xC3\\xA9"),  # and escaped, as before
])
def test_the_access_log_masks_ids_as_gunicorns_log_does(recorded, target, logged):
    before = recorded.access_log().count("\n")
    elapsed, answer = held_until_closed(recorded.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                       "Connection: close\r\n\r\n".encode(), limit=5)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert wait_for_text(lambda: "".join(recorded.access_log().splitlines(True)[before:]), "\n")
    line = recorded.access_log().splitlines()[before]
    assert f'"GET {logged} HTTP/1.1" 200 ' in line, line


def test_nginx_tells_the_app_the_real_client_scheme_and_host(nginx_binary, tmp_path):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with Nginx(nginx_binary, tmp_path / "headers", upstream.server_address[1]) as front:
            spoofed = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                       "X-Forwarded-Host": "evil.example"}
            assert requests.get(front.url + "/", headers=spoofed, timeout=5).text == "ok"
    finally:
        upstream.shutdown()
        upstream.server_close()
    headers = Recorder.seen[-1]
    host = f"127.0.0.1:{front.port}"
    # What the client claimed is replaced, not appended to: ProxyFix (TRUSTED_PROXIES=1) reads these.
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["Host"] == headers["X-Forwarded-Host"] == host


def test_the_documented_file_passes_nginx_t_as_it_stands(nginx_binary, tmp_path):
    """Unchanged but for the log path: listen 80 and [::]:80, port 8000, 10s timeouts."""
    conf = write_config(str(tmp_path), site_config(str(tmp_path), 0, 0, as_documented=True))
    result = subprocess.run([nginx_binary, "-t", "-p", str(tmp_path), "-e", f"{tmp_path}/error.log",
                             "-c", conf], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- the HTTPS example ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def https_proxy(nginx_binary, fake_server, tmp_path_factory):
    """The HTTPS example of docs/nginx.conf, with a self-signed certificate for 127.0.0.1, in front
    of the app as documented for it: SESSION_COOKIE_SECURE=true, TRUSTED_PROXIES=1."""
    openssl = require_program("openssl", "openssl")
    path = tmp_path_factory.mktemp("https")
    cert, key = str(path / "cert.pem"), str(path / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    env = served_env(fake_server, path, "nginx-https-test", TRUSTED_PROXIES="1", SESSION_COOKIE_SECURE="true")
    with Gunicorn(env, path / "gunicorn.log") as app, \
            Nginx(nginx_binary, path / "nginx", app.port, tls=(cert, key)) as front:
        yield front, cert


def test_the_https_example_serves_the_app_with_its_secure_cookie_and_checks(https_proxy, fake):
    front, cert = https_proxy
    plain = requests.get(front.url + "/some/page?x=1", allow_redirects=False, timeout=5)
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://127.0.0.1/some/page?x=1"  # $host: no port
    # The redirect logs to the chat log too, ids masked (the http-level default log keeps them whole)
    requests.get(front.url + "/c/plain-conversation-id", allow_redirects=False, timeout=5)
    log = wait_for_text(front.access_log, '"GET /c/... HTTP/1.1" 301 ')
    assert "plain-conversation-id" not in log and '"GET /some/page HTTP/1.1" 301 ' in log

    browser = Browser(front.https_url)
    browser.verify = cert
    browser.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, would replace `verify`
    # A browser sends its page as Referer (the app's Referrer-Policy is same-origin); Flask-WTF
    # checks it on HTTPS, which the app only knows from X-Forwarded-Proto.
    browser.headers["Referer"] = front.https_url + "/"
    page = browser.refresh_token()
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert all(c.secure for c in browser.cookies)
    fake.queue(reply("Over TLS"))
    response = browser.post_form("/", {"message": "secure hello"})
    assert response.status_code == 200 and [r.status_code for r in response.history] == [303], response.text
    assert response.url.startswith(front.https_url + "/")
    assert messages(response.text)[-2:] == [("user", "secure hello"), ("assistant", "Over TLS")]

    gate = threading.Event()
    fake.queue(reply("streamed over TLS", gate=gate, chunks=["streamed", " over TLS"]))
    stream = events(start_turn(browser, "stream it"))
    first, _ = until("delta", stream)
    assert first == "streamed" and not gate.is_set()
    gate.set()
    until("done", stream)
