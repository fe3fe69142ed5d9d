"""The benchmark suite: `python -m bench.run` (or ./bench.sh, which installs what it needs first).

Starts fake upstreams on loopback and the app under gunicorn with its production config
(gunicorn.conf.py), measures everything side by side in one run, and writes results.md, results.json
and PNG charts: a full run refreshes the committed docs/bench/, a --quick smoke run writes the
git-ignored build/bench/ (--out picks another directory). Ratios, not absolute times, are the verdicts:
these machines are noisy.
Bounded: every loop has a fixed count, the whole run takes a few minutes on 2 cores.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fake_openrouter import FakeOpenRouter  # noqa: E402
from tests.serving import Gunicorn, find_program, free_port  # noqa: E402

FULL_OUT = os.path.join(ROOT, "docs", "bench")  # committed: only a full run writes here
QUICK_OUT = os.path.join(ROOT, "build", "bench")  # git-ignored: smoke runs


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def app_env(base_url, workdir, **extra):
    return {"OPENROUTER_API_KEY": "sk-or-v1-test-0123456789abcdef", "OPENROUTER_BASE_URL": base_url,
            "SECRET_KEY": "bench", "SESSION_DIR": os.path.join(workdir, "sessions"), **extra}


def spawn_upstream(*args):
    proc = subprocess.Popen([sys.executable, "-m", "bench.upstream", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def turn(browser, url, text, **fields):
    started = time.perf_counter()
    response = browser.post(url + "/", data={"message": text, **fields}, allow_redirects=False,
                            timeout=120)
    elapsed = time.perf_counter() - started
    if response.status_code != 303:
        raise RuntimeError(f"turn failed: {response.status_code}")
    return elapsed


# --- 1, 2: overhead per non-streamed turn against history length ------------------------------------

def overhead(fake, server, sizes=(1, 50, 200), samples=40):
    """Alternate a turn through the app with the identical request sent straight to the fake."""
    results = {}
    direct = requests.Session()
    headers = {"Authorization": f"Bearer {fake.api_key}", "Content-Type": "application/json"}
    for size in sizes:
        browser = requests.Session()
        for i in range(size):  # build the history through the app itself
            turn(browser, server.url, f"building turn {i}")
        app_times, direct_times = [], []
        for i in range(samples):
            # Regenerate replaces the last turn, so every sample sends exactly `size` turns; it names
            # the reply it replaces, read from the page (untimed) as a browser would have it.
            last = re.search(r'name="regenerate" value="([^"]+)"', browser.get(server.url + "/").text)
            app_times.append(turn(browser, server.url, "", regenerate=last.group(1)))
            body = json.dumps(fake.requests[-1]["body"])
            started = time.perf_counter()
            response = direct.post(fake.base_url + "/responses", data=body, headers=headers)
            direct_times.append(time.perf_counter() - started)
            assert response.status_code == 200
        results[size] = {"app_ms": median(app_times) * 1000, "direct_ms": median(direct_times) * 1000}
        results[size]["overhead_ms"] = results[size]["app_ms"] - results[size]["direct_ms"]
        results[size]["ratio"] = results[size]["app_ms"] / results[size]["direct_ms"]
    return results


# --- 3: concurrent chats in flight -----------------------------------------------------------------

def rss_mb(pid):
    total = 0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def cpu_seconds(pid):
    """User+system CPU of the gunicorn master and its workers so far."""
    total = 0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


async def _raw_turn(port, i):
    """One new browser's first turn as raw HTTP on its own connection. An asyncio client costs
    microseconds per request, so the load generator does not steal the 2 cores from the app."""
    import asyncio

    body = f"message=chat+{i}".encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    status = await reader.readline()
    await reader.read()
    writer.close()
    if b" 303 " not in status:
        raise RuntimeError(status.decode(errors="replace"))
    return time.perf_counter() - started


async def _burst(port, n):
    import asyncio

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(_raw_turn(port, i) for i in range(n)), return_exceptions=True)
    return time.perf_counter() - started, outcomes


def concurrency(workdir, levels=(100, 300, 1000), delay=2.0, **extra_env):
    import asyncio

    upstream, base = spawn_upstream("fake", str(delay))
    results = {}
    try:
        env = app_env(base, workdir, **extra_env)
        with Gunicorn(env, os.path.join(workdir, "conc.log"), workers=None) as server:
            for n in levels:
                peak = [0.0]
                done = threading.Event()

                def sample():
                    while not done.is_set():
                        peak[0] = max(peak[0], rss_mb(server.proc.pid))
                        time.sleep(0.2)

                sampler = threading.Thread(target=sample)
                sampler.start()
                cpu = cpu_seconds(server.proc.pid)
                wall, outcomes = asyncio.run(_burst(server.port, n))
                cpu = cpu_seconds(server.proc.pid) - cpu
                done.set()
                sampler.join()
                times = [o for o in outcomes if isinstance(o, float)]
                results[n] = {"wall_s": wall, "per_s": len(times) / wall, "ideal_per_s": n / delay,
                              "of_ideal": (len(times) / wall) / (n / delay), "errors": n - len(times),
                              "p50_s": median(times), "p99_s": pct(times, 99), "rss_mb": peak[0],
                              "app_cpu_ms_per_turn": cpu / n * 1000}
                time.sleep(1)
    finally:
        upstream.kill()
    return results


# --- 4: streamed delta forwarding ------------------------------------------------------------------

NGINX_CONF = """
daemon off; master_process off; worker_processes 1; user root;
pid {dir}/nginx.pid; error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{app};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_read_timeout 360s;
      proxy_buffering off;
      gzip off;
    }}
  }}
}}
"""


def stream_latencies(url, turns=5):
    lags = []
    for i in range(turns):
        browser = requests.Session()
        response = browser.post(url + "/turns", data={"message": f"tick {i}"}, stream=True, timeout=60)
        kind = None
        for line in response.iter_lines(chunk_size=1, decode_unicode=True):
            now = time.time()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "delta":
                lags.append(now - float(json.loads(line[6:]).split()[0]))
            elif line.startswith("data: ") and kind in ("done", "error"):
                break
        response.close()
    return lags


def deltas(workdir):
    upstream, base = spawn_upstream("ticks")
    results = {}
    try:
        with Gunicorn(app_env(base, workdir), os.path.join(workdir, "ticks.log")) as server:
            results["gunicorn"] = stream_latencies(server.url)
            nginx = find_program("nginx")
            if not nginx:
                print("nginx is not installed (apt-get install nginx-light): "
                      "delta forwarding is measured through gunicorn only", flush=True)
            else:
                port = free_port()
                ndir = os.path.join(workdir, "nginx")
                os.makedirs(ndir, exist_ok=True)
                with open(os.path.join(ndir, "nginx.conf"), "w") as f:
                    f.write(NGINX_CONF.format(dir=ndir, port=port, app=server.port))
                proc = subprocess.Popen([nginx, "-c", os.path.join(ndir, "nginx.conf"), "-p", ndir])
                try:
                    for _ in range(50):
                        try:
                            requests.get(f"http://127.0.0.1:{port}/static/app.css", timeout=1)
                            break
                        except requests.ConnectionError:
                            time.sleep(0.1)
                    results["nginx"] = stream_latencies(f"http://127.0.0.1:{port}")
                finally:
                    proc.terminate()
                    proc.wait()
    finally:
        upstream.kill()
    return {k: {"median_ms": median(v) * 1000, "p99_ms": pct(v, 99) * 1000, "n": len(v)}
            for k, v in results.items()}, results


# --- 5: page weight --------------------------------------------------------------------------------

def page_weight(server, turns=20):
    browser = requests.Session()
    for i in range(turns):
        turn(browser, server.url, f"Question {i}: how do I write a loop in Python?")
    html = browser.get(server.url + "/")
    total = len(html.content)
    for asset in ("app.css", "code.css", "app.js"):
        total += len(requests.get(f"{server.url}/static/{asset}").content)
    return {"html": len(html.content), "total": total}


# --- 6: a crowded store ----------------------------------------------------------------------------

def crowded(fake, workdir, others=10_000, samples=60):
    """Two apps side by side, one with an empty store, one with `others` browsers' sessions and
    conversations in it; their turns alternate so machine noise hits both alike."""
    from cachelib.file import FileSystemCache

    from webapp import conversation
    from webapp.store import FileBackend, Store

    quiet_env = app_env(fake.base_url, os.path.join(workdir, "quiet"))
    crowd_env = app_env(fake.base_url, os.path.join(workdir, "crowd"))
    cache = FileSystemCache(crowd_env["SESSION_DIR"], threshold=0)
    store = Store(FileBackend(cache, os.path.join(crowd_env["SESSION_DIR"], "locks")), 86400)
    for i in range(others):
        conv = conversation.new()
        conversation.add_turn(conv, f"hello {i}", "msg_other", "completed", "hi there")
        cache.set(f"session:other{i}", {"cid": f"other{i}"}, timeout=86400)
        store.save(f"other{i}", conv)
    with Gunicorn(quiet_env, os.path.join(workdir, "quiet.log")) as quiet, \
            Gunicorn(crowd_env, os.path.join(workdir, "crowd.log")) as crowd:
        a, b = requests.Session(), requests.Session()
        turn(a, quiet.url, "warm up")
        turn(b, crowd.url, "warm up")
        alone, crowded_ = [], []
        for i in range(samples):
            alone.append(turn(a, quiet.url, f"turn {i}"))
            crowded_.append(turn(b, crowd.url, f"turn {i}"))
    return {"alone_ms": median(alone) * 1000, "crowded_ms": median(crowded_) * 1000,
            "ratio": median(crowded_) / median(alone), "others": others}


# --- report ----------------------------------------------------------------------------------------

def verdict(ok):
    return "met" if ok else "**missed**"


def charts(out, over, conc, lags):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    sizes = sorted(over)
    ax.plot(sizes, [over[s]["app_ms"] for s in sizes], "o-", label="through the app")
    ax.plot(sizes, [over[s]["direct_ms"] for s in sizes], "o-", label="straight to the fake upstream")
    ax.set(xlabel="turns of history", ylabel="median turn time (ms)", title="Per-turn time vs history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "overhead.png"), dpi=100)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    levels = sorted(conc)
    ax.bar([str(n) for n in levels], [conc[n]["of_ideal"] * 100 for n in levels])
    ax.axhline(90, color="red", linestyle="--", label="target 90 %")
    ax.set_ylim(0, 105)
    ax.set(xlabel="chats in flight (2 s upstream)", ylabel="% of ideal throughput",
           title="Concurrent chats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "concurrency.png"), dpi=100)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in lags.items():
        ax.hist([v * 1000 for v in values], bins=30, alpha=0.6, label=name)
    ax.set(xlabel="upstream sent → browser received (ms)", ylabel="deltas",
           title="Streamed delta forwarding")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "deltas.png"), dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"smaller counts, for a smoke run; writes {os.path.relpath(QUICK_OUT, ROOT)}/")
    parser.add_argument("--out", help=f"where to write the results (default: {os.path.relpath(FULL_OUT, ROOT)}/"
                                      f", or {os.path.relpath(QUICK_OUT, ROOT)}/ with --quick)")
    args = parser.parse_args()
    out = args.out or (QUICK_OUT if args.quick else FULL_OUT)
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="chat-bench-")
    q = args.quick
    started = time.time()
    with FakeOpenRouter().start() as fake:
        with Gunicorn(app_env(fake.base_url, workdir), os.path.join(workdir, "app.log")) as server:
            print("overhead…", flush=True)
            over = overhead(fake, server, samples=10 if q else 40)
            print("page weight…", flush=True)
            weight = page_weight(server)
        print("crowded store…", flush=True)
        crowd = crowded(fake, workdir, others=1000 if q else 10_000, samples=20 if q else 60)
    print("concurrency…", flush=True)
    conc = concurrency(workdir, levels=(50, 100) if q else (100, 300, 1000))
    print("deltas…", flush=True)
    lag, raw = deltas(workdir)
    charts(out, over, conc, raw)

    growth = over[max(over)]["overhead_ms"] / max(over[min(over)]["overhead_ms"], 1e-6)
    top = conc[max(conc)]
    mid = over.get(50, over[max(over)])
    rows = [
        ("overhead ratio at 50 turns (app ÷ direct)", "≤ 1.05", f"{mid['ratio']:.2f}", mid["ratio"] <= 1.05),
        ("overhead at 50 turns (median)", "≤ 5 ms", f"{mid['overhead_ms']:.2f} ms", mid["overhead_ms"] <= 5),
    ]
    rows += [(f"turn at {s} turns: app / direct (median)", "", f"{o['app_ms']:.2f} / {o['direct_ms']:.2f} ms"
              f" (+{o['overhead_ms']:.2f} ms, ×{o['ratio']:.2f})", None) for s, o in sorted(over.items())]
    rows.append(("overhead growth 1 → 200 turns", "≤ 3×", f"{growth:.2f}×", growth <= 3))
    for n, c in sorted(conc.items()):
        rows.append((f"{n} chats in flight: completed/s vs ideal", "≥ 90 %" if n == max(conc) else "",
                     f"{c['per_s']:.0f}/s of {c['ideal_per_s']:.0f}/s = {c['of_ideal'] * 100:.0f} %, "
                     f"{c['errors']} errors, p50 {c['p50_s']:.2f} s, p99 {c['p99_s']:.2f} s, "
                     f"RSS {c['rss_mb']:.0f} MB", (c["of_ideal"] >= 0.9 and c["errors"] == 0)
                     if n == max(conc) else None))
    rows.append((f"worker RSS at {max(conc)} in flight", "≤ 300 MB", f"{top['rss_mb']:.0f} MB",
                 top["rss_mb"] <= 300))
    for name, d in lag.items():
        rows.append((f"delta forwarding via {name} (median, p99)", "≤ 20 ms median",
                     f"{d['median_ms']:.1f} ms, {d['p99_ms']:.1f} ms (n={d['n']})", d["median_ms"] <= 20))
    rows.append(("page weight, 20 turns (HTML+CSS+JS)", "≤ 60 KB",
                 f"{weight['total'] / 1024:.1f} KB (HTML {weight['html'] / 1024:.1f} KB)",
                 weight["total"] <= 60 * 1024))
    rows.append((f"turn time with {crowd['others']:,} other sessions vs 1", "≤ 1.2",
                 f"{crowd['ratio']:.2f} ({crowd['crowded_ms']:.2f} vs {crowd['alone_ms']:.2f} ms)",
                 crowd["ratio"] <= 1.2))
    lines = ["# Benchmark results", "",
             f"One run of `python -m bench.run{' --quick' if q else ''}` on {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s. "
             "Loopback only; the app runs under gunicorn with gunicorn.conf.py.", "",
             "| measure | target | result | verdict |", "|---|---|---|---|"]
    lines += [f"| {m} | {t} | {r} | {'' if ok is None else verdict(ok)} |" for m, t, r, ok in rows]
    lines += ["", "![overhead](overhead.png) ![concurrency](concurrency.png) ![deltas](deltas.png)", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"overhead": over, "concurrency": conc, "deltas": lag, "page": weight,
                   "crowded": crowd}, f, indent=1)
    print("\n".join(lines))
    print(f"\nWritten to {os.path.relpath(out, ROOT)}/", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
