"""The daemon's own permission rules (mounts without default_permissions),
against stat results, without a mount; the mount test is in test_mount_permissions."""

import errno
import os
import stat
import time
from types import SimpleNamespace

from e2efs.fs.permissions import (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, EXEC, READ,
                                  WRITE, Caller, by_mode, chmod_mode, may, may_chmod, may_chown,
                                  may_hardlink, owns, sticky_allows, times_refused)

ME, MINE, OTHER, THEIRS = 1000, 1000, 2000, 2000


def caller(uid=ME, gid=MINE, caps=(), groups=()):
    c = Caller(SimpleNamespace(uid=uid, gid=gid, pid=0))
    c._groups, c._caps = [str(g).encode() for g in groups], sum(1 << cap for cap in caps)
    return c


def st(mode, uid=ME, gid=MINE):
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_the_class_that_matches_decides_even_when_a_wider_one_would_allow():
    assert may(st(stat.S_IFREG | 0o600), READ | WRITE, caller())
    assert not may(st(stat.S_IFREG | 0o077), READ, caller())                # owner bits, not other's
    assert may(st(stat.S_IFREG | 0o640, OTHER, MINE), READ, caller())
    assert not may(st(stat.S_IFREG | 0o604, OTHER, MINE), READ, caller())   # group bits, not other's
    assert may(st(stat.S_IFREG | 0o604, OTHER, THEIRS), READ, caller())
    assert may(st(stat.S_IFREG | 0o060, OTHER, THEIRS), READ, caller(groups=[THEIRS]))
    assert not may(st(stat.S_IFDIR | 0o644), EXEC, caller())


def test_capabilities_override_the_bits_but_never_run_a_file_nobody_may_run():
    root = caller(uid=0, gid=0, caps=[CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH])
    assert may(st(stat.S_IFREG | 0o000, OTHER, THEIRS), READ | WRITE, root)
    assert may(st(stat.S_IFDIR | 0o000, OTHER, THEIRS), READ | WRITE | EXEC, root)
    assert not may(st(stat.S_IFREG | 0o644), EXEC, root)
    assert may(st(stat.S_IFREG | 0o001, OTHER, THEIRS), EXEC, root)
    reader = caller(caps=[CAP_DAC_READ_SEARCH])
    assert may(st(stat.S_IFREG | 0o000, OTHER, THEIRS), READ, reader)
    assert may(st(stat.S_IFDIR | 0o000, OTHER, THEIRS), READ | EXEC, reader)
    assert not may(st(stat.S_IFREG | 0o000, OTHER, THEIRS), WRITE, reader)
    assert not may(st(stat.S_IFREG | 0o001, OTHER, THEIRS), READ | EXEC, reader)


def test_a_caller_that_has_exited_has_no_privileges():
    gone = Caller(SimpleNamespace(uid=0, gid=0, pid=2 ** 22 + 1))      # above pid_max
    assert not gone.capable(CAP_DAC_OVERRIDE)
    assert not may(st(stat.S_IFREG | 0o444, 0, 0), WRITE, gone)
    assert Caller(SimpleNamespace(uid=0, gid=0, pid=os.getpid())).in_group(os.getgid())


def test_sticky_folders_keep_names_for_their_owners():
    sticky = st(stat.S_IFDIR | 0o1777, OTHER, THEIRS)
    assert not sticky_allows(sticky, st(stat.S_IFREG | 0o666, OTHER, THEIRS), caller())
    assert sticky_allows(sticky, st(stat.S_IFREG | 0o600), caller())
    assert sticky_allows(st(stat.S_IFDIR | 0o1777), st(stat.S_IFREG | 0o600, OTHER, THEIRS), caller())
    assert sticky_allows(sticky, st(stat.S_IFREG | 0o600, OTHER, THEIRS), caller(caps=[CAP_FOWNER]))
    assert sticky_allows(st(stat.S_IFDIR | 0o777, OTHER, THEIRS), st(stat.S_IFREG, OTHER, THEIRS), caller())


def test_owners_give_files_only_to_their_own_groups():
    mine = st(stat.S_IFREG | 0o644)
    assert may_chown(mine, ME, -1, caller())
    assert not may_chown(mine, OTHER, -1, caller())
    assert not may_chown(mine, -1, THEIRS, caller())
    assert may_chown(mine, -1, THEIRS, caller(groups=[THEIRS]))
    assert not may_chown(st(stat.S_IFREG | 0o666, OTHER, MINE), -1, MINE, caller())
    assert may_chown(st(stat.S_IFREG, OTHER, THEIRS), ME, MINE, caller(caps=[CAP_CHOWN]))


def test_chmod_is_the_owners_and_setgid_needs_the_group():
    assert owns(st(stat.S_IFREG), caller()) and not owns(st(stat.S_IFREG, OTHER), caller())
    assert owns(st(stat.S_IFREG, OTHER), caller(caps=[CAP_FOWNER]))
    setuid_theirs = st(stat.S_IFREG | 0o6766, OTHER, THEIRS)
    assert may_chmod(setuid_theirs, 0o2766, caller())      # the kernel's on a write by a non-owner
    assert may_chmod(setuid_theirs, 0o766, caller())
    assert not may_chmod(setuid_theirs, 0o777, caller())
    assert not may_chmod(st(stat.S_IFREG | 0o6744, OTHER, THEIRS), 0o744, caller())    # not a writer
    assert not may_chmod(st(stat.S_IFREG | 0o766, OTHER, THEIRS), 0o766, caller())
    assert chmod_mode(st(stat.S_IFREG, ME, THEIRS), 0o2755, caller()) == 0o755
    assert chmod_mode(st(stat.S_IFREG, ME, MINE), 0o2755, caller()) == 0o2755


def test_any_writer_may_touch_but_only_the_owner_may_set_other_times():
    now, writable = time.time_ns(), st(stat.S_IFREG | 0o666, OTHER, THEIRS)
    assert times_refused(st(stat.S_IFREG | 0o444), [1, 1], caller()) is None
    assert times_refused(writable, [now, now], caller()) is None
    assert times_refused(writable, [1, now], caller()) == errno.EPERM
    assert times_refused(st(stat.S_IFREG | 0o644, OTHER, THEIRS), [now], caller()) == errno.EACCES


def test_what_the_bits_grant_the_mounter_the_kernel_may_cache_for_all():
    assert by_mode(st(stat.S_IFDIR | 0o711, OTHER, THEIRS), EXEC, caller(uid=0, gid=0, caps=[CAP_DAC_OVERRIDE]))
    private = st(stat.S_IFDIR | 0o770, OTHER, THEIRS)
    assert may(private, EXEC, caller(groups=[THEIRS])) and not by_mode(private, EXEC, caller(groups=[THEIRS]))
    assert not by_mode(st(stat.S_IFDIR | 0o700, OTHER), EXEC, caller(caps=[CAP_DAC_OVERRIDE]))


def test_only_regular_files_lose_setid_bits_to_a_writer():
    assert not may_chmod(st(stat.S_IFDIR | 0o2777, OTHER, THEIRS), 0o777, caller())


def test_protected_hardlinks_keep_others_files_and_setid_programs_to_their_owners():
    with open("/proc/sys/fs/protected_hardlinks") as f:
        protected = f.read().strip() != "0"
    assert may_hardlink(st(stat.S_IFREG | 0o000), caller())
    assert may_hardlink(st(stat.S_IFREG | 0o666, OTHER, THEIRS), caller())
    assert may_hardlink(st(stat.S_IFREG | 0o644, OTHER, THEIRS), caller()) is not protected
    assert may_hardlink(st(stat.S_IFREG | 0o4777, OTHER, THEIRS), caller()) is not protected
    assert may_hardlink(st(stat.S_IFREG | 0o2777, OTHER, THEIRS), caller()) is not protected
    assert may_hardlink(st(stat.S_IFREG | 0o2767, OTHER, THEIRS), caller())     # setgid, not a program: locking
    assert may_hardlink(st(stat.S_IFREG | 0o644, OTHER, THEIRS), caller(caps=[CAP_FOWNER]))
