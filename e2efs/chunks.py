"""Large files cut into 1 MiB chunks for a thread per core.

AES-GCM (cryptography releases the GIL), ``preadv`` and ``pwrite`` all run
outside the GIL, so the chunks of one file can be sealed or opened side by
side: import, export and rekey do.  A chunk is whole blocks (``CHUNK`` is a
multiple of every block size), so no two threads touch one block.
"""

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait

CHUNK = 1 << 20
PARALLEL_MIN = 4 * CHUNK      # smaller files: handing chunks to threads costs more than it saves
IN_FLIGHT = 16                # chunks handed to the pool and not yet done, at most


def pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))), thread_name_prefix="e2efs-chunk")


def each_chunk(workers: ThreadPoolExecutor, size: int, fn) -> None:
    """``fn(offset)`` for the offset of every chunk of a ``size``-byte file: on
    ``workers`` if the file is large enough, else in this thread."""
    offsets = range(0, size, CHUNK)
    if size < PARALLEL_MIN:
        for offset in offsets:
            fn(offset)
        return
    window: deque = deque()
    try:
        for offset in offsets:
            if len(window) == IN_FLIGHT:        # a 100 GiB file is 100 000 chunks
                window.popleft().result()
            window.append(workers.submit(fn, offset))
        while window:
            window.popleft().result()
    finally:
        # the first failure is raised once no chunk runs any more: they write to
        # descriptors the caller closes next, and a second Ctrl-C must not change that
        for f in window:
            f.cancel()
        while True:
            try:
                wait(window)
                break
            except KeyboardInterrupt:
                continue
