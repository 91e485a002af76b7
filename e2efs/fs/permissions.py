"""Who may do what, on a mount without ``default_permissions``.

Without ``allow_other`` the kernel lets in only processes with the mounter's
uid and gid, and leaves the mode and owner checks to the file system, as
gocryptfs does.  Letting the kernel check costs a GETATTR of the folder after
every create and unlink, because the kernel forgets a folder's mode whenever
the folder changes: a third of untar's requests (docs/PERFORMANCE.md).

The rules are the kernel's (``generic_permission``, ``may_delete``,
``setattr_prepare``), with the capabilities that override them
(capabilities(7)).  A caller's capabilities and supplementary groups are read
from /proc only when the mode bits alone say no; capabilities count only in the
daemon's own user namespace (in one of its own, any process has them all).
"""

import errno
import os
import stat
import time

READ, WRITE, EXEC = os.R_OK, os.W_OK, os.X_OK
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = range(5)
SETID = stat.S_ISUID | stat.S_ISGID
NOW_SLACK_NS = 1_000_000_000     # pyfuse3 turns UTIME_NOW into the current time


def _user_namespace(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino
    except OSError:
        return None


_OWN_USER_NAMESPACE = _user_namespace("self")


class Caller:
    """The process behind one request; ``ctx`` is pyfuse3's RequestContext."""

    __slots__ = ("uid", "gid", "pid", "_groups", "_caps")

    def __init__(self, ctx):
        self.uid, self.gid, self.pid = ctx.uid, ctx.gid, ctx.pid
        self._groups: list[bytes] | None = None     # read from /proc at the first need
        self._caps = 0

    def _read_status(self) -> None:
        self._groups = []
        caps = b""
        try:        # bytes: the process name in it need not be UTF-8
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    key, _, value = line.partition(b":")
                    if key == b"Groups":
                        self._groups = value.split()
                    elif key == b"CapEff":
                        caps = value.strip()
        except OSError:
            return      # a caller that has exited has no privileges left to use
        if caps and _OWN_USER_NAMESPACE is not None and _user_namespace(self.pid) == _OWN_USER_NAMESPACE:
            self._caps = int(caps, 16)

    def in_group(self, gid: int) -> bool:
        if gid == self.gid:
            return True
        if self._groups is None:
            self._read_status()
        return str(gid).encode() in self._groups

    def capable(self, cap: int) -> bool:
        if self._groups is None:
            self._read_status()
        return bool(self._caps >> cap & 1)


def _class_bits(st: os.stat_result, caller: Caller, in_group) -> int:
    """The rwx bits of the class (owner, group, other) the caller falls in."""
    if st.st_uid == caller.uid:
        return st.st_mode >> 6 & 7
    if in_group(st.st_gid):
        return st.st_mode >> 3 & 7
    return st.st_mode & 7


def by_mode(st: os.stat_result, want: int, caller: Caller) -> bool:
    """The mode bits alone grant ``want`` to the mounter's uid and primary group,
    so to every process the kernel lets in: what one was granted, the kernel may
    cache for all."""
    return _class_bits(st, caller, lambda gid: gid == caller.gid) & want == want


def may(st: os.stat_result, want: int, caller: Caller) -> bool:
    """``want``: READ | WRITE | EXEC bits, as for access(2)."""
    if _class_bits(st, caller, caller.in_group) & want == want:
        return True
    is_dir = stat.S_ISDIR(st.st_mode)
    if want & EXEC and not is_dir and not st.st_mode & 0o111:
        return False            # not even root runs a file nobody may run
    if caller.capable(CAP_DAC_OVERRIDE):
        return True
    return not want & WRITE and (is_dir or not want & EXEC) and caller.capable(CAP_DAC_READ_SEARCH)


def owns(st: os.stat_result, caller: Caller) -> bool:
    """May change the mode and set the times (``inode_owner_or_capable``)."""
    return st.st_uid == caller.uid or caller.capable(CAP_FOWNER)


def takes_setid_away(st: os.stat_result, mode: int) -> bool:
    """``mode`` is a regular file's mode less setuid or setgid: what the kernel
    asks for after a write, truncate or chown by a non-owner (here as a chmod
    like any other)."""
    old, new = stat.S_IMODE(st.st_mode), stat.S_IMODE(mode)
    return stat.S_ISREG(st.st_mode) and new != old and not new & ~old and new | SETID == old | SETID


def may_chmod(st: os.stat_result, mode: int, caller: Caller) -> bool:
    """The owner's; a writer's too where it only takes setuid/setgid away."""
    return owns(st, caller) or (takes_setid_away(st, mode) and may(st, WRITE, caller))


def may_hardlink(st: os.stat_result, caller: Caller) -> bool:
    """fs.protected_hardlinks: a file one may not read and write, or a setuid
    or setgid program, only its owner may link."""
    if owns(st, caller):
        return True
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as f:
            if f.read().strip() == b"0":
                return True
    except OSError:
        pass
    mode = st.st_mode
    return (stat.S_ISREG(mode) and not mode & stat.S_ISUID and not (mode & stat.S_ISGID and mode & stat.S_IXGRP)
            and may(st, READ | WRITE, caller))


def sticky_allows(folder: os.stat_result, st: os.stat_result, caller: Caller) -> bool:
    """In a sticky folder only the owner of the entry or of the folder may remove it."""
    return (not folder.st_mode & stat.S_ISVTX or caller.uid in (folder.st_uid, st.st_uid)
            or caller.capable(CAP_FOWNER))


def may_chown(st: os.stat_result, uid: int, gid: int, caller: Caller) -> bool:
    """``uid``/``gid`` -1: unchanged.  The owner may only give the file to one of his groups."""
    as_owner = (st.st_uid == caller.uid and uid in (-1, st.st_uid)
                and (gid in (-1, st.st_gid) or caller.in_group(gid)))
    return as_owner or caller.capable(CAP_CHOWN)


def chmod_mode(st: os.stat_result, mode: int, caller: Caller) -> int:
    """The setgid bit falls away unless the caller is in the file's group."""
    if mode & stat.S_ISGID and not caller.in_group(st.st_gid) and not caller.capable(CAP_FSETID):
        return mode & ~stat.S_ISGID
    return mode


def times_refused(st: os.stat_result, times_ns: list[int], caller: Caller) -> int | None:
    """The errno that refuses setting these times, if any: anyone who may write
    the file may set its times to now (touch); other times are for its owner."""
    if owns(st, caller):
        return None
    now = time.time_ns()
    if any(abs(t - now) >= NOW_SLACK_NS for t in times_ns):
        return errno.EPERM
    return None if may(st, WRITE, caller) else errno.EACCES
