"""pyfuse3's request loop with a cheaper wait for the next request.

``pyfuse3.main()`` waits for every request through trio: a lock handed
between two worker tasks, an epoll registration, a task switch.  That costs
about as much daemon CPU as answering a small request (42 vs 20 µs per
STATFS round trip, measured; docs/PERFORMANCE.md).  Our handlers never
await, so one worker is enough, and while requests keep coming it waits in
poll(2) on the FUSE device itself.  trio gets the thread back after
``QUIET_MS`` without a request and after every ``YIELD_EVERY`` requests, so
signals, the idle lock and read-ahead set-up still run promptly.

While requests come in quick succession (an app's close-write-chmod-utime of
each file, SQLite's journal dance) the next one is looked for without
sleeping for ``SPIN_NS`` first: a program waiting for our reply sends its
next request within microseconds, and a sleeping daemon costs a wake-up on
the other CPU for each of them (untar 2000 files: 2.0 -> 1.2 s, daemon CPU
unchanged).  100 µs, not less: tar copying a file's data into the page cache
between CREATE and its next request takes 50-100 µs, and a daemon asleep by
then turns that gap into 100-1000 µs (untar 1.25 -> 1.10 s).  A gap longer
than ``2 * SPIN_NS``, or a quiet spell, stops the spinning until requests
come quickly again: requests that come one at a time cost no spinning, a
burst followed by a pause costs one ``SPIN_NS``, and the most it can waste
is ``SPIN_NS`` per request while gaps stay in the narrow band between one
and two ``SPIN_NS``.  The spin yields the CPU between polls: with two CPUs,
a plain spin cost sequential writes ~6 % (dd and the kernel's writeback
need the CPU to produce the next request).

``after_init`` runs once the INIT exchange is over, before the next request
is read (the read-ahead: the kernel caps it at INIT, and a file keeps what
it is opened with).

Work that can wait for a pause (``on_quiet``: confirming listings after a
burst of our own changes, tree.py) runs in a task of its own once a quiet
spell starts, and again when it asks to: not in a request's path.  The wait
for the next request is never cancelled for it: ``pyfuse3.terminate()`` wakes
only a task that is waiting at that moment.

This replaces ``pyfuse3._wait_fuse_readable``, a private function that
pyfuse3's loop looks up by name on every request; without it (another
pyfuse3), the stock loop runs and the log says so.
"""

import logging
import os
import select
import time
from typing import Callable

import pyfuse3
import trio

log = logging.getLogger("e2efs")

QUIET_MS = 20
SPIN_NS = 100_000
YIELD_EVERY = 64
FUSE_DEVICE = "/dev/fuse"


def fuse_device_fd() -> int | None:
    """The session's descriptor: pyfuse3 keeps it private, and it is the only
    open /dev/fuse of a daemon process."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == FUSE_DEVICE:
                return int(name)
        except OSError:
            continue
    return None


class _PollingWait:
    """Drop-in for ``pyfuse3._wait_fuse_readable``: True when a request can be
    read, False when the session is closing."""

    def __init__(self, fd: int, on_quiet: Callable[[], float | None] = lambda: None,
                 after_init: Callable[[], None] = lambda: None):
        self.fd = fd
        self.on_quiet = on_quiet
        self.after_init = after_init
        self.quiet = trio.Event()       # set when a quiet spell starts
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.served = 0
        self.spin = False

    async def __call__(self) -> bool:
        self.served += 1
        if self.served == 2:        # the first request, INIT, is answered
            _guarded(self.after_init)
        if self.served % YIELD_EVERY:
            start = time.perf_counter_ns()
            if self.spin and self._spin(start + SPIN_NS):
                return True
            if self.poller.poll(QUIET_MS):
                self.spin = time.perf_counter_ns() - start < 2 * SPIN_NS
                return True
            self.spin = False       # after a quiet spell the next request is not spun for
            self.quiet.set()
        try:
            await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:       # pyfuse3.terminate()
            return False
        return True

    async def quiet_worker(self) -> None:
        """Run ``on_quiet`` when a quiet spell starts and again when it asks to
        (it returns the seconds until then, or None); it runs while the request
        loop waits in trio, so a request that comes meanwhile waits for one turn
        of it at most."""
        while True:
            await self.quiet.wait()
            self.quiet = trio.Event()
            again = _guarded(self.on_quiet)
            while again is not None:
                await trio.sleep(again)
                again = _guarded(self.on_quiet)

    def _spin(self, until_ns: int) -> bool:
        """True if a request arrives before ``until_ns``."""
        poll = self.poller.poll
        while not poll(0):
            if time.perf_counter_ns() > until_ns:
                return False
            os.sched_yield()        # a writer that needs this CPU to send the next request gets it
        return True


def _guarded(work):
    """Work of ours run from the request loop must never stop the mount."""
    try:
        return work()
    except Exception:
        log.exception("work between requests failed")
        return None


async def serve(on_quiet: Callable[[], float | None] = lambda: None,
                after_init: Callable[[], None] = lambda: None) -> None:
    """Answer requests until the file system is unmounted or terminated; call
    ``after_init`` once INIT is answered and ``on_quiet`` in pauses (see
    ``_PollingWait``; pyfuse3's own loop, the fallback, calls neither)."""
    fd = fuse_device_fd()
    stock = getattr(pyfuse3, "_wait_fuse_readable", None)
    if fd is None or stock is None:
        log.info("request loop: pyfuse3's own (no FUSE descriptor or no wait hook found); "
                 "read-ahead left at the default")
        await pyfuse3.main()
        return
    log.info("request loop: polling the FUSE device directly")
    await trio.lowlevel.checkpoint()    # tasks started before us (signal handlers) run first
    wait = pyfuse3._wait_fuse_readable = _PollingWait(fd, on_quiet, after_init)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait.quiet_worker)
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3._wait_fuse_readable = stock
