"""The daemon's memory: the unlocked key kept off the disk (mlockall, no core
dumps), and an allocator that does not map and unmap a buffer per request.

Python cannot promise that no copy of a key is left in freed memory; what it
can do is stop the kernel from writing that memory out.  ``protect`` is
called once by the process that will serve a mount, before it imports the
daemon; what it achieved is logged, not assumed.
"""

import ctypes
import functools
import logging
import os
import resource

log = logging.getLogger("e2efs")

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
PR_SET_DUMPABLE = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _libc():
    """The C library through the process's own symbols: no ``find_library``,
    which runs ``ldconfig -p`` in a subprocess (5-10 ms per call, on the mount's
    critical path)."""
    return ctypes.CDLL(None, use_errno=True)


def _may_lock_everything() -> bool:
    """MCL_FUTURE with a finite limit would make later allocations fail; only
    lock when the limit cannot be hit (root's CAP_IPC_LOCK or an unlimited limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY


def protect() -> None:
    """Lock all pages in RAM and forbid core dumps; log what held."""
    libc = _libc()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    no_core_dumps = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    locked = False
    if not _may_lock_everything():
        log.warning("not root and RLIMIT_MEMLOCK is limited: memory is not locked, key material may be "
                    "swapped to disk (use encrypted swap, or raise the limit)")
    elif _lock_all(libc):
        locked = True
    else:
        log.warning("mlockall failed (%s): key material may be swapped to disk", os.strerror(ctypes.get_errno()))
    log.info("memory locked: %s; core dumps off: %s", locked, no_core_dumps)


def _lock_all(libc) -> bool:
    """Lock every page that is in RAM now or ever will be.  MCL_ONFAULT locks
    a page the moment it is faulted in, before it can hold anything, so every
    page that holds data stays locked, as with plain mlockall; without it the
    kernel first faults in and locks the whole mapping, ~20 MiB never used,
    ~10 ms on the mount's critical path.  Kernels before 4.4 refuse
    MCL_ONFAULT: lock everything at once there."""
    return (libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0
            or libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0)


def keep_buffers_mapped() -> None:
    """Raise glibc's mmap and trim thresholds: by default every 128 KiB read
    buffer is a fresh mmap, page-faulted in (and, with mlockall, locked) and
    unmapped again per request (PYFUSE3_NOTES: the slow inline-AES row)."""
    libc = _libc()
    libc.mallopt(M_MMAP_THRESHOLD, 16 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
