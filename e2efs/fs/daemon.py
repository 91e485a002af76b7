"""Running one mount: pyfuse3 session, trio loop, signals and the idle lock.

``run`` returns only after the file system is unmounted and every open file
has been flushed and committed to the vault.
"""

import logging
import os
import signal
import time

import pyfuse3
import trio

from .. import memlock
from ..errors import MountFailed
from ..tree import Tree
from ..vault import Vault
from . import requestloop
from .operations import Operations

log = logging.getLogger("e2efs")

IDLE_CHECK_SECONDS = 5.0
READ_AHEAD_KB = 1024


def mount_options(vault_root: str, read_only: bool, allow_other: bool) -> set[str]:
    """``mount`` shows the vault folder as the source (option syntax permitting).
    Without allow_other only the mounter's processes come in, and the daemon
    checks modes itself (fs/permissions.py): a kernel that checks fetches the
    folder's attributes again after every create and unlink."""
    source = vault_root if not set(vault_root) & set(",\\ \t\n") else "e2efs"
    options = {f"fsname={source}", "subtype=e2efs", "auto_unmount"}
    if read_only:
        options.add("ro")
    if allow_other:     # other users come in: the kernel checks, from the attributes it holds
        options |= {"allow_other", "default_permissions"}
    return options


def run(vault: Vault, mountpoint: str, *, read_only: bool = False, allow_other: bool = False,
        idle_seconds: float = 0, ready=lambda: None) -> None:
    """Mount, call ``ready()`` once the mount is live, serve until unmounted.
    The caller locks its memory (``memlock.protect``) before importing this
    module: the ~0.15 s of imports must not run with the key in unlocked memory."""
    os.umask(0)        # modes are stored exactly as the kernel hands them to us
    memlock.keep_buffers_mapped()
    ops = Operations(Tree(vault), read_only, check_permissions=not allow_other)
    try:
        pyfuse3.init(ops, mountpoint, mount_options(vault.root, read_only, allow_other))
    except RuntimeError as exc:
        raise MountFailed(f"cannot mount at {mountpoint}: {exc}") from None
    try:
        ready()
        trio.run(_serve, ops, idle_seconds, mountpoint)
    finally:
        ops.invalidator.close()
        try:
            ops.files.close_all()
        finally:
            pyfuse3.close(unmount=True)
            vault.keys.wipe()
        log.info("unmounted %s; key wiped from memory", mountpoint)


def raise_read_ahead(mountpoint: str) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB: fewer, larger READ
    requests, each a single preadv + decrypt of a run of blocks (PYFUSE3_NOTES:
    cold reads ~1000 -> ~1800 MB/s).  Only after INIT, since the kernel caps
    read-ahead at the negotiated value then, and before the next request: a
    file takes the read-ahead it is opened with, so a program that opened its
    file first would read all of it in 128 KiB requests.  Needs root; without
    it reads still work."""
    device = _device_of(mountpoint)
    if device is None:
        log.info("read-ahead left at the default (%s not in mountinfo)", mountpoint)
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("read-ahead left at the default (%s)", exc.strerror)


def _device_of(mountpoint: str) -> str | None:
    """major:minor of our mount, from mountinfo: stat() on the mount point would
    wait for this very process to answer it."""
    escaped = "".join({"\\": "\\134", " ": "\\040", "\t": "\\011", "\n": "\\012"}.get(c, c)
                      for c in mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == escaped:
                found = fields[2]          # the last one is the mount on top
    return found


async def _serve(ops: Operations, idle_seconds: float, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, ops)
        if idle_seconds:
            nursery.start_soon(_lock_when_idle, ops, idle_seconds)
        await requestloop.serve(on_quiet=ops.on_quiet, after_init=lambda: raise_read_ahead(mountpoint))
        nursery.cancel_scope.cancel()


async def _on_signals(ops: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            await _stop_answering(ops)
            return


async def _stop_answering(ops: Operations) -> None:
    """End the request loop; no entry invalidation may still be waiting on a
    request then (notify.py)."""
    await ops.invalidator.stop()
    pyfuse3.terminate()


async def _lock_when_idle(ops: Operations, idle_seconds: float) -> None:
    while True:
        await trio.sleep(min(idle_seconds, IDLE_CHECK_SECONDS))
        idle = time.monotonic() - ops.last_access
        if idle >= idle_seconds and not ops.files.files:
            log.info("idle for %.0f s: locking", idle)
            await _stop_answering(ops)
            return
