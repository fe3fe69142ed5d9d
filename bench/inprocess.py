"""In-process A/B of one kind of turn, the app against the floor: `./bench.sh --inprocess [streamed|nojs]`.

The 1,000-turn bursts move by 20-30 % between rounds of the same code on these shared cores, more than
most single changes save. Here the app (wsgi:app) and the floor (bench/floor_app.py) run in this one
process under gevent's monkey-patching, as under gunicorn's gevent worker, driven alternately by
Flask's test client: each turn is a new browser's first send (a new conversation), the process's own
CPU time counted around it, medians compared. Runs of the same code agree within about 2 % here.

    --turns N     turns per side (default 300)
    --pace S      seconds between the upstream's 40 deltas (streamed; default 0.002: each read waits;
                  0: every event is already waiting, so only the per-turn work shows)
    --profile app|floor   then cProfile that side's turns (CPU time) and print the top functions; the
                  stats are kept in build/profile-SIDE.pstats (for pstats' print_callers)
    --history N   nojs only: each turn is a regenerate on a conversation of N turns (built first through
                  each app's own form), POST→303→GET, as the table's "JS-off overhead at 50 turns"
    --at-once K   each sample is K new browsers' first sends started together (their pages loaded
                  first, not counted), CPU per turn the batch's ÷ K, as one gevent worker of the burst
                  sees them (`--pace` then defaults to the burst's 0.05); streamed, also each delta's
                  delay from the upstream to the app's response (median per side). Work that only
                  costs while other turns run (a lock held across a switch, the event loop's rounds)
                  shows here and not turn by turn.
    --rounds N    with --at-once: batches per side (default 3)
    --against REV also run the app as it was at git revision REV, in this same process, alternating
                  with the others turn by turn ("then" against "app"): the A/B of a change that
                  separate runs, whose ratios move with the machine by more than 2 %, cannot show.
                  REV's package is extracted under build/ as `webapp_then` (it imports itself
                  relatively), with its templates and static files beside it.

`strace -c -f -p PID` on this process, while it runs, counts the syscalls of either side."""

import argparse
import re
import sys

from gevent import monkey

monkey.patch_all()

import cProfile  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import gevent.pool  # noqa: E402
from bench import run  # noqa: E402
from tests.serving import csrf_token_in  # noqa: E402


def cpu_seconds(work, profile=None):
    """(`work()`'s result, the CPU seconds it took this process), under cProfile's `profile` when given."""
    started = time.process_time()
    if profile:
        profile.enable()
    result = work()
    if profile:
        profile.disable()
    return result, time.process_time() - started


def nojs_send(client, path, token, fields):
    """A JS-off send as a browser makes it: POST `fields` to `path`, then GET the page its 303 names,
    which must hold a reply. Returns (that page's path, its response)."""
    response = client.post(path, data={"csrf_token": token, **fields}, headers={"X-CSRFToken": token})
    if response.status_code != 303:
        raise RuntimeError(f"POST {path} answered {response.status_code}")
    location = response.headers["Location"].split("#")[0]
    page = client.get(location)
    if b'data-role="assistant"' not in page.data:
        raise RuntimeError("the page has no reply")
    return location, page


STAMP = re.compile(rb"(\d{10}\.\d{6}) ")  # a `ticks` delta: the time the upstream sent it


def new_browser(app):
    """A new browser that has loaded the page: (its test client, its CSRF token)."""
    client = app.test_client()
    return client, csrf_token_in(client.get("/").get_data(as_text=True))


def streamed_send(client, token, delays=None):
    """A streamed first send, read to its end; with `delays`, each delta's seconds from the upstream
    writing it to the app's response giving it out are appended there."""
    response = client.post("/turns", data={"csrf_token": token, "message": "hello"}, buffered=False,
                           headers={"X-CSRFToken": token, "Accept": "text/event-stream"})
    chunks = []
    for chunk in response.response:
        chunks.append(chunk)
        if delays is not None:
            now = time.time()
            delays.extend(now - float(stamp) for event in chunk.split(b"\n\n") if b"event: delta\n" in event
                          for stamp in STAMP.findall(event))
    response.close()
    body = b"".join(chunks)
    if b"event: done" not in body:
        raise RuntimeError(f"the stream did not end with done: {body[-300:]!r}")


def first_send(client, token, kind, delays=None):
    if kind == "streamed":
        streamed_send(client, token, delays)
    else:
        nojs_send(client, "/", token, {"message": "hello"})


def turn(app, kind, profile=None):
    """One new browser's first send; the CPU seconds it took this process (the page it loaded to
    get its token not counted)."""
    client, token = new_browser(app)
    return cpu_seconds(lambda: first_send(client, token, kind), profile)[1]


def at_once(app, kind, count, delays=None):
    """`count` new browsers' first sends started together; the CPU seconds per turn (their pages,
    loaded first, not counted). `delays`: see `streamed_send`."""
    browsers = [new_browser(app) for _ in range(count)]
    group = gevent.pool.Group()

    def batch():
        for client, token in browsers:
            group.spawn(first_send, client, token, kind, delays)
        group.join(raise_error=True)

    return cpu_seconds(batch)[1] / count


class Conversation:
    """One browser's conversation of `size` turns in `app`, built through its JS-off form; each call
    then regenerates the last reply (so every sample sends exactly `size` turns) and returns the CPU
    seconds of the POST, its redirect's GET included (as `turn`)."""

    def __init__(self, app, size):
        self.client, self.token = new_browser(app)
        self.path = "/c/new"
        for i in range(size):
            page = self._send({"message": f"building turn {i}"})
        self.last = run.REGENERATE.findall(page)[-1]

    def _send(self, fields):
        self.path, response = nojs_send(self.client, self.path, self.token, fields)
        page = response.get_data(as_text=True)
        self.token = csrf_token_in(page)
        return page

    def __call__(self, profile=None):
        page, spent = cpu_seconds(lambda: self._send({"message": "", "regenerate": self.last}), profile)
        self.last = run.REGENERATE.findall(page)[-1]  # the reply the next regenerate replaces
        return spent


def quiet(*loggers):
    """The app's log lines (one per turn) still formatted and written, as under gunicorn, to
    /dev/null rather than over the results."""
    sink = open(os.devnull, "w")
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setStream(sink)


def then_app(rev):
    """The app at git revision `rev`, built from a copy of that revision's tree under build/, its
    package renamed `webapp_then` so it loads beside this tree's `webapp`."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=run.ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    root = os.path.join(run.ROOT, "build", f"inprocess-{commit}")  # (a branch name moves on)
    if not os.path.isdir(root):
        os.makedirs(root)
        archive = subprocess.run(["git", "archive", commit, "webapp", "templates", "static"], cwd=run.ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
        os.rename(os.path.join(root, "webapp"), os.path.join(root, "webapp_then"))
    sys.path.insert(0, root)
    import webapp_then

    return webapp_then.create_app()


def main(kind="streamed", turns=300, pace=None, profile=None, against=None, history=0, together=0,
         rounds=3):
    if pace is None:
        pace = run.PACE if together else 0.002
    if kind == "streamed":
        upstream, base = run.spawn_upstream("ticks", str(run.TICKS), str(pace))
    else:
        # At once, the burst's 2 s upstream: the turns overlap as they do there.
        upstream, base = run.spawn_upstream("fake", "2.0" if together else "0.0")
    os.environ.update(run.app_env(base, tempfile.mkdtemp(prefix="bench-inprocess-")))
    try:
        import wsgi
        from bench import floor_app
        apps = {"app": wsgi.app, "floor": floor_app.app}
        if against:
            apps = {"then": then_app(against), **apps}
        quiet(logging.getLogger(), *logging.getLogger().manager.loggerDict.values())
        if together:
            for app in apps.values():
                at_once(app, kind, 20)  # warm: imports, caches, pooled connections
            return batches(apps, kind, together, rounds, against)
        # One callable per side: a new browser's first send each time, or a regenerate in its conversation.
        sides = {name: (Conversation(app, history) if history else
                        lambda profile=None, app=app: turn(app, kind, profile)) for name, app in apps.items()}
        for side in sides.values():
            for _ in range(20):  # warm: imports, caches, pooled connections
                side()
        spent = {name: [] for name in apps}
        for _ in range(turns):
            for name, side in sides.items():
                spent[name].append(side() * 1000)
        medians = {name: statistics.median(values) for name, values in spent.items()}
        for name, values in spent.items():
            quartiles = statistics.quantiles(values, n=4)
            what = f"regenerate at {history} turns" if history else f"{kind} turn"
            print(f"{name}: {medians[name]:.2f} ms CPU per {what} (median; quartiles "
                  f"{quartiles[0]:.2f}-{quartiles[2]:.2f})")
        ratios(medians, against)
        if profile:
            prof = cProfile.Profile(time.process_time)
            for _ in range(min(turns, 100)):
                sides[profile](prof)
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            kept = os.path.join(run.ROOT, "build")  # (git-ignored: not there in a fresh clone)
            os.makedirs(kept, exist_ok=True)
            stats.dump_stats(os.path.join(kept, f"profile-{profile}.pstats"))  # for print_callers
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)
            print(out.getvalue())
    finally:
        upstream.kill()
        upstream.wait()


def ratios(medians, against=None):
    """The app's median against the floor's, and, with --against, the app as it was at REV."""
    print(f"app ÷ floor: {medians['app'] / medians['floor']:.2f}")
    if against:
        print(f"then ({against}) ÷ floor: {medians['then'] / medians['floor']:.2f}; "
              f"app ÷ then: {medians['app'] / medians['then']:.3f}")


def batches(apps, kind, count, rounds, against=None):
    """`rounds` batches of `count` first sends at once per side, the sides alternated batch by batch."""
    spent = {name: [] for name in apps}
    delays = {name: [] for name in apps}
    for number in range(rounds):
        for name, app in apps.items():
            spent[name].append(at_once(app, kind, count, delays[name] if kind == "streamed" else None) * 1000)
            print(f"batch {number + 1}, {name}: {spent[name][-1]:.2f} ms CPU per turn", flush=True)
    medians = {name: statistics.median(values) for name, values in spent.items()}
    for name in apps:
        forwarding = (f"; a delta's delay upstream → response, median {statistics.median(delays[name]) * 1000:.1f} ms"
                      if delays[name] else "")
        print(f"{name}: {medians[name]:.2f} ms CPU per {kind} turn, {count} at once (median of "
              f"{rounds}){forwarding}")
    ratios(medians, against)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", nargs="?", default="streamed", choices=["streamed", "nojs"])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--pace", type=float)
    parser.add_argument("--profile", choices=["app", "floor"])
    parser.add_argument("--against", metavar="REV")
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--at-once", type=int, default=0, metavar="K")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.history and args.kind != "nojs":
        parser.error("--history is for nojs turns")
    if args.at_once and (args.history or args.profile):
        parser.error("--at-once is for first sends, without --profile")
    main(args.kind, args.turns, args.pace, args.profile, args.against, args.history, args.at_once, args.rounds)
    sys.exit(0)
