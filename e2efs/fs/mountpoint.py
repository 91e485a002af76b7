"""Checks around a mount: the mount point live, stale ("Transport endpoint is
not connected") or free; the vault folder writable.  No FUSE library needed."""

import errno
import os
import subprocess


def is_mounted(path: str) -> str | None:
    """"live", "stale" (dead FUSE daemon) or None.

    The mount table says whether anything is mounted at ``path`` (its real
    path); opening the directory says whether the daemon still answers: a
    stat() alone can be answered from the kernel's attribute cache for a
    moment after the daemon died."""
    if fstype(path) is None:
        return None
    state = daemon_state(path)
    # The table and the folder are read one after the other: a mount removed in
    # between (a stale one cleaned, by e2efs mount or its auto_unmount helper)
    # leaves the bare folder, which lists fine; the table says so by now.
    return state if fstype(path) is not None else None


def daemon_state(path: str) -> str:
    """"live" or "stale" for a path the mount table lists.  A daemon that
    answers with an error (EIO once its vault folder is gone) is live: it can
    still be unmounted."""
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):     # the latter: in flight at the abort
            return "stale"
    return "live"


def vault_read_only(root: str) -> bool:
    try:
        return bool(os.statvfs(root).f_flag & os.ST_RDONLY) or not os.access(root, os.W_OK)
    except OSError:
        return False


def fstype(path: str) -> str | None:
    """The file system type /proc/self/mounts gives for ``path``."""
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and _unescape(fields[1]) == path:
            found = fields[2]
    return found


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fusermount(path: str, lazy: bool = False) -> subprocess.CompletedProcess:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + ["--", path]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
