"""Two hosts, one Redis: how fast a reply written on one host reaches a page following it on the other.

    python -m bench.hosts [--turns N] [--out DIR]       (about a minute; writes DIR/hosts.md)

Two gunicorns (gunicorn.conf.py, 2 gevent workers each) share one redis-server (SESSION_TYPE=redis):
what two hosts behind a balancer are. The upstream is bench/upstream.py's `ticks` (40 deltas 50 ms
apart, each the time it was sent). For each turn a browser sends on host A (POST /turns, read as the
page reads it) and, once the turn has a name, opens the conversation's reply on host B
(GET /c/<id>/turns/<turn>, as a reload there does): every word B gets after it joined is timed from
just before the upstream wrote it, and so is every word A gets meanwhile, for comparison. Then Stop:
a turn of 200 deltas on A, Stop pressed on B (POST /c/<id>/stop), timed until A's stream ends.
One turn at a time: this is the latency of the path (stream, XREAD, fan-out), not of a loaded host.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import API_KEY, pct, spawn_upstream  # noqa: E402
from tests.serving import Browser, Gunicorn, find_program, free_port  # noqa: E402
from tests.sse import events  # noqa: E402


def _lags(text, now):
    """Seconds since the upstream sent each word of a delta (the `ticks` words are their send times)."""
    return [now - float(word) for word in text.split()]


class Redis:
    def __init__(self, directory):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = find_program("redis-server")
        if not binary:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        import redis

        probe, deadline = redis.Redis.from_url(self.url), time.monotonic() + 10
        while True:
            try:
                probe.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def _start(browser, host, text):
    """POST /turns on `host`; (its events, the `started` data)."""
    response = browser.post(host.url + "/turns", data={"message": text}, stream=True, timeout=60,
                            headers={"Accept": "text/event-stream"})
    stream = events(response)
    for kind, data in stream:
        if kind == "started":
            return stream, data
        if kind in ("error", "done"):
            raise RuntimeError(f"the turn ended before it started: {kind} {data}")
    raise RuntimeError("the stream ended before the turn started")


def one_turn(browser, a, b):
    """(lags on B after it joined, lags on A over the same words) of one turn, in seconds."""
    stream, started = _start(browser, a, "grow")
    on_a, on_b, joined = [], [], []

    def follow():
        response = browser.get(f"{b.url}/c/{started['conversation']}/turns/{started['turn']}", stream=True,
                               timeout=60, headers={"Accept": "text/event-stream"})
        for kind, data in events(response):
            now = time.time()
            if kind == "resumed":
                joined.append(now)
            elif kind == "delta" and joined:
                on_b.extend((float(w), now - float(w)) for w in data.split())
            elif kind in ("done", "error"):
                return

    follower = threading.Thread(target=follow)
    follower.start()
    for kind, data in stream:
        now = time.time()
        if kind == "delta":
            on_a.extend((float(w), now - float(w)) for w in data.split())
        elif kind in ("done", "error"):
            break
    follower.join(60)
    since = joined[0] if joined else float("inf")
    # Only words the upstream sent after B's stream began: earlier ones are its catch-up.
    return [lag for sent, lag in on_b if sent > since], [lag for sent, lag in on_a if sent > since]


def stop_from_b(browser, b_host, a_host):
    """Seconds from B's Stop to the end of A's stream (the turn runs on A)."""
    stream, started = _start(browser, a_host, "stop me")
    seen = 0
    for kind, _ in stream:
        if kind == "delta":
            seen += 1
            if seen == 5:
                break
    pressed = time.monotonic()
    answer = browser.post(f"{b_host.url}/c/{started['conversation']}/stop", data={"turn": started["turn"]},
                          headers={"Accept": "application/json"}, timeout=30)
    answered = time.monotonic() - pressed
    for kind, data in stream:
        if kind in ("done", "error"):
            return answer.status_code, answered, time.monotonic() - pressed, data.get("stopped")
    return answer.status_code, answered, time.monotonic() - pressed, None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="chat-hosts-")
    redis = Redis(workdir)
    upstream, base = spawn_upstream("ticks", "40", "0.05")
    long_up, long_base = spawn_upstream("ticks", "200", "0.05")
    try:
        env = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": base, "SECRET_KEY": "bench",
               "SESSION_TYPE": "redis", "REDIS_URL": redis.url, "RATE_LIMIT_PER_SESSION": "off",
               "RATE_LIMIT_PER_ADDRESS": "off", "GUNICORN_WORKER_CLASS": "gevent"}
        with Gunicorn(env, os.path.join(workdir, "a.log")) as a, Gunicorn(env, os.path.join(workdir, "b.log")) as b:
            browser = Browser()
            browser.post(a.url + "/", data={"message": "warm up"}, timeout=30)  # the session both know
            on_b, on_a = [], []
            for _ in range(args.turns):
                lags_b, lags_a = one_turn(browser, a, b)
                on_b += lags_b
                on_a += lags_a
        long_env = dict(env, OPENROUTER_BASE_URL=long_base)
        stops = []
        with Gunicorn(long_env, os.path.join(workdir, "a2.log")) as a, \
                Gunicorn(long_env, os.path.join(workdir, "b2.log")) as b:
            browser = Browser()
            browser.post(a.url + "/", data={"message": "warm up"}, timeout=60)
            for _ in range(5):
                stops.append(stop_from_b(browser, b, a))
    finally:
        for proc in (upstream, long_up):
            proc.kill()
            proc.wait()
        redis.stop()
    ms = lambda xs, p: pct(sorted(xs), p) * 1000  # noqa: E731
    lines = [
        "# Two hosts, one Redis", "",
        f"`python -m bench.hosts` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        "two gunicorns (2 gevent workers each) sharing one redis-server on loopback; the `ticks` upstream "
        "(40 deltas 50 ms apart). A turn is sent on host A; its conversation's reply is opened on host B "
        "once the turn has a name. Every word is timed from just before the upstream wrote it; only "
        "words sent after B's stream began count (earlier ones are its catch-up).", "",
        "| measure | target | result |", "|---|---|---|",
        f"| a word reaching the page on host B (median, p90, p99; {len(on_b)} words, {args.turns} turns) "
        f"| ≤ 20 ms median | {ms(on_b, 50):.1f}, {ms(on_b, 90):.1f}, {ms(on_b, 99):.1f} ms |",
        f"| the same words reaching the page on host A, which runs the turn (median, p90, p99) |  | "
        f"{ms(on_a, 50):.1f}, {ms(on_a, 90):.1f}, {ms(on_a, 99):.1f} ms |",
        f"| Stop pressed on host B: until A's stream ends, stopped (median, max of {len(stops)}) | ≤ 0.5 s | "
        f"{statistics.median(s[2] for s in stops):.3f}, {max(s[2] for s in stops):.3f} s "
        f"(answers {sorted({s[0] for s in stops})}, stopped: {all(s[3] for s in stops)}) |",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hosts.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
