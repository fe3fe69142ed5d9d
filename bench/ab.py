"""A/B of the 1,000-turn burst: the app at a git revision against this working tree, and the floor,
in one run with their rounds interleaved. `./bench.sh --ab REV [streamed|nojs] [ROUNDS]`.

Separate runs on these shared 2 cores differ by 20-30 % in CPU per turn, more than most single
changes save; rounds alternating on the same upstream and load generator (A, B, floor, then the
reverse) are what show whether a change helped. REV is checked out into build/ab-REV (a git
worktree, git-ignored) and run with this tree's interpreter; both run gevent, 2 workers, the
bench's settings (bench.run.app_env). Prints each round, then each side's best rate and CPU per turn
(lowest and median) and the forwarding median of each round (streamed)."""

import contextlib
import os
import subprocess
import sys
import tempfile

from bench import run
from tests.serving import Gunicorn


def checkout(rev):
    path = os.path.join(run.ROOT, "build", f"ab-{rev}")
    if not os.path.isdir(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=run.ROOT, check=True)
    return path


def main(rev, kind="streamed", rounds=3):
    sides = {f"A ({rev})": checkout(rev), "B (this tree)": run.ROOT, "floor": run.ROOT}
    workdir = tempfile.mkdtemp(prefix="bench-ab-")
    if kind == "nojs":
        upstream, base = run.spawn_upstream("fake", "2.0")
    else:
        upstream, base = run.spawn_upstream("ticks", str(run.TICKS), str(run.PACE))
    seen = {side: [] for side in sides}
    try:
        with contextlib.ExitStack() as stack:
            servers = {}
            for i, (side, cwd) in enumerate(sides.items()):
                path = os.path.join(workdir, str(i))
                os.makedirs(path)
                extra = {"app": "bench.floor_app:app"} if side == "floor" else {}
                servers[side] = stack.enter_context(Gunicorn(
                    run.app_env(base, path), os.path.join(path, "log"), worker_class="gevent", cwd=cwd, **extra))
            for r in range(rounds):
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    result, lags = run.burst_app(servers[side], kind, 1000, upstream)
                    lag = run.median(lags) * 1000 if lags else 0.0
                    seen[side].append((result["per_s"], result["app_cpu_ms_per_turn"], lag, result["errors"]))
                    forwarding = f", forwarding median {lag:.1f} ms" if lags else ""
                    print(f"round {r + 1} {side}: {result['per_s']:.0f}/s, {result['app_cpu_ms_per_turn']:.2f} ms "
                          f"CPU per turn{forwarding}, {result['errors']} errors", flush=True)
    finally:
        upstream.kill()
        upstream.wait()
    for side, rows in seen.items():
        cpu = sorted(row[1] for row in rows)
        forwarding = f"forwarding medians {[round(row[2], 1) for row in rows]} ms; " if kind == "streamed" else ""
        print(f"{side}: best {max(row[0] for row in rows):.0f}/s; CPU per turn lowest {cpu[0]:.2f}, median "
              f"{cpu[len(cpu) // 2]:.2f} ms; {forwarding}{sum(row[3] for row in rows)} errors")


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3], *[int(a) for a in sys.argv[3:4]])
