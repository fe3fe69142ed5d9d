"""A peer side by side: Gradio's `gr.ChatInterface` and this app on the same fake upstream, one run.

    ./bench.sh --peer     (or: python -m bench.peer, with build/peer-venv holding gradio)

Measures, for both: the cold page in Chromium (bytes and requests until 3 s after the load event), a
streamed turn's time through each against the identical request sent straight to the fake
(interleaved), and 20 / 100 concurrent streamed turns on a 2 s upstream against the same burst sent
straight upstream. Gradio runs in its own venv (bench/peer-requirements.txt) with its default
`concurrency_limit` of 1 and, separately, with it lifted (`None`), the setting a chat serving many
people needs. Writes peer.md (docs/bench/, or --out).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import load  # noqa: E402
from bench.run import API_KEY, app_env, burst_direct, median, spawn_upstream, summarise  # noqa: E402
from tests.fake_openrouter import FakeOpenRouter  # noqa: E402
from tests.serving import Gunicorn, find_program, free_port, stop_process  # noqa: E402

PEER_PY = os.path.join(ROOT, "build", "peer-venv", "bin", "python")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Gradio:
    def __init__(self, base_url, limit, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [PEER_PY, os.path.join(ROOT, "bench", "peer_app.py"), base_url, API_KEY, str(self.port), limit]
        self.log_path = log_path

    def __enter__(self):
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gradio exited: {open(self.log_path).read()[-2000:]}")
            try:
                if requests.get(self.url + "/gradio_api/info", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError("gradio did not start")

    def __exit__(self, *exc):
        stop_process(self.proc)
        self.log.close()


def cold_page(url, chromium):
    """Bytes and requests of a first visit: until the load event and 3 s after it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        page = context.new_page()
        seen = []
        page.on("requestfinished", lambda request: seen.append(request))
        started = time.perf_counter()
        # Not "networkidle": a page may hold a connection open (Gradio's heartbeat) and never idle.
        page.goto(url, wait_until="load", timeout=60000)
        loaded = time.perf_counter() - started
        page.wait_for_timeout(3000)  # what it fetches after the load event (Gradio: its config, fonts)
        total = encoded = 0
        for request in seen:
            sizes = request.sizes()
            total += sizes["responseBodySize"]
            encoded += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        browser.close()
    return {"requests": len(seen), "bytes": total, "wire": encoded, "load_s": loaded}


def app_turn(port, text):
    session = load.asyncio.run(load.new_session(port))
    return load.asyncio.run(load._timed(load.streamed_turn(port, session, text)))["s"]


def gradio_turn(port, text):
    return load.asyncio.run(load._timed(load.gradio_turn(port, text)))["s"]


def per_turn(fake, app, gradio, samples):
    """A new conversation's first streamed turn through each, alternated, and the identical request
    sent straight to the fake after each (its body taken from what the fake received)."""
    direct = requests.Session()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    times = {"app": [], "gradio": []}
    diffs = {"app": [], "gradio": []}

    def straight():
        body = json.dumps(fake.requests[-1]["body"])
        started = time.perf_counter()
        response = direct.post(fake.base_url + "/responses", data=body, headers=headers, stream=True)
        for _ in response.iter_lines():
            pass
        return time.perf_counter() - started

    for i in range(samples):
        for name in (("app", "gradio") if i % 2 == 0 else ("gradio", "app")):
            elapsed = app_turn(app.port, f"turn {i}") if name == "app" else gradio_turn(gradio.port, f"turn {i}")
            d = straight()
            times[name].append(elapsed)
            diffs[name].append(elapsed - d)
    return {name: {"turn_ms": median(times[name]) * 1000, "overhead_ms": median(diffs[name]) * 1000}
            for name in times}


def peer_bursts(workdir, levels):
    upstream, base = spawn_upstream("fake", "2.0")
    body = {"model": "openai/o4-mini", "max_output_tokens": 9000, "stream": True, "store": False,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "chat"}]}]}
    results = {}
    try:
        with Gunicorn(app_env(base, os.path.join(workdir, "burst")), os.path.join(workdir, "burst.log")) as app, \
                Gradio(base, "none", os.path.join(workdir, "gradio-none.log")) as lifted, \
                Gradio(base, "1", os.path.join(workdir, "gradio-1.log")) as default:
            for n in levels:
                row = {"direct": burst_direct(base, body, n)[0]}
                sessions = load.sessions(app.port, n)
                wall, outcomes = load.burst(lambda i: load.streamed_turn(app.port, sessions[i], f"chat {i}"), n)
                row["app"] = summarise(wall, outcomes, n)[0]
                time.sleep(1)
                wall, outcomes = load.burst(lambda i: load.gradio_turn(lifted.port, f"chat {i}"), n)
                row["gradio (concurrency_limit=None)"] = summarise(wall, outcomes, n)[0]
                time.sleep(1)
                if n <= 20:  # one at a time: 2 s each
                    wall, outcomes = load.burst(lambda i: load.gradio_turn(default.port, f"chat {i}"), n)
                    row["gradio (default concurrency_limit=1)"] = summarise(wall, outcomes, n)[0]
                    time.sleep(1)
                again = burst_direct(base, body, n)[0]
                if again["per_s"] > row["direct"]["per_s"]:
                    row["direct"] = again
                for name, r in row.items():
                    r["of_ideal"] = r["per_s"] / row["direct"]["per_s"]
                results[n] = row
    finally:
        upstream.kill()
        upstream.wait()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if not os.path.exists(PEER_PY):
        sys.exit("build/peer-venv is missing: python3 -m venv build/peer-venv && "
                 "build/peer-venv/bin/pip install -r bench/peer-requirements.txt (./bench.sh --peer does it)")
    version = subprocess.run([PEER_PY, "-c", "import gradio; print(gradio.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    chromium = find_program("chromium")
    workdir = tempfile.mkdtemp(prefix="chat-peer-")
    started = time.time()
    with FakeOpenRouter(api_key=API_KEY).start() as fake:
        with Gunicorn(app_env(fake.base_url, os.path.join(workdir, "app")), os.path.join(workdir, "app.log")) as app, \
                Gradio(fake.base_url, "none", os.path.join(workdir, "gradio.log")) as gradio:
            pages = {}
            if chromium:
                print("cold pages in Chromium…", flush=True)
                pages = {"app": cold_page(app.url + "/", chromium), "gradio": cold_page(gradio.url + "/", chromium)}
            print("per turn…", flush=True)
            turns = per_turn(fake, app, gradio, args.samples)
    print("bursts…", flush=True)
    bursts = peer_bursts(workdir, (20, 100))
    lines = ["# This app and Gradio's ChatInterface, side by side", "",
             f"One run of `python -m bench.peer` on {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s: this app "
             f"under gunicorn (gunicorn.conf.py defaults: gevent, 2 workers) and Gradio {version} "
             "(`gr.ChatInterface` streaming from the same fake OpenRouter, sending the whole history as "
             "Responses API items with each reply's id and status; bench/peer_app.py), each turn a "
             "new conversation's first, streamed. Loopback only.", "",
             "| measure | this app | Gradio ChatInterface |", "|---|---|---|"]
    if pages:
        a, g = pages["app"], pages["gradio"]
        lines.append(f"| cold page in Chromium: requests, body bytes (on the wire) | {a['requests']}, "
                     f"{a['bytes'] / 1024:.0f} KB ({a['wire'] / 1024:.0f} KB) | {g['requests']}, "
                     f"{g['bytes'] / 1024:.0f} KB ({g['wire'] / 1024:.0f} KB) |")
        lines.append(f"| cold page: time to the load event | {a['load_s'] * 1000:.0f} ms | {g['load_s'] * 1000:.0f} ms |")
    lines.append(f"| streamed turn, median (minus the same request straight upstream) | "
                 f"{turns['app']['turn_ms']:.1f} ms (+{turns['app']['overhead_ms']:.1f}) | "
                 f"{turns['gradio']['turn_ms']:.1f} ms (+{turns['gradio']['overhead_ms']:.1f}) |")
    for n, row in bursts.items():
        for name in row:
            if name.startswith("gradio (default") or name == "direct":
                continue
        gradio_cells = []
        for name in ("gradio (concurrency_limit=None)", "gradio (default concurrency_limit=1)"):
            if name in row:
                r = row[name]
                gradio_cells.append(f"{name.split('(')[1][:-1]}: {r['of_ideal'] * 100:.0f} % ({r['per_s']:.1f}/s, "
                                    f"p50 {r['p50_s']:.1f} s, {r['errors']} errors)")
        r = row["app"]
        lines.append(f"| {n} concurrent streamed turns, 2 s upstream: % of the same burst straight upstream "
                     f"({row['direct']['per_s']:.1f}/s) | {r['of_ideal'] * 100:.0f} % ({r['per_s']:.1f}/s, "
                     f"p50 {r['p50_s']:.1f} s, {r['errors']} errors) | {'; '.join(gradio_cells)} |")
    lines.append("")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peer.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(args.out, "peer.json"), "w") as f:
        json.dump({"pages": pages, "turns": turns, "bursts": bursts, "gradio": version}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
