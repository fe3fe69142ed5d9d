"""`python -m bench.search`: one search over a browser's 500 conversations of 20 turns each, on the
file store (cold: a fresh process's Store, and warm: histories decoded once and kept), median of 20.
The search reads every history (plain scanning, no index): this says whether that is fast enough."""

import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cachelib.file import FileSystemCache  # noqa: E402

from webapp import conversation, search  # noqa: E402
from webapp.store import FileBackend, Store  # noqa: E402

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


def build(path, conversations=500, turns=20):
    store = Store(FileBackend(FileSystemCache(path, threshold=0), os.path.join(path, "locks")), ttl=86400)
    entries = []
    for c in range(conversations):
        cid = f"conv{c:04d}"
        with store.update(cid) as conv:
            for t in range(turns):
                text = " ".join(WORDS[(c + t + i) % len(WORDS)] for i in range(40))
                conversation.add_turn(conv, f"question {t} of {c}: {text}", f"msg_{c}_{t}", "completed",
                                      f"An answer of some length. {text} " * 3)
        entries.append({"id": cid, "title": f"Conversation {c}", "at": c})
    entries.reverse()
    return entries


def timed(store, entries, query, rounds):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        found = search.find(store, entries, query)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, len(found)


def main():
    path = tempfile.mkdtemp(prefix="chat-bench-search-")
    try:
        entries = build(path)
        backend = lambda: FileBackend(FileSystemCache(path, threshold=0), os.path.join(path, "locks"))  # noqa: E731
        cold = [timed(Store(backend(), ttl=86400), entries, "zulu", 1)[0] for _ in range(20)]
        warm_store = Store(backend(), ttl=86400)
        warm, _ = timed(warm_store, entries, "zulu", 20)
        some, n = timed(warm_store, entries, "mike november", 20)
        print("| 500 conversations × 20 turns | median ms |")
        print("|---|---|")
        print(f"| no match, cold process | {statistics.median(cold):.0f} |")
        print(f"| no match, histories kept decoded | {warm:.0f} |")
        print(f"| two words, {n} found (listed up to 100) | {some:.0f} |")
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
