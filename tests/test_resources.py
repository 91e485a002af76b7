"""Resources (issue 5, item 5): full disk, read-only vault folder, a vault folder
that disappears, thousands of open handles, a big directory."""

import errno
import os
import resource
import shutil
import sqlite3
import subprocess
import time

import pytest

from e2efs import check as chk
from e2efs.tree import TEMP_PREFIX, Tree
from e2efs.vault import KdfParams, Vault

from conftest import PASSWORD

MIB = 1 << 20


@pytest.fixture
def tmpfs_vault(vault_mount, tmp_path):
    """The mount's vault folder on its own 8 MiB tmpfs (unmounted in teardown)."""
    m = vault_mount
    fs = str(tmp_path / "tmpfs")
    os.mkdir(fs)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", fs]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        m.vault = os.path.join(fs, "vault")
        os.mkdir(m.vault)
        Vault.create(m.vault, os.urandom(32), PASSWORD, block_size=4096, kdf=KdfParams(8 * 1024, 1, 1))
        yield m
    finally:
        m.teardown()
        subprocess.run(["umount", "-l", fs])


def _temps(root):
    return [os.path.join(d, n) for d, _, ns in os.walk(root) for n in ns if n.startswith(TEMP_PREFIX)]


def _mounted_with(m, name: str, size: int) -> bytes:
    """Mount ``m`` and write a file of ``size`` random bytes; its content."""
    m.mount()
    data = os.urandom(size)
    with open(m.p(name), "wb") as f:
        f.write(data)
    return data


def test_full_disk_gives_enospc_and_keeps_the_previous_version(tmpfs_vault):
    m = tmpfs_vault
    previous = _mounted_with(m, "backup.db", 2 * MIB)
    with pytest.raises(OSError) as e:                 # O_TRUNC: the new version goes to a temp file
        with open(m.p("backup.db"), "wb") as f:
            for _ in range(20):
                f.write(os.urandom(MIB))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:                 # a new file does not fit either
        with open(m.p("new.db"), "wb") as f:
            for _ in range(20):
                f.write(os.urandom(MIB))
    assert e.value.errno == errno.ENOSPC
    with open(m.p("backup.db"), "rb") as f:
        assert f.read() == previous
    assert "new.db" not in os.listdir(m.path)
    assert _temps(m.vault) == []                      # the failed attempts gave their space back
    with open(m.p("small"), "wb") as f:               # and the mount keeps working
        f.write(b"fits")
    assert m.proc.poll() is None
    m.unmount()
    report = chk.check(Tree(Vault.locked(m.vault).unlock_with_password(PASSWORD)))
    assert report.findings == []


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_writing_on_past_a_full_disk_neither_grows_the_daemon_nor_tears_the_file(tmpfs_vault):
    """A long write into a file already in the vault, past a full disk: the data
    the vault has no room for is refused, not held in the daemon's memory for a
    retry (a backup into a full drive would grow it until the OOM killer took the
    mount down), and at close the file goes back to its last flush at once, not
    at the next mount (this mount would show a file failing authentication)."""
    m = tmpfs_vault
    flushed = _mounted_with(m, "media.bin", MIB)      # in place from here on, under an undo record
    before = _peak_rss_mib(m.proc.pid)
    chunk = os.urandom(MIB)
    with pytest.raises(OSError) as e:
        with open(m.p("media.bin"), "ab") as f:
            for _ in range(96):                       # 12 times what the 8 MiB drive holds
                f.write(chunk)
    assert e.value.errno == errno.ENOSPC
    assert _peak_rss_mib(m.proc.pid) - before < 24
    with open(m.p("media.bin"), "rb") as f:
        assert f.read() == flushed
    assert "could not be saved (No space left on device): the file is back at its last flush" in m.log_text()
    assert shutil.disk_usage(m.vault).free > 6 * MIB   # the refused data's space is given back
    assert m.proc.poll() is None
    m.unmount()
    assert chk.check(Tree(Vault.locked(m.vault).unlock_with_password(PASSWORD))).findings == []


def _fill_drive(m, room: int = 0) -> str:
    """Fill the vault's drive with a file beside the vault, leaving ``room`` bytes
    free; its path, to give the space back."""
    filler = os.path.join(os.path.dirname(m.vault), "filler")
    with open(filler, "wb", buffering=0) as f:
        with pytest.raises(OSError) as e:
            while True:
                f.write(bytes(64 << 10))
        assert e.value.errno == errno.ENOSPC
        f.truncate(max(0, f.tell() - room))
    return filler


def test_a_change_refused_before_any_block_was_overwritten_is_not_shown(tmpfs_vault):
    """The drive is already full, so not even the undo record can start and the
    file on disk is untouched: the mount must show it so, not the refused data
    the kernel still holds (another program appending after it would otherwise
    commit zeros where that data was)."""
    m = tmpfs_vault
    old = _mounted_with(m, "a.db", 3 * 4096)
    filler = _fill_drive(m)
    with pytest.raises(OSError) as e:
        with open(m.p("a.db"), "ab") as f:
            f.write(os.urandom(2 * MIB))
    assert e.value.errno == errno.ENOSPC
    os.unlink(filler)
    with open(m.p("a.db"), "rb") as f:
        assert f.read() == old
    with open(m.p("a.db"), "ab") as f:
        f.write(b"tail\n")
    assert "could not be saved (No space left on device): the file is as at its last flush" in m.log_text()
    m.remount()
    with open(m.p("a.db"), "rb") as f:
        assert f.read() == old + b"tail\n"


def test_a_truncate_the_full_disk_refused_is_not_applied_later(tmpfs_vault):
    """The program heard ENOSPC and the kernel kept the old size: the vault must
    keep it too, after space comes back and the file is closed."""
    m = tmpfs_vault
    old = _mounted_with(m, "media.db", 2 * MIB)
    fd = os.open(m.p("media.db"), os.O_RDWR)
    try:
        filler = _fill_drive(m)
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, 100)
        assert e.value.errno == errno.ENOSPC
        assert os.fstat(fd).st_size == len(old)
        os.unlink(filler)
    finally:
        os.close(fd)
    m.remount()
    with open(m.p("media.db"), "rb") as f:
        assert f.read() == old


def test_truncating_a_closed_file_gives_room_back_on_a_full_disk(tmpfs_vault):
    m = tmpfs_vault
    old = _mounted_with(m, "a.db", 2 * MIB)
    filler = _fill_drive(m)
    os.truncate(m.p("a.db"), 100)
    assert shutil.disk_usage(m.vault).free > MIB
    os.unlink(filler)
    m.remount()
    with open(m.p("a.db"), "rb") as f:
        assert f.read() == old[:100]


@pytest.mark.parametrize("kind", ["in place", "rewrite", "new"])
def test_after_writes_lost_to_a_full_disk_the_mount_shows_what_the_vault_holds(tmpfs_vault, kind):
    """Writes the daemon had to refuse (disk full) still sit in the kernel's pages
    and size.  Once space is back: a file changed in place keeps what was saved
    (a prefix of what was written, no zeroed hole) and the mount shows that, not
    those pages; a new version (O_TRUNC, or a new file) is known to be incomplete,
    so its fsync and close fail and the previous version (or no file) stays."""
    m = tmpfs_vault
    m.mount()
    previous = os.urandom(MIB // 4)
    if kind != "new":
        with open(m.p("video.mp4"), "wb") as f:
            f.write(previous)
    # 2 MiB go in, then ~5 MiB wait in memory (DIRTY_LIMIT_BYTES), the rest is
    # refused; freeing the filler leaves room for what waits
    filler = _fill_drive(m, room=2 * MIB)
    data = b"".join(bytes([65 + i]) * MIB for i in range(8))
    flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if kind != "in place" else 0)
    fd = os.open(m.p("video.mp4"), flags, 0o644)
    closed = None
    try:
        for i in range(8):
            os.pwrite(fd, data[i * MIB:(i + 1) * MIB], i * MIB)
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.ENOSPC
        os.unlink(filler)
        if kind != "in place":
            with pytest.raises(OSError) as e:
                os.fsync(fd)
            assert e.value.errno == errno.ENOSPC
        else:
            os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            closed = exc.errno
    assert closed == (None if kind == "in place" else errno.ENOSPC)
    if kind == "new":
        assert "video.mp4" not in os.listdir(m.path)
        m.remount()
        assert "video.mp4" not in os.listdir(m.path)
        return
    with open(m.p("video.mp4"), "rb") as f:
        shown = f.read()
    m.remount()
    with open(m.p("video.mp4"), "rb") as f:
        saved = f.read()
    assert shown == saved
    if kind == "rewrite":
        assert saved == previous
    else:
        assert len(saved) >= 2 * MIB and saved == data[:len(saved)]
        assert "were refused" in m.log_text()
    assert m.proc.poll() is None


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_on_a_full_drive_keeps_every_commit(tmpfs_vault, journal):
    """A chat app's database when the drive fills: a commit fails (SQLITE_IOERR: with
    the writeback cache ENOSPC comes at fsync), and once space is back the database
    is intact in the same mount, with every committed row.  Before the undo at
    close, a database could read "disk I/O error" until a remount (which journal
    mode meets it depends on where the drive fills)."""
    m = tmpfs_vault
    m.mount()
    db = m.p("msgstore.db")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
    filler = _fill_drive(m, room=128 << 10)
    committed = 0
    with pytest.raises(sqlite3.OperationalError, match="full|disk I/O error"):
        for _ in range(2000):
            con.execute("BEGIN")
            for _ in range(8):
                con.execute("INSERT INTO messages (body) VALUES (?)", (os.urandom(4000),))
            con.execute("COMMIT")
            committed += 8
    con.close()
    assert m.proc.poll() is None
    os.unlink(filler)
    con = sqlite3.connect(db, isolation_level=None)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == committed
    con.execute("INSERT INTO messages (body) VALUES (x'00')")      # and it takes new rows again
    con.close()
    assert "failed authentication" not in m.log_text()
    m.unmount()
    assert chk.check(Tree(Vault.locked(m.vault).unlock_with_password(PASSWORD))).findings == []


def test_the_daemon_does_not_keep_a_node_for_every_file_ever_written(vault_mount):
    """The kernel holds an inode for every file it looked up until memory runs
    short, and the daemon a node for each: past a limit (500 here, 20,000 by
    default) the kernel is asked to drop the oldest, so a backup of 100,000 media
    files does not keep ~120 MiB of the daemon's locked memory."""
    m = vault_mount
    m.env["E2EFS_TEST_MAX_FILE_NODES"] = "500"
    m.mount()
    before = _peak_rss_mib(m.proc.pid)
    for d in range(10):
        os.mkdir(m.p(f"chat{d}"))
        for i in range(1000):
            os.close(os.open(m.p(f"chat{d}", f"IMG-{i}.jpg"), os.O_CREAT | os.O_WRONLY, 0o644))
    assert _peak_rss_mib(m.proc.pid) - before < 6          # 9-12 MiB with a node per file
    assert sum(len(os.listdir(m.p(f"chat{d}"))) for d in range(10)) == 10_000
    assert os.stat(m.p("chat0", "IMG-0.jpg")).st_size == 0     # looked up afresh
    assert m.proc.poll() is None and "ERROR" not in m.log_text()


def test_read_only_vault_folder_mounts_read_only(tmpfs_vault):
    m = tmpfs_vault
    m.mount()
    with open(m.p("chat.db"), "wb") as f:
        f.write(b"messages")
    m.unmount()
    fs = os.path.dirname(m.vault)
    subprocess.run(["mount", "-o", "remount,ro", fs], check=True)
    m.mount()
    with open(m.p("chat.db"), "rb") as f:
        assert f.read() == b"messages"
    with pytest.raises(OSError) as e:
        open(m.p("new"), "wb")
    assert e.value.errno == errno.EROFS
    assert "read-only" in m.unmount()


def test_vault_folder_that_disappears_gives_eio(mounted, tmp_path):
    m = mounted
    os.mkdir(m.p("chats"))
    with open(m.p("chats", "a.db"), "wb") as f:
        f.write(b"a" * 10000)
    held = open(m.p("chats", "a.db"), "rb")
    gone = str(tmp_path / "vault-moved-away")
    os.rename(m.vault, gone)                         # the sync client removed it / the drive went away
    try:
        for action in (lambda: os.listdir(m.path), lambda: open(m.p("chats", "b.db"), "rb"),
                       lambda: open(m.p("new"), "wb"), lambda: os.stat(m.p("chats", "zzz"))):
            with pytest.raises(OSError) as e:
                action()
            assert e.value.errno == errno.EIO
        assert m.proc.poll() is None
        assert "vault folder" in m.log_text() and "disappeared" in m.log_text()
    finally:
        held.close()
        os.rename(gone, m.vault)
    assert sorted(os.listdir(m.path)) == ["chats"]     # it comes back when the folder does


def test_a_mount_whose_vault_folder_is_gone_can_still_be_unmounted(mounted, tmp_path):
    """The drive was unplugged: every request fails with EIO, and the user's way
    out is still 'e2efs status' and 'e2efs unmount', not a hunt for fusermount3."""
    m = mounted
    with open(m.p("a.db"), "wb") as f:
        f.write(b"a")
    os.rename(m.vault, str(tmp_path / "unplugged"))
    time.sleep(1.1)                                  # past the kernel's attribute cache
    with pytest.raises(OSError):
        os.listdir(m.path)
    assert m.path in m.cli("status").stdout
    m.cli("unmount", m.path)
    assert not os.path.ismount(m.path)
    assert m.proc.wait(timeout=10) is not None


def test_thousands_of_open_handles(mounted):
    m = mounted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3000
    if hard < want + 100:
        pytest.skip("RLIMIT_NOFILE too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want + 100), hard))
    files = []
    try:
        for i in range(want):
            f = open(m.p(f"f{i}"), "wb+")
            f.write(str(i).encode() * 10)
            files.append(f)
        for i, f in enumerate(files):
            f.flush()
            f.seek(0)
            assert f.read() == str(i).encode() * 10
    finally:
        for f in files:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(os.listdir(m.path)) == want
    with open(m.p("f2999"), "rb") as f:
        assert f.read() == b"2999" * 10


def test_big_directory(mounted):
    """5 000 entries here; ``make stress`` runs the 100 000-entry directory."""
    m = mounted
    os.mkdir(m.p("big"))
    n = 5000
    for i in range(n):
        with open(m.p("big", f"IMG-{i:06d}.jpg"), "wb") as f:
            f.write(b"x")
    assert len(os.listdir(m.p("big"))) == n
    m.remount()
    names = os.listdir(m.p("big"))
    assert len(names) == n
    with open(m.p("big", "IMG-004321.jpg"), "rb") as f:
        assert f.read() == b"x"
