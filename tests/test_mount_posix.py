"""POSIX behaviour of each operation on a real mount, and the mount life cycle."""

import ctypes
import errno
import os
import stat
import subprocess
import time

import pytest

from e2efs.errors import MountpointError, WrongSecret

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_files_survive_remount(mounted):
    big = os.urandom(300_000)
    write(mounted.p("big"), big)
    os.mkdir(mounted.p("d"))
    write(mounted.p("d", "small"), b"hi")
    write(mounted.p("empty"), b"")
    mounted.remount()
    assert read(mounted.p("big")) == big
    assert read(mounted.p("d", "small")) == b"hi"
    assert read(mounted.p("empty")) == b""
    assert sorted(os.listdir(mounted.path)) == ["big", "d", "empty"]


def test_atomic_save_with_directory_fsync(mounted):
    """write temp, fsync, rename over, fsync the folder: the pattern of every careful
    app; the folder's descriptor then still lists it."""
    os.mkdir(mounted.p("d"))
    write(mounted.p("d", "state.json"), b"old")
    with open(mounted.p("d", "state.json.tmp"), "wb") as f:
        f.write(b"new")
        f.flush()
        os.fsync(f.fileno())
    os.rename(mounted.p("d", "state.json.tmp"), mounted.p("d", "state.json"))
    dfd = os.open(mounted.p("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
        assert os.listdir(dfd) == ["state.json"]
    finally:
        os.close(dfd)
    mounted.remount()
    assert read(mounted.p("d", "state.json")) == b"new"


@pytest.mark.parametrize("already_open", [False, True])
def test_o_trunc_with_o_rdonly_truncates_as_linux_does(mounted, already_open):
    """Linux truncates on O_RDONLY|O_TRUNC (with write permission), and the kernel
    has already dropped its size and pages: the vault must follow."""
    path = mounted.p("f")
    write(path, b"r" * 100_000)
    other = os.open(path, os.O_RDWR) if already_open else None
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))
    finally:
        if other is not None:
            os.close(other)
    assert os.stat(path).st_size == 0
    mounted.remount()
    assert read(path) == b""


def test_random_access_append_sparse_and_truncate(mounted):
    path = mounted.p("f")
    ref = bytearray(os.urandom(10_000))
    write(path, bytes(ref))
    with open(path, "r+b") as f:
        f.seek(5000)
        f.write(b"X" * 3000)
        ref[5000:8000] = b"X" * 3000
        f.seek(20_000)                      # sparse write past EOF
        f.write(b"tail")
        ref += bytes(10_000) + b"tail"
    with open(path, "ab") as f:
        f.write(b"appended")
        ref += b"appended"
    assert read(path) == bytes(ref)
    os.truncate(path, 4097)
    assert read(path) == bytes(ref[:4097])
    os.truncate(path, 9000)
    assert read(path) == bytes(ref[:4097]) + bytes(9000 - 4097)
    mounted.remount()
    assert read(path) == bytes(ref[:4097]) + bytes(9000 - 4097)
    assert os.stat(path).st_size == 9000


def test_two_handles_share_one_file(mounted):
    path = mounted.p("shared")
    write(path, b"a" * 5000)
    w = os.open(path, os.O_WRONLY)
    r = os.open(path, os.O_RDONLY)
    try:
        os.pwrite(w, b"b" * 100, 4990)
        assert os.pread(r, 200, 4950) == b"a" * 40 + b"b" * 100
        assert os.fstat(r).st_size == 5090
    finally:
        os.close(w)
        os.close(r)
    assert read(path) == b"a" * 4990 + b"b" * 100


def test_modes_owners_and_times_are_kept_exactly(mounted):
    path = mounted.p("f")
    write(path, b"x")
    os.chown(path, 1234, 5678)          # before chmod: chown clears set-user-ID, as on ext4
    os.chmod(path, 0o4751)
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    os.mkdir(mounted.p("d"), 0o700)
    os.chmod(mounted.p("d"), 0o1777)
    os.utime(mounted.p("d"), ns=(3_000_000_001, 4_000_000_002))
    mounted.remount()
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o4751 and stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    dst = os.stat(mounted.p("d"))
    assert stat.S_IMODE(dst.st_mode) == 0o1777
    assert dst.st_mtime_ns == 4_000_000_002


def test_utime_omit_and_now(mounted):
    path = mounted.p("f")
    write(path, b"x")
    os.utime(path, ns=(5_000_000_000, 6_000_000_000))
    fd = os.open(path, os.O_RDONLY)
    try:
        # UTIME_OMIT for atime, UTIME_NOW for mtime
        times = (ctypes.c_long * 4)(0, (1 << 30) - 2, 0, (1 << 30) - 1)
        assert _libc.futimens(fd, times) == 0
    finally:
        os.close(fd)
    st = os.stat(path)
    assert st.st_atime_ns == 5_000_000_000
    assert abs(st.st_mtime_ns / 1e9 - time.time()) < 5


def test_mtime_set_while_open_survives_close(mounted):
    path = mounted.p("f")
    with open(path, "wb") as f:
        f.write(b"data" * 3000)
        f.flush()
        os.utime(f.fileno(), ns=(7_000_000_000, 8_000_000_000))
        assert os.stat(path).st_mtime_ns == 8_000_000_000      # kept in memory until close
    assert os.stat(path).st_mtime_ns == 8_000_000_000
    mounted.remount()
    assert os.stat(path).st_mtime_ns == 8_000_000_000


def test_times_set_again_after_a_write_survive_close(mounted):
    # the daemon sets kept times on the backing file once per change: the same
    # times set again after a write moved the mtime must still reach the vault
    path = mounted.p("f")
    with open(path, "wb") as f:
        f.write(b"data" * 3000)
        os.utime(f.fileno(), ns=(7_000_000_000, 8_000_000_000))
        os.fsync(f.fileno())
        f.write(b"more")
        f.flush()
        os.fsync(f.fileno())
        os.utime(f.fileno(), ns=(7_000_000_000, 8_000_000_000))
    mounted.remount()
    st = os.stat(path)
    assert (st.st_size, st.st_atime_ns, st.st_mtime_ns) == (12004, 7_000_000_000, 8_000_000_000)


def test_new_file_mode_follows_umask(mounted):
    old = os.umask(0o027)
    try:
        fd = os.open(mounted.p("f"), os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.mkdir(mounted.p("d"), 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(mounted.p("f")).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(mounted.p("d")).st_mode) == 0o750


def test_large_directory_lists_every_entry_once(mounted):
    names = {f"file-{i:04d}-{'x' * (i % 50)}" for i in range(1500)}
    for name in names:
        os.close(os.open(mounted.p(name), os.O_CREAT | os.O_WRONLY))
    assert sorted(os.listdir(mounted.path)) == sorted(names)
    with os.scandir(mounted.path) as it:
        seen = []
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:   # entries added during a listing must not make it loop or repeat
                os.close(os.open(mounted.p("added-during-listing"), os.O_CREAT | os.O_WRONLY))
    assert len(seen) == len(set(seen))
    assert set(seen) >= names
    mounted.remount()
    assert len(os.listdir(mounted.path)) == 1501


def test_new_files_still_open_are_listed_and_keep_their_folder(mounted):
    """A file being written exists only as a temp file until its close:
    it must still be listed, keep its folder non-empty, and leave the
    listing when it is renamed away or unlinked."""
    os.mkdir(mounted.p("d"))
    os.mkdir(mounted.p("other"))
    write(mounted.p("d", "old"), b"old version")
    a = os.open(mounted.p("d", "a"), os.O_CREAT | os.O_WRONLY)
    b = os.open(mounted.p("d", "b"), os.O_CREAT | os.O_RDWR)
    rewritten = os.open(mounted.p("d", "old"), os.O_TRUNC | os.O_RDWR)     # a temp file too
    try:
        os.write(a, b"a")
        assert sorted(os.listdir(mounted.p("d"))) == ["a", "b", "old"]
        assert os.listdir(mounted.p("other")) == []
        with pytest.raises(OSError) as e:
            os.rmdir(mounted.p("d"))
        assert e.value.errno == errno.ENOTEMPTY
        os.rename(mounted.p("d", "a"), mounted.p("other", "a"))
        os.unlink(mounted.p("d", "b"))
        os.unlink(mounted.p("d", "old"))
        assert os.listdir(mounted.p("d")) == []
        assert os.listdir(mounted.p("other")) == ["a"]
        os.rmdir(mounted.p("d"))
        for fd in (b, rewritten):           # unlinked, yet still a working file
            os.write(fd, b"still here")
            assert os.pread(fd, 100, 0) == b"still here"
    finally:
        for fd in (a, b, rewritten):
            os.close(fd)
    assert read(mounted.p("other", "a")) == b"a"
    mounted.unmount()
    left = [f for _, _, files in os.walk(mounted.vault) for f in files if f.startswith(".e2efs-tmp")]
    assert left == []


def test_rename_over_files_still_being_written(mounted):
    """The replaced file lives on for its open handles, and vanishes at close."""
    write(mounted.p("new"), b"new version")
    write(mounted.p("old"), b"old version")
    pending = os.open(mounted.p("pending"), os.O_CREAT | os.O_RDWR)      # only a temp file so far
    rewritten = os.open(mounted.p("old"), os.O_TRUNC | os.O_RDWR)        # its new version: a temp file
    try:
        os.write(pending, b"p")
        os.write(rewritten, b"r")
        os.rename(mounted.p("new"), mounted.p("pending"))
        write(mounted.p("second"), b"second")
        os.rename(mounted.p("second"), mounted.p("old"))
        assert read(mounted.p("pending")) == b"new version"
        assert read(mounted.p("old")) == b"second"
        for fd in (pending, rewritten):
            os.write(fd, b" more")
            assert os.pread(fd, 100, 0) in (b"p more", b"r more")
    finally:
        os.close(pending)
        os.close(rewritten)
    assert sorted(os.listdir(mounted.path)) == ["old", "pending"]
    mounted.remount()
    assert read(mounted.p("pending")) == b"new version"
    assert read(mounted.p("old")) == b"second"
    left = [f for _, _, files in os.walk(mounted.vault) for f in files if f.startswith(".e2efs-tmp")]
    assert left == []


def test_mkdir_rmdir_unlink_errors(mounted):
    os.mkdir(mounted.p("d"))
    write(mounted.p("d", "f"), b"x")
    with pytest.raises(FileExistsError):
        os.mkdir(mounted.p("d"))
    with pytest.raises(OSError) as e:
        os.rmdir(mounted.p("d"))
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        os.rmdir(mounted.p("d", "f"))
    with pytest.raises(IsADirectoryError):
        os.unlink(mounted.p("d"))
    with pytest.raises(FileNotFoundError):
        os.unlink(mounted.p("nope"))
    with pytest.raises(FileNotFoundError):
        os.stat(mounted.p("nope", "x"))
    with pytest.raises(NotADirectoryError):
        os.stat(mounted.p("d", "f", "x"))
    with pytest.raises(FileExistsError):
        os.open(mounted.p("d", "f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.unlink(mounted.p("d", "f"))
    os.rmdir(mounted.p("d"))
    assert os.listdir(mounted.path) == []


def test_names_up_to_255_bytes(mounted):
    name = "é" * 127 + "x"               # 255 bytes
    write(mounted.p(name), b"long")
    os.mkdir(mounted.p("d" * 255))
    for bad in ("y" * 256, "é" * 128):
        with pytest.raises(OSError) as e:
            write(mounted.p(bad), b"")
        assert e.value.errno == errno.ENAMETOOLONG
    mounted.remount()
    assert read(mounted.p(name)) == b"long"
    assert sorted(os.listdir(mounted.path)) == sorted([name, "d" * 255])


def test_rename_overwrite_noreplace_exchange(mounted):
    write(mounted.p("a"), b"A")
    write(mounted.p("b"), b"B")
    os.mkdir(mounted.p("d"))
    os.mkdir(mounted.p("e"))
    write(mounted.p("e", "x"), b"")
    with pytest.raises(FileExistsError):
        renameat2(mounted.p("a"), mounted.p("b"), 1)      # RENAME_NOREPLACE
    with pytest.raises(OSError) as e:
        renameat2(mounted.p("a"), mounted.p("b"), 2)      # RENAME_EXCHANGE
    assert e.value.errno == errno.EINVAL
    renameat2(mounted.p("a"), mounted.p("c"), 1)
    os.rename(mounted.p("c"), mounted.p("b"))
    assert read(mounted.p("b")) == b"A"
    with pytest.raises(IsADirectoryError):
        os.rename(mounted.p("b"), mounted.p("d"))
    with pytest.raises(NotADirectoryError):
        os.rename(mounted.p("d"), mounted.p("b"))
    with pytest.raises(OSError) as e:
        os.rename(mounted.p("d"), mounted.p("e"))
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(mounted.p("e"), mounted.p("d"))             # over an empty directory
    os.rename(mounted.p("b"), mounted.p("d", "moved"))
    os.rename(mounted.p("d"), mounted.p("renamed-dir"))
    mounted.remount()
    assert sorted(os.listdir(mounted.path)) == ["renamed-dir"]
    assert sorted(os.listdir(mounted.p("renamed-dir"))) == ["moved", "x"]
    assert read(mounted.p("renamed-dir", "moved")) == b"A"


def test_symlinks_and_hard_links(mounted):
    target = "t/" * 2047 + "x"                             # 4095 bytes
    os.symlink(target, mounted.p("long"))
    os.symlink("data", mounted.p("short"))
    with pytest.raises(OSError) as e:
        os.symlink("y" * 4096, mounted.p("toolong"))
    assert e.value.errno == errno.ENAMETOOLONG
    write(mounted.p("data"), b"linked")
    os.link(mounted.p("data"), mounted.p("hard"))
    assert os.stat(mounted.p("data")).st_nlink == 2
    assert os.stat(mounted.p("hard")).st_ino == os.stat(mounted.p("data")).st_ino
    write(mounted.p("hard"), b"changed", "r+b")
    assert read(mounted.p("data")) == b"changed"
    mounted.remount()
    assert os.readlink(mounted.p("long")) == target
    st = os.lstat(mounted.p("short"))
    assert stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777 and st.st_size == 4
    assert read(mounted.p("short")) == b"changed"
    os.unlink(mounted.p("data"))
    assert os.stat(mounted.p("hard")).st_nlink == 1
    assert read(mounted.p("hard")) == b"changed"


def test_special_files(mounted):
    os.mkfifo(mounted.p("fifo"), 0o640)
    os.mknod(mounted.p("chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    mounted.remount()
    st = os.stat(mounted.p("fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    st = os.stat(mounted.p("chr"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_unlinked_open_file_stays_readable(mounted):
    write(mounted.p("f"), b"still here")
    with open(mounted.p("f"), "rb") as f:
        os.unlink(mounted.p("f"))
        assert f.read() == b"still here"
    assert os.listdir(mounted.path) == []
    with open(mounted.p("g"), "wb") as f:     # new, unlinked before it was ever committed
        f.write(b"gone")
        os.unlink(mounted.p("g"))
    mounted.remount()
    assert os.listdir(mounted.path) == []
    assert [n for n in os.listdir(mounted.vault) if not n.startswith("e2efs.vault")] == []


def test_statfs(mounted):
    sv = os.statvfs(mounted.path)
    assert sv.f_namemax == 255 and sv.f_blocks > 0


def test_read_only_mount(vault_mount):
    vault_mount.mount()
    write(vault_mount.p("f"), b"x")
    vault_mount.remount("--read-only")
    assert read(vault_mount.p("f")) == b"x"
    for action in (lambda: write(vault_mount.p("g"), b""), lambda: os.mkdir(vault_mount.p("d")),
                   lambda: os.unlink(vault_mount.p("f")), lambda: write(vault_mount.p("f"), b"y", "r+b")):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.EROFS


# -- life cycle ------------------------------------------------------------------

def test_daemon_mount_status_unmount(vault_mount):
    m = vault_mount
    done = m.cli("mount", m.vault, m.path, "--password-file", m.password_file)
    assert done.stdout.strip() == f"mounted {m.vault} at {m.path}"
    assert os.path.ismount(m.path)
    write(m.p("f"), b"via daemon")
    status = m.cli("status").stdout
    assert m.path in status and m.vault in status
    pid = int(status.split("pid ")[1].split()[0])
    done = m.cli("lock", m.path)
    assert not os.path.ismount(m.path)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]
    assert "no vault is mounted" in m.cli("status").stdout
    m.cli("mount", m.vault, m.path, "--password-file", m.password_file)
    assert read(m.p("f")) == b"via daemon"
    m.cli("unmount", m.path)
    assert not os.path.ismount(m.path)


def test_mount_errors_are_one_line(vault_mount, tmp_path):
    m = vault_mount
    bad_pw = tmp_path / "bad"
    bad_pw.write_text("wrong password")
    t = time.monotonic()
    done = m.cli("mount", m.vault, m.path, "--password-file", str(bad_pw), check=False)
    assert done.returncode == WrongSecret.exit_code and time.monotonic() - t < 10
    assert len(done.stderr.strip().splitlines()) == 1 and not os.path.ismount(m.path)
    (tmp_path / "file").write_text("")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    inside = os.path.join(m.vault, "plain")          # the sync client would upload what the mount shows
    os.mkdir(inside)
    try:
        for target in (str(tmp_path / "missing"), str(tmp_path / "file"), str(full), inside):
            done = m.cli("mount", m.vault, target, "--password-file", m.password_file, check=False)
            assert done.returncode == MountpointError.exit_code, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
    finally:
        if os.path.ismount(inside):         # a regression must not leave a mount behind
            m.cli("unmount", inside, check=False)
    os.rmdir(inside)
    m.mount()
    done = m.cli("mount", m.vault, m.path, "--password-file", m.password_file, check=False)
    assert done.returncode == MountpointError.exit_code and "already" in done.stderr
    done = m.cli("unmount", str(tmp_path / "full"), check=False)
    assert done.returncode == MountpointError.exit_code


def test_stale_mount_is_cleaned_by_next_mount(vault_mount):
    m = vault_mount
    m.mount()
    write(m.p("f"), b"before crash")
    m.proc.kill()
    m.proc.wait()
    m.proc = None
    m.mount()                                   # auto_unmount or stale cleanup
    assert read(m.p("f")) == b"before crash"


def test_unmount_leaves_a_dead_mount_of_another_file_system_alone(tmp_path):
    """'e2efs unmount' cleans up after a dead e2efs daemon, but a dead sshfs
    (here: a bare pyfuse3 file system killed with SIGKILL) is not its to touch."""
    import sys
    from e2efs.fs.mountpoint import fstype, is_mounted
    from cli import run
    path = str(tmp_path / "other")
    os.mkdir(path)
    other = subprocess.Popen([sys.executable, "-c", "import pyfuse3, sys, trio\n"
                              "pyfuse3.init(pyfuse3.Operations(), sys.argv[1], ['fsname=other'])\n"
                              "trio.run(pyfuse3.main)", path])
    try:
        deadline = time.monotonic() + 30
        while fstype(path) is None:
            assert other.poll() is None and time.monotonic() < deadline, "the other file system did not mount"
            time.sleep(0.02)
        other.kill()
        other.wait()
        assert is_mounted(path) == "stale"
        done = run("unmount", path, check=False)
        assert done.returncode == MountpointError.exit_code and "not an e2efs mount" in done.stderr
        assert fstype(path) == "fuse"
    finally:
        if other.poll() is None:
            other.kill()
        subprocess.run(["fusermount3", "-u", "-z", path], stderr=subprocess.DEVNULL)


def test_sigterm_unmounts_cleanly(vault_mount):
    m = vault_mount
    m.mount()
    with open(m.p("f"), "wb") as f:
        f.write(b"written before SIGTERM")
    m.proc.terminate()
    assert m.proc.wait(timeout=30) == 0
    m.proc = None
    assert not os.path.ismount(m.path)
    m.mount()
    assert read(m.p("f")) == b"written before SIGTERM"


def test_idle_locks(vault_mount):
    m = vault_mount
    m.mount("--idle", "2s")
    write(m.p("f"), b"x")
    assert m.proc.wait(timeout=30) == 0
    m.proc = None
    assert not os.path.ismount(m.path)
    assert "idle" in m.log_text()


def test_an_atime_set_before_a_write_survives_it(mounted):
    """A write moves the mtime to now but leaves an atime set before it, as ext4
    does, also when no flush came between the two."""
    path = mounted.p("f")
    write(path, b"old")
    fd = os.open(path, os.O_RDWR)
    try:
        os.utime(fd, ns=(7_000_000_000, 8_000_000_000))
        os.write(fd, b"new content")
    finally:
        os.close(fd)
    mounted.remount()
    st = os.stat(path)
    assert st.st_atime_ns == 7_000_000_000 and abs(st.st_mtime_ns / 1e9 - time.time()) < 5
    assert read(path) == b"new content"
