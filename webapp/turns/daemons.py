"""The threads a worker process runs once for all its turns (the progress saver; with Redis, the
relay's reader and the Stop listener), each started the first time a turn needs it: after gunicorn's
fork, since a thread started in the master does not run in the workers."""

import logging
import os
import threading
import time

log = logging.getLogger(__name__)

RESTART_AFTER = 1.0  # seconds before a thread whose work failed starts it again


class ProcessThread:
    """`ensure()` starts `target` in a daemon thread of this process unless one runs here already.

    Whether it runs is the process id it was started in, not `Thread.is_alive()`: under gevent,
    `is_alive()` of a running thread tries its lock without blocking, and gevent answers a failed try
    by running every other ready greenlet first. Asked under the lock every send takes, that held
    the lock for a round of the event loop per send. A target that fails is logged and run again (the
    case `is_alive()` was there for)."""

    def __init__(self, target, name):
        self.target, self.name = target, name
        self._pid = None
        self._lock = threading.Lock()

    def ensure(self):
        if self._pid == os.getpid():
            return  # the common case, with no lock: one attribute and a system call gevent never waits on
        with self._lock:  # (two threads of a gthread worker asking at once start one thread)
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        # Not daemon=False: a worker's graceful stop waits for its turns (gunicorn.conf.py), not for this.
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self):
        while True:
            try:
                self.target()
            except Exception:
                log.exception("the %s thread failed; it starts again", self.name)
            time.sleep(RESTART_AFTER)
