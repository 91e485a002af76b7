"""Asking the kernel to drop directory entries, on a thread of our own.

``pyfuse3.invalidate_entry`` blocks while a request on the entry's folder is
pending (a ``find`` in the middle of a READDIR holds the folder's lock), so it
runs on a worker thread, as ``invalidate_entry_async`` does.  pyfuse3's own
worker cannot be told to stop, though: when the daemon stops answering
(SIGTERM, the idle lock) with an invalidation waiting on such a request, both
wait for good, and the program in the folder with them, beyond SIGKILL.  Here
the daemon first ``stop``s the worker: the queue is dropped, and the one
invalidation under way finishes while the request loop still answers.
"""

import collections
import threading

import pyfuse3
import trio

STOP_POLL_SECONDS = 0.005
CLOSE_WAIT_SECONDS = 1.0


class EntryInvalidator:
    def __init__(self):
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def ask(self, parent: int, name: bytes) -> None:
        """Queue (parent inode, name) for the kernel to forget; a failure is
        harmless (the entry stays until its timeout) and not reported."""
        with self._lock:
            if self._stopping:
                return
            self._queue.append((parent, name))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="e2efs-invalidate", daemon=True)
                self._thread.start()
        self._wake.set()

    async def stop(self) -> None:
        """Before the daemon stops answering requests: drop what is queued and
        let the invalidation under way finish, serving meanwhile."""
        self._halt()
        while not self._idle.is_set():
            await trio.sleep(STOP_POLL_SECONDS)

    def close(self) -> None:
        """Once no request will be answered again (the kernel has unmounted us,
        which ends any invalidation still waiting): before the session goes."""
        self._halt()
        self._idle.wait(CLOSE_WAIT_SECONDS)

    def _halt(self) -> None:
        with self._lock:
            self._stopping = True
            self._queue.clear()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if self._stopping:
                    return
                if not self._queue:
                    self._wake.clear()
                    continue
                parent, name = self._queue.popleft()
                self._idle.clear()
            try:
                pyfuse3.invalidate_entry(parent, name)
            except OSError:
                pass
            finally:
                self._idle.set()
