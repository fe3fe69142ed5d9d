"""Where a turn's time goes: `python -m bench.profile` (./bench.sh --profile) writes profiles.md.

1. cProfile of JS-off turns in process (Flask's test client, the fake upstream on loopback) at 50
   turns of history: POST (a Regenerate) → 303 → GET of the page, the top functions by cumulative
   and by own time.
2. Store and session traffic per turn: cachelib's FileSystemCache (under both the conversation store
   and Flask-Session) and the store's flock locks, wrapped to count reads, writes and bytes by key
   kind, for a JS-off turn, a streamed turn and a page view.
3. py-spy on a gunicorn worker (gevent, the default) during a burst of 1,000 JS-off turns and one
   of 1,000 streamed turns on a 2 s upstream: a flame graph (profile-burst.svg) and the top functions
   by own and total samples.

Needs py-spy (`pip install py-spy`; it reads the worker's memory, so as root or with ptrace allowed).
"""

import argparse
import collections
import cProfile
import io
import json
import os
import pickle
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import load  # noqa: E402
from bench.run import API_KEY, REGENERATE, app_env, spawn_upstream, summarise  # noqa: E402
from tests.fake_openrouter import FakeOpenRouter  # noqa: E402
from tests.serving import Gunicorn, csrf_token_in  # noqa: E402

FULL_OUT = os.path.join(ROOT, "docs", "bench")


# --- in process ----------------------------------------------------------------------------------------

def make_client(fake, workdir):
    from flask.testing import FlaskClient

    from webapp import create_app

    env = app_env(fake.base_url, workdir)
    app = create_app({"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": fake.base_url,
                      "SESSION_DIR": env["SESSION_DIR"], "SECRET_KEY": "bench",
                      "RATE_LIMIT_PER_SESSION": None, "RATE_LIMIT_PER_ADDRESS": None,
                      "MAX_RUNNING_TURNS": 5000}, env={})

    class Client(FlaskClient):
        token = None

        def post(self, *args, **kwargs):
            if self.token is None:
                self.token = csrf_token_in(self.get("/").get_data(as_text=True))
            kwargs["data"] = {"csrf_token": self.token, **kwargs.get("data", {})}
            kwargs["headers"] = {"X-CSRFToken": self.token}
            return super().post(*args, **kwargs)

    app.test_client_class = Client
    return app, app.test_client()


def nojs(client, path, fields):
    response = client.post(path, data=fields)
    assert response.status_code == 303, response.status_code
    target = response.headers["Location"].split("#")[0]
    page = client.get(target)
    assert page.status_code == 200
    return page.get_data(as_text=True), target


def build(client, turns):
    path = "/c/new"
    for i in range(turns):
        page, path = nojs(client, path, {"message": f"building turn {i}: how do I write a loop in Python?"})
    return path, REGENERATE.findall(page)[-1]


def stats_table(profile, sort, limit=25, per=1):
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats(sort)
    rows = []
    for func in stats.fcn_list[:limit]:
        cc, nc, tt, ct, _ = stats.stats[func]
        filename, line, name = func
        where = _short(filename)
        rows.append(f"| {nc / per:,.1f} | {tt / per * 1000:.2f} | {ct / per * 1000:.2f} | `{name}` {where}:{line} |")
    return ["| calls/turn | own ms/turn | cumulative ms/turn | function |", "|---:|---:|---:|---|"] + rows


def _short(filename):
    for marker in ("site-packages/", "/work/main/", ROOT + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.basename(filename) if filename.startswith("/") else filename


def cprofile_turns(fake, workdir, history=50, turns=20):
    app, client = make_client(fake, os.path.join(workdir, "cprofile"))
    path, last = build(client, history)
    for _ in range(3):  # warm
        page, _ = nojs(client, path, {"message": "", "regenerate": last})
        last = REGENERATE.findall(page)[-1]
    profile = cProfile.Profile()
    started = time.perf_counter()
    for _ in range(turns):
        profile.enable()
        page, _ = nojs(client, path, {"message": "", "regenerate": last})
        profile.disable()
        last = REGENERATE.findall(page)[-1]
    wall = (time.perf_counter() - started) / turns
    # The page view alone, for comparison.
    page_profile = cProfile.Profile()
    for _ in range(turns):
        page_profile.enable()
        client.get(path)
        page_profile.disable()
    return profile, page_profile, wall


# --- the parts, timed without a profiler ---------------------------------------------------------------

PARTS = [  # (label, module path, attribute path): wrapped with a timer, inclusive of what they call
    ("POST (the send, upstream included)", "flask.testing", "FlaskClient.post"),
    ("GET (the page)", "flask.testing", "FlaskClient.get"),
    ("  upstream call (Client.respond)", "webapp.openrouter", "Client.respond"),
    ("  Store.load (history + turn, unpickled)", "webapp.store", "Store.load"),
    ("  Store.update (lock, load, save)", "webapp.store", "Store.update"),
    ("  FileBackend.set (pickle, temp file, rename)", "webapp.store", "FileBackend.set"),
    ("  the browser's list (Store.conversations)", "webapp.store", "Store.conversations"),
    ("  render.markdown (the reply, at settle)", "webapp.render", "markdown"),
    ("  render_template('chat.html')", "webapp.views.wiring", "render_template"),
    ("  usage.turn_usage (every reply's cost line)", "webapp.usage", "turn_usage"),
    ("  usage.budget (the context meter)", "webapp.usage", "budget"),
    ("  usage.totals", "webapp.usage", "totals"),
    ("  conversation.sent_history", "webapp.conversation", "sent_history"),
    ("  session open (Flask-Session)", "flask_session.base", "ServerSideSessionInterface.open_session"),
    ("  session save", "flask_session.base", "ServerSideSessionInterface.save_session"),
    ("  request JSON encoding (json.dumps in the client)", "webapp.openrouter", "json.dumps"),
]


def _wrap_parts(totals, counts):
    import contextlib
    import importlib

    restore = []
    for label, module_name, attr in PARTS:
        module = importlib.import_module(module_name)
        owner, name = module, attr
        if "." in attr:
            first, name = attr.split(".", 1)
            owner = getattr(module, first)
        original = getattr(owner, name)
        is_cm = label.startswith("  Store.update")

        def make(original, label, is_cm):
            if is_cm:
                @contextlib.contextmanager
                def timed_cm(*args, **kwargs):
                    started = time.perf_counter()
                    with original(*args, **kwargs) as value:
                        yield value
                    totals[label] += time.perf_counter() - started
                    counts[label] += 1
                return timed_cm

            def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    totals[label] += time.perf_counter() - started
                    counts[label] += 1
            return timed

        if isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod):
            continue
        setattr(owner, name, make(original, label, is_cm))
        restore.append((owner, name, original))
    return restore


def parts(fake, workdir, sizes=(1, 50, 200), samples=20):
    """ms per JS-off turn (POST→303→GET, a Regenerate) spent in each part, at each history size."""
    import json as json_module

    import webapp.openrouter as openrouter_module

    results = {}
    for size in sizes:
        app, client = make_client(fake, os.path.join(workdir, f"parts-{size}"))
        path, last = build(client, size)
        for _ in range(3):
            page, _ = nojs(client, path, {"message": "", "regenerate": last})
            last = REGENERATE.findall(page)[-1]
        totals, counts = collections.Counter(), collections.Counter()
        # the client module's own `json` name, so only its dumps are timed
        openrouter_module.json = types.SimpleNamespace(**{k: getattr(json_module, k) for k in dir(json_module)
                                                           if not k.startswith("_")})
        restore = _wrap_parts(totals, counts)
        try:
            for _ in range(samples):
                page, _ = nojs(client, path, {"message": "", "regenerate": last})
                last = REGENERATE.findall(page)[-1]
        finally:
            for owner, name, original in restore:
                setattr(owner, name, original)
            openrouter_module.json = json_module
        results[size] = {label: (totals[label] / samples * 1000, counts[label] / samples) for label, _, _ in PARTS}
    return results


def parts_table(results):
    sizes = sorted(results)
    lines = ["| part | " + " | ".join(f"{s} turn{'s' if s > 1 else ''}: ms (calls)" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for label, _, _ in PARTS:
        cells = [f"{results[s][label][0]:.2f} ({results[s][label][1]:g})" for s in sizes]
        lines.append(f"| {label.strip() if not label.startswith('  ') else '&nbsp;&nbsp;' + label.strip()} | "
                     + " | ".join(cells) + " |")
    return lines


# --- store traffic --------------------------------------------------------------------------------------

class Counter:
    """Counts FileSystemCache get/set/delete (by key kind, with pickled bytes written) and flocks."""

    def __init__(self):
        self.counts = collections.Counter()
        self.bytes = collections.Counter()
        self.on = False

    @staticmethod
    def kind(key):
        return key.split(":", 1)[0] + ":" if ":" in key else key

    def install(self):
        from cachelib.file import FileSystemCache

        from webapp import store

        counter = self
        originals = {name: getattr(FileSystemCache, name) for name in ("get", "set", "delete", "has")}

        def wrap(name):
            original = originals[name]

            def wrapper(cache, key, *args, **kwargs):
                if counter.on:
                    counter.counts[name, counter.kind(key)] += 1
                    if name == "set":
                        counter.bytes[counter.kind(key)] += len(pickle.dumps(args[0] if args else kwargs["value"]))
                return original(cache, key, *args, **kwargs)
            return wrapper

        for name in originals:
            setattr(FileSystemCache, name, wrap(name))
        acquire = store._acquire

        def counted_acquire(path, deadline):
            if counter.on:
                counter.counts["flock", "lock"] += 1
            return acquire(path, deadline)

        store._acquire = counted_acquire

    def measure(self, action, repeat=10):
        self.counts.clear()
        self.bytes.clear()
        self.on = True
        try:
            for _ in range(repeat):
                action()
        finally:
            self.on = False
        return ({k: v / repeat for k, v in self.counts.items()}, {k: v / repeat for k, v in self.bytes.items()})


def store_traffic(fake, workdir, history=50):
    from webapp import turns

    counter = Counter()
    counter.install()
    app, client = make_client(fake, os.path.join(workdir, "traffic"))
    path, last = build(client, history)
    state = {"last": last}

    def regenerate():
        page, _ = nojs(client, path, {"message": "", "regenerate": state["last"]})
        state["last"] = REGENERATE.findall(page)[-1]

    def view():
        client.get(path)

    def streamed():
        response = client.post(path + "/turns", data={"message": "", "regenerate": state["last"]})
        body = response.get_data(as_text=True)
        assert "event: done" in body, body[-300:]
        # the turn's own thread stores the reply; wait for it to finish before the next one
        deadline = time.monotonic() + 10
        while turns.LIVE and time.monotonic() < deadline:
            time.sleep(0.01)
        state["last"] = REGENERATE.findall(client.get(path).get_data(as_text=True))[-1]

    results = {}
    for name, action in (("JS-off turn (POST→303→GET)", regenerate), ("page view (GET)", view),
                         ("streamed turn (POST /turns, read to done; then a GET, not counted)", None)):
        if action is None:
            counts, sizes = counter.measure(lambda: _streamed_only(streamed, counter), repeat=10)
        else:
            counts, sizes = counter.measure(action)
        results[name] = (counts, sizes)
    return results


def _streamed_only(streamed, counter):
    """Count the POST /turns and its thread, not the GET that finds the next reply id."""
    from flask.testing import FlaskClient

    original = FlaskClient.get

    def quiet_get(self, *args, **kwargs):
        counter.on = False
        try:
            return original(self, *args, **kwargs)
        finally:
            counter.on = True

    FlaskClient.get = quiet_get
    try:
        streamed()
    finally:
        FlaskClient.get = original


def traffic_table(results):
    kinds = sorted({k for counts, _ in results.values() for k in counts})
    lines = ["| per … | " + " | ".join(f"{op} `{kind}`" for op, kind in kinds) + " | bytes pickled per write |",
             "|---|" + "---:|" * (len(kinds) + 1)]
    for name, (counts, sizes) in results.items():
        written = ", ".join(f"`{k}` {v / max(1, counts.get(('set', k), 1)):,.0f} B" for k, v in sorted(sizes.items()))
        lines.append(f"| {name} | " + " | ".join(f"{counts.get(k, 0):g}" for k in kinds) + f" | {written} |")
    return lines


# --- py-spy during a burst ------------------------------------------------------------------------------

def py_spy():
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return found if os.path.exists(found) else None


def raw_stacks(path):
    """(frames, samples) for each line of py-spy's raw (collapsed) output."""
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():  # not py-spy's own notes, nor a line cut short
            yield stack.split(";"), int(count)


def collapsed_top(path, limit=25):
    """Top functions of py-spy's raw (collapsed) output by own and by total samples."""
    own, total = collections.Counter(), collections.Counter()
    samples = 0
    for frames, count in raw_stacks(path):
        samples += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def table(counter):
        rows = ["| % of samples | function (file) |", "|---:|---|"]
        for frame, count in counter.most_common(limit):
            rows.append(f"| {count / samples * 100:.1f} | `{_short_frame(frame)}` |")
        return rows

    return samples, table(own), table(total)


def _short_frame(frame):
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({_short(match.group(2))})"


SPY_RATE = 100  # samples a second


def burst_profile(workdir, out, kind, n=1000, duration=20, svg=False, app="wsgi:app", rate=SPY_RATE):
    spy = py_spy()
    if kind == "nojs":
        upstream, base = spawn_upstream("fake", "2.0")
    else:
        upstream, base = spawn_upstream("ticks", "40", "0.05")
    path = os.path.join(workdir, f"spy-{kind}-{app.split('.')[0].split(':')[0]}")
    os.makedirs(path, exist_ok=True)
    try:
        with Gunicorn(app_env(base, path), os.path.join(path, "log"), workers=2, worker_class="gevent",
                      app=app) as server:
            sessions = load.sessions(server.port, n)
            workers = [int(c) for c in open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read().split()]
            raw = {mode: os.path.join(path, f"raw-{mode}.txt") for mode in ("gil", "wall")}

            def record(pid, output, *extra):
                return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(duration),
                                         "--rate", str(rate), "--nonblocking", "--output", output, *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            # --gil: only the thread holding the GIL, i.e. where the CPU goes; without it: every
            # thread py-spy thinks is busy (it counts some lock and socket waits as busy).
            spies = [record(workers[0], raw["gil"], "--format", "raw", "--gil"),
                     record(workers[0], raw["wall"], "--format", "raw")]
            if svg:
                spies.append(record(workers[-1], os.path.join(out, "profile-burst.svg"), "--gil"))
            time.sleep(1.0)  # py-spy attaches
            turn = load.nojs_turn if kind == "nojs" else load.streamed_turn
            wall, outcomes = load.burst(lambda i: turn(server.port, sessions[i], f"chat {i}"), n)
            for proc in spies:
                proc.wait(timeout=duration + 30)
            errors = sum(1 for o in outcomes if not isinstance(o, dict))
            return ({"wall_s": wall, "errors": errors, "n": n, "raw": raw["gil"]}, collapsed_top(raw["gil"]),
                    collapsed_top(raw["wall"], 12))
    finally:
        upstream.kill()
        upstream.wait()


# Where a streamed turn's CPU goes, in the app and in the floor (bench/floor_app.py), by the frames that
# hold each part: (label, app frames, floor frames). A frame is named by how py-spy's line starts
# ("function ("); "A>B" is B called straight from A. A sample counts once per part, inclusive.
STREAMED_PARTS = (
    ("the POST's Flask request (view, CSRF, session, limits)", ("Flask.full_dispatch_request",),
     ("Flask.full_dispatch_request",)),
    ("  of which the turn's begin (session id, conversation, stored turn)", ("Send.begin", "Send.__init__"),
     ("with_message",)),
    ("upstream request, until its headers (body JSON included)", ("Client._post",), ("upstream",)),
    ("reading and parsing the upstream's events", ("sse_data", "Client.stream>loads"),
     ("Response.iter_lines", "turns.<locals>.events>loads")),
    ("publishing each event on the turn's relay (for other followers)",
     ("LocalRelay.listen", "LocalRelay.publish", "Turn.publish", "LocalRelay.since"), ()),
    ("snapshot renders while streaming", ("_Snapshots.due",), ()),
    ("writing events to the browser", ("Response.write",), ("Response.write",)),
    ("the end: settle, log, final event", ("settle", "log_turn", "finished"), ()),
    ("progress saves and Stop checks", ("_save_progress_forever",), ()),
)


def _has(frames, pattern):
    first, _, then = pattern.partition(">")
    return any(f.startswith(first + " (") and (not then or (i + 1 < len(frames) and
                                                        frames[i + 1].startswith(then + " (")))
               for i, f in enumerate(frames))


def part_samples(raw_path, patterns):
    counts, samples = [0] * len(patterns), 0
    for frames, count in raw_stacks(raw_path):
        samples += count
        for i, pats in enumerate(patterns):
            if any(_has(frames, p) for p in pats):
                counts[i] += count
    return samples, counts


def streamed_split(app_info, floor_info, rate, turns):
    """App vs floor, ms of one worker's CPU per streamed turn, part by part."""
    app_total, app_parts = part_samples(app_info["raw"], [p[1] for p in STREAMED_PARTS])
    floor_total, floor_parts = part_samples(floor_info["raw"], [p[2] for p in STREAMED_PARTS])
    ms = lambda count: count / rate / turns * 1000  # noqa: E731
    rows = ["| part | app (ms per turn) | floor (ms per turn) |", "|---|---:|---:|",
            f"| all samples of the worker | {ms(app_total):.2f} | {ms(floor_total):.2f} |"]
    for (label, app_pats, floor_pats), a, f in zip(STREAMED_PARTS, app_parts, floor_parts):
        rows.append(f"| {label} | {ms(a):.2f} | {ms(f):.2f} |" if floor_pats else f"| {label} | {ms(a):.2f} | – |")
    return rows


def gc_burst(workdir, defaults, n=1000):
    """1,000 streamed turns under bench/gc_probe.conf.py: the workers' collection counts and time, with
    gunicorn.conf.py's GC tuning or (`defaults`) Python's defaults."""
    upstream, base = spawn_upstream("ticks", "40", "0.05")
    path = tempfile.mkdtemp(prefix="gc-", dir=workdir)
    env = dict(app_env(base, path), GC_PROBE_DIR=path, **({"GC_PROBE_DEFAULTS": "1"} if defaults else {}))
    try:
        with Gunicorn(env, os.path.join(path, "log"), workers=2, worker_class="gevent",
                      config="bench/gc_probe.conf.py") as server:
            sessions = load.sessions(server.port, n)
            wall, outcomes = load.burst(lambda i: load.streamed_turn(server.port, sessions[i], f"chat {i}"), n)
    finally:
        upstream.kill()
        upstream.wait()
    workers = [json.load(open(os.path.join(path, name))) for name in os.listdir(path) if name.endswith(".json")]
    if len(workers) != 2:
        raise RuntimeError(f"{len(workers)} of 2 workers reported their collections (see {path}/log)")
    result, _ = summarise(wall, outcomes, n)  # wall, errors, delta forwarding as the bench counts them
    return dict(result, collections=[sum(w["collections"][g] for w in workers) for g in range(3)],
                gc_ms_per_worker=sum(w["seconds"] for w in workers) / len(workers) * 1000,
                longest_ms=max(w["longest"] for w in workers) * 1000)


def gc_table(runs):
    rows = ["| setting | round | collections (gen 0 / 1 / 2, all workers) | GC time per worker | longest pause | "
            "delta forwarding median, p99 | burst wall | errors |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, r, res in runs:
        rows.append(f"| {name} | {r + 1} | {' / '.join(str(c) for c in res['collections'])} | "
                    f"{res['gc_ms_per_worker']:.0f} ms | {res['longest_ms']:.1f} ms | "
                    f"{res['lag_p50_ms']:.1f} ms, {res['lag_p99_ms']:.0f} ms | "
                    f"{res['wall_s']:.1f} s | {res['errors']} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=FULL_OUT)
    parser.add_argument("--no-spy", action="store_true", help="skip the py-spy bursts")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="chat-profile-")
    started = time.time()
    lines = ["# Profiles", "",
             f"`python -m bench.profile` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "What the app does per turn, to find where its overhead goes (see results.md for the "
             "measures and the README's Benchmarks section for the hot spots drawn from these).", ""]
    with FakeOpenRouter(api_key=API_KEY).start() as fake:
        print("cProfile…", flush=True)
        turn_profile, page_profile, wall = cprofile_turns(fake, workdir)
        print("parts…", flush=True)
        part_times = parts(fake, workdir)
        print("store traffic…", flush=True)
        traffic = store_traffic(fake, workdir)
    lines += ["## 1. One JS-off turn at 50 turns of history, in process (cProfile)", "",
              f"20 Regenerates (POST → 303 → GET of the page) through Flask's test client, the fake "
              f"upstream on loopback; {wall * 1000:.1f} ms per turn under cProfile (which inflates "
              "Python-heavy code). Per turn:", "", "By cumulative time:", ""]
    lines += stats_table(turn_profile, "cumulative", per=20)
    lines += ["", "By own time:", ""]
    lines += stats_table(turn_profile, "tottime", per=20)
    lines += ["", "The page view alone (GET of the same 50-turn conversation), by cumulative time:", ""]
    lines += stats_table(page_profile, "cumulative", limit=15, per=20)
    lines += ["", "## 1b. Where a JS-off turn's time goes, without a profiler, at 1, 50 and 200 turns", "",
              "Each part wrapped with a timer (inclusive of what it calls; parts overlap: Store.update "
              "holds Store.load and FileBackend.set), 20 Regenerates per size through Flask's test client, "
              "ms per turn and calls per turn:", ""]
    lines += parts_table(part_times)
    lines += ["", "## 2. Store and session traffic per action (50 turns of history)", "",
              "FileSystemCache calls by key kind (`conv:` history, `turn:` the turn under way, "
              "`browser:` a browser's list of conversations, `session:` Flask-Session, `signal:` the "
              "Stop signal the progress saver polls every 0.1 s while a turn runs) and flock "
              "acquisitions, averaged over 10 of each:", ""]
    lines += traffic_table(traffic)
    spy = py_spy()
    if args.no_spy or not spy:
        lines += ["", "## 3. py-spy during a burst", "", "Skipped (" + ("--no-spy" if args.no_spy else
                  "py-spy is not installed: pip install py-spy") + ")."]
    else:
        for kind, label, svg in (("nojs", "1,000 JS-off turns (POST→303→GET)", True),
                                 ("streamed", "1,000 streamed turns (POST /turns, SSE to done)", False)):
            print(f"py-spy during {label}…", flush=True)
            info, (samples, own, total), (wall_samples, wall_own, _) = burst_profile(
                workdir, args.out, kind, svg=svg)
            lines += ["", f"## 3{'a' if kind == 'nojs' else 'b'}. py-spy on one gevent worker during "
                      f"{label} on a 2 s upstream", "",
                      f"2 workers × 1,000 connections (gunicorn.conf.py's default); the burst took {info['wall_s']:.1f} s "
                      f"({info['errors']} errors). `--gil` samples (the thread holding the GIL, at "
                      f"{SPY_RATE} Hz over 20 s: {samples:,} samples, so the worker held the GIL "
                      f"{samples / (SPY_RATE * 20) * 100:.0f} % of the time: a gevent worker runs its greenlets on one thread)."
                      + (" Flame graph of the other worker (also `--gil`): "
                         "[profile-burst.svg](profile-burst.svg)." if svg else ""),
                      "", "By own samples (where the CPU is):", ""]
            lines += own
            lines += ["", "By total samples (the function or anything it calls):", ""]
            lines += total
            lines += ["", f"Without `--gil` ({wall_samples:,} samples of every thread py-spy counts as busy, "
                      "waits on locks and sockets included), by own samples:", ""]
            lines += wall_own
        print("py-spy on the app and on the floor during the streamed burst…", flush=True)
        rate = 400
        app_info, *_ = burst_profile(workdir, args.out, "streamed", rate=rate)
        floor_info, *_ = burst_profile(workdir, args.out, "streamed", app="bench.floor_app:app", rate=rate)
        lines += ["", "## 3c. A streamed turn's CPU, part by part: the app against the floor", "",
                  "The same burst of 1,000 streamed turns through the app and through the floor "
                  "(bench/floor_app.py, the shape alone), one gevent worker of two sampled with `--gil` at "
                  f"{rate} Hz; samples with a part's frames are counted for it (inclusive), per turn of that "
                  f"worker (about 500). The bursts took {app_info['wall_s']:.1f} s and {floor_info['wall_s']:.1f} s "
                  f"({app_info['errors']} and {floor_info['errors']} errors). A gevent worker's loop (the hub), "
                  "greenlet switches and the garbage collector are in the totals and in no part.", ""]
        lines += streamed_split(app_info, floor_info, rate, 500)
    print("garbage collection during bursts…", flush=True)
    runs = []
    for r in range(2):  # alternated: the machine's noise falls on both settings
        for name, defaults in ((("tuned (gunicorn.conf.py)", False), ("Python's defaults", True))
                               if r % 2 == 0 else (("Python's defaults", True), ("tuned (gunicorn.conf.py)", False))):
            runs.append((name, r, gc_burst(workdir, defaults)))
    lines += ["", "## 4. Garbage collection during 1,000 streamed turns", "",
              "gunicorn.conf.py freezes what each worker made at start (`gc.freeze()`) and collects its "
              "first generation a tenth as often as Python's default (`GC_THRESHOLD`). The same burst "
              "(gevent, 2 workers, a 2 s streamed upstream) under bench/gc_probe.conf.py, which times every "
              "collection, with that tuning and with Python's defaults, alternated:", ""]
    lines += gc_table(runs)
    lines.append("")
    with open(os.path.join(args.out, "profiles.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"\nWritten to {args.out}/profiles.md in {time.time() - started:.0f} s", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
