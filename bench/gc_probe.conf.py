"""gunicorn.conf.py with the garbage collector's work counted, for `python -m bench.profile`.

    gunicorn wsgi:app -c bench/gc_probe.conf.py

Each worker times every collection (gc.callbacks) and, when it exits, writes its totals as JSON to
`$GC_PROBE_DIR/<pid>.json`. `GC_PROBE_DEFAULTS=1` undoes gunicorn.conf.py's tuning (unfreezes, and
Python's default thresholds), so a run can measure the tuning against the defaults.
"""

import gc
import json
import os
import time

exec(open(os.path.join(os.getcwd(), "gunicorn.conf.py")).read())  # noqa: S102: every setting as served

_served_init, _served_exit = post_worker_init, worker_exit  # noqa: F821: defined by the exec
_totals = {"collections": [0, 0, 0], "seconds": 0.0, "longest": 0.0}


def _timed(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    took = time.perf_counter() - started[0]
    _totals["collections"][info["generation"]] += 1
    _totals["seconds"] += took
    _totals["longest"] = max(_totals["longest"], took)


def post_worker_init(worker):  # noqa: F811
    _served_init(worker)
    if os.environ.get("GC_PROBE_DEFAULTS"):
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    gc.callbacks.append(_timed)


def worker_exit(server, worker):  # noqa: F811
    if os.getpid() != worker.pid:
        return  # the master also calls this hook for a worker that died: only workers report
    with open(os.path.join(os.environ["GC_PROBE_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(_totals, f)
    _served_exit(server, worker)
