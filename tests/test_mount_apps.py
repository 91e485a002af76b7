"""Real programs on a real mount: sqlite3, tar, cp -a, rsync; crashes and tampering."""

import errno
import filecmp
import io
import os
import sqlite3
import subprocess
import tarfile

import pytest

from e2efs.blocks import HEADER_LEN

SECRET_WORD = b"zebracornsecretmessage"


def _make_tree(root: str, files: int) -> None:
    for i in range(files):
        d = os.path.join(root, f"chat-{i % 20:02d}", f"media-{i % 3}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"msg-{i:05d}.txt"), "wb") as f:
            f.write(SECRET_WORD + os.urandom(i % 700))
        os.utime(os.path.join(d, f"msg-{i:05d}.txt"), ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    os.symlink("chat-00", os.path.join(root, "latest"))
    os.chmod(os.path.join(root, "chat-01"), 0o750)


def _same_trees(a: str, b: str) -> None:
    cmp = filecmp.dircmp(a, b)
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not c.left_only and not c.right_only and not c.funny_files, (c.left, c.left_only, c.right_only)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, (c.left, mismatch, errors)
        stack.extend(c.subdirs.values())


def test_sqlite_synchronous_full_survives_remount(mounted):
    db = mounted.p("msgstore.db")
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, chat TEXT, body TEXT)")
    for i in range(2000):
        with con:
            con.execute("INSERT INTO messages (chat, body) VALUES (?, ?)", (f"chat{i % 7}", f"message {i} " * (i % 13)))
        if i % 500 == 499:
            with con:
                con.execute("DELETE FROM messages WHERE id % 5 = 0")
    con.close()
    mounted.remount()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] > 1500
    con.execute("PRAGMA journal_mode=WAL")
    with con:
        con.executemany("INSERT INTO messages (chat, body) VALUES ('wal', ?)", [(str(i),) for i in range(300)])
    con.close()
    mounted.remount()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM messages WHERE chat='wal'").fetchone()[0] == 300
    con.close()


def test_tar_round_trip_is_byte_identical(mounted, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(str(src), 2500)
    archive = tmp_path / "in.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
    subprocess.run(["tar", "-xpf", str(archive), "-C", mounted.path], check=True)
    mounted.remount()
    back = tmp_path / "back.tar"
    subprocess.run(["tar", "-cf", str(back), "-C", mounted.path, "."], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", str(back), "-C", str(out)], check=True)
    _same_trees(str(src), str(out))
    with tarfile.open(archive) as a, tarfile.open(back) as b:
        meta = lambda t: sorted((m.name, m.mode, m.mtime, m.size, m.type, m.linkname) for m in t.getmembers()
                                if m.name != ".")
        assert meta(a) == meta(b)


def test_cp_and_rsync_round_trips(mounted, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(str(src), 300)
    subprocess.run(["cp", "-a", f"{src}/.", mounted.p("cp")], check=True)
    subprocess.run(["rsync", "-a", f"{src}/", mounted.p("rsync") + "/"], check=True)
    mounted.remount()
    for name in ("cp", "rsync"):
        back = tmp_path / f"back-{name}"
        subprocess.run(["rsync", "-a", mounted.p(name) + "/", f"{back}/"], check=True)
        _same_trees(str(src), str(back))
        # a second rsync finds nothing to do: sizes and mtimes came through exactly
        again = subprocess.run(["rsync", "-ai", f"{src}/", mounted.p(name) + "/"], check=True,
                               stdout=subprocess.PIPE, text=True).stdout
        assert again.strip() == "", again[:500]
    mounted.unmount()
    exported = tmp_path / "exported"
    mounted.cli("export", mounted.vault, str(exported), "--password-file", mounted.password_file)
    _same_trees(str(src), str(exported / "cp"))
    _same_trees(str(src), str(exported / "rsync"))


def test_rename_and_overwrite_of_an_open_file(mounted):
    with open(mounted.p("backup.tmp"), "wb") as f:
        f.write(b"new backup " * 1000)
        os.rename(mounted.p("backup.tmp"), mounted.p("backup"))
        f.write(b"more")
    with open(mounted.p("old"), "wb") as f:
        f.write(b"old")
    reader = open(mounted.p("old"), "rb")
    try:
        os.rename(mounted.p("backup"), mounted.p("old"))     # over a file that is open
        assert reader.read() == b"old"
    finally:
        reader.close()
    mounted.remount()
    assert os.listdir(mounted.path) == ["old"]
    with open(mounted.p("old"), "rb") as f:
        assert f.read() == b"new backup " * 1000 + b"more"


def test_kill_during_rewrite_keeps_previous_version(vault_mount):
    m = vault_mount
    m.mount()
    previous = os.urandom(200_000)
    with open(m.p("backup.db"), "wb") as f:
        f.write(previous)
    f = open(m.p("backup.db"), "wb")               # O_TRUNC: the new version goes to a temp file
    try:
        f.write(os.urandom(500_000))
        f.flush()
        m.proc.kill()
        m.proc.wait()
        m.proc = None
    finally:
        try:
            f.close()
        except OSError:
            pass
    m.teardown()
    m.mount()
    with open(m.p("backup.db"), "rb") as g:
        assert g.read() == previous


def test_tampered_block_gives_eio_and_daemon_lives(mounted):
    data = os.urandom(3 * 4096)
    with open(mounted.p("victim"), "wb") as f:
        f.write(data)
    with open(mounted.p("bystander"), "wb") as f:
        f.write(b"fine")
    mounted.unmount()
    sizes = {}
    for name in os.listdir(mounted.vault):
        if not name.startswith("e2efs.vault"):
            sizes[os.path.getsize(os.path.join(mounted.vault, name))] = name
    victim = os.path.join(mounted.vault, sizes[max(sizes)])
    with open(victim, "r+b") as f:
        f.seek(HEADER_LEN + 4096 + 28 + 100)         # inside block 1
        byte = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    mounted.mount()
    with open(mounted.p("victim"), "rb") as f:
        assert f.read(4096) == data[:4096]           # block 0 is intact
        with pytest.raises(OSError) as e:
            f.read()
        assert e.value.errno == errno.EIO
    with open(mounted.p("bystander"), "rb") as f:
        assert f.read() == b"fine"
    assert mounted.proc.poll() is None
    assert victim in mounted.log_text() and "block 1" in mounted.log_text()


def test_vault_holds_no_plaintext(mounted):
    os.mkdir(mounted.p(SECRET_WORD.decode() + "-dir"))
    with open(mounted.p(SECRET_WORD.decode() + "-dir", SECRET_WORD.decode() + ".txt"), "wb") as f:
        f.write(SECRET_WORD * 100)
    os.symlink(SECRET_WORD.decode() + "-target", mounted.p("link"))
    con = sqlite3.connect(mounted.p("chat.db"))
    with con:
        con.execute("CREATE TABLE m (body TEXT)")
        con.execute("INSERT INTO m VALUES (?)", (SECRET_WORD.decode(),))
    con.close()
    mounted.unmount()
    found = subprocess.run(["grep", "-rail", SECRET_WORD, mounted.vault], stdout=subprocess.PIPE, text=True).stdout
    names = [os.path.join(d, n) for d, ds, fs in os.walk(mounted.vault) for n in ds + fs
             if SECRET_WORD.decode().lower() in n.lower() or "sqlite" in n.lower()]
    assert found == "" and names == []
    found = subprocess.run(["grep", "-ral", "SQLite format", mounted.vault], stdout=subprocess.PIPE, text=True).stdout
    assert found == ""
