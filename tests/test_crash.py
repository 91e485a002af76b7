"""Crash consistency: SIGKILL the mount daemon at random points (issue 5, item 1).

Five workloads run in a separate writer process against the mount while the
daemon is killed after a random delay: (a) a fresh multi-MiB file, (b) an
O_TRUNC overwrite of an existing one, (c) SQLite transactions (each committed
id is logged outside the mount) with the default rollback journal and (d) in
WAL mode, as chat apps run their databases, (e) a directory tree renamed back
and forth.
After each kill the next ``e2efs mount`` must clean the stale mount, fsck must
find nothing but crash leftovers, (a)/(b) must show the old or the complete new
version, SQLite must pass integrity_check with every committed id, and the
renamed tree must exist exactly once, whole.

``make test`` runs a handful of kill points; ``make stress`` (scripts/stress.py)
runs the same ``crash_round`` hundreds of times.
"""

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time

import pytest

from e2efs import check as chk
from e2efs.fs.mountpoint import is_mounted
from e2efs.tree import Tree
from e2efs.vault import Vault

from conftest import PASSWORD

MIB = 1 << 20
BYSTANDERS = {f"keep-{i}.bin": hashlib.sha256(str(i).encode()).digest() * (1000 + 700 * i) for i in range(4)}

WRITER = r'''
import os, sys, random, sqlite3, time
mode, path, log = sys.argv[1], sys.argv[2], sys.argv[3]
def say(text):
    with open(log, "a") as f:
        f.write(text + "\n")
        f.flush()
if mode in ("new", "trunc"):
    size, seed = int(sys.argv[4]), int(sys.argv[5])
    data = random.Random(seed).randbytes(size)
    say("start")
    with open(path, "wb") as f:
        for i in range(0, size, 1 << 16):
            f.write(data[i:i + (1 << 16)])
    say("closed")
elif mode == "sqlite":
    con = sqlite3.connect(path, timeout=1, isolation_level=None)
    con.execute("PRAGMA synchronous=FULL")
    if len(sys.argv) > 4:
        say("mode " + con.execute("PRAGMA journal_mode=" + sys.argv[4]).fetchone()[0])
        con.execute("PRAGMA wal_autocheckpoint=32")     # kills land in checkpoints too
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    start = con.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0] + 1
    say(f"first {start}")
    say("start")
    for i in range(start, start + 100000):
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(random.randrange(10, 3000))))
        if i % 7 == 0:
            con.execute("DELETE FROM t WHERE id = ?", (i - 5,))
        con.execute("COMMIT")
        say(f"c {i}")
elif mode == "rename":
    a, b = path, sys.argv[4]
    say("start")
    while True:
        src, dst = (a, b) if os.path.isdir(a) else (b, a)
        os.rename(src, dst)
        say(f"moved {dst}")
'''


def _log_lines(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _tree(m) -> Tree:
    return Tree(Vault.locked(m.vault).unlock_with_password(PASSWORD))


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _kill_daemon(m, stale: bool = False) -> None:
    """SIGKILL the daemon.  With ``stale`` also its fusermount3 auto-unmount helper,
    so the dead mount stays behind ("Transport endpoint is not connected") for the
    next ``e2efs mount`` to clean; without, wait until the helper has removed it."""
    helpers = _children(m.proc.pid) if stale else []
    for pid in helpers:
        os.kill(pid, 9)
    m.proc.kill()
    m.proc.wait()
    m.proc = None
    deadline = time.monotonic() + 5
    while is_mounted(m.path) == ("live" if stale else "stale") and time.monotonic() < deadline:
        time.sleep(0.005)       # the connection abort, or the helper's unmount, takes a moment
    state = is_mounted(m.path)
    if not stale and state == "stale":
        # The helper unmounts only if its open() of the mount point fails with ENOTCONN
        # (fusermount3 3.14); one still in flight when the kernel aborts the connection
        # fails with ECONNABORTED and the dead mount stays: the next mount cleans it.
        return
    assert state == ("stale" if stale else None)


def prepare(m) -> None:
    """Bystander files and a tree to rename, before any kill."""
    for name, data in BYSTANDERS.items():
        with open(m.p(name), "wb") as f:
            f.write(data)
    os.makedirs(m.p("treeA", "sub", "deeper"))
    for i in range(5):
        with open(m.p("treeA", "sub", f"f{i}"), "wb") as f:
            f.write(bytes([i]) * (5000 * i + 1))
    with open(m.p("treeA", "sub", "deeper", "x" * 200), "wb") as f:
        f.write(b"long name survives")


def crash_round(m, workload: str, rng: random.Random, tmp, max_delay: float | None = None) -> dict:
    """Run ``workload`` in a writer process, SIGKILL the daemon at a random moment,
    remount, verify.  Returns what happened; raises AssertionError on an anomaly."""
    log = os.path.join(tmp, f"writer-{workload}.log")
    if os.path.exists(log) and not workload.startswith("sqlite"):
        os.unlink(log)
    before = None
    if workload == "new":
        seed, size = rng.randrange(1 << 30), rng.randrange(2 * MIB, 6 * MIB)
        target = m.p(f"fresh-{seed}.bin")
        args = ["new", target, log, str(size), str(seed)]
    elif workload == "trunc":
        seed, size = rng.randrange(1 << 30), rng.randrange(1 * MIB, 5 * MIB)
        target = m.p("backup.db")
        if os.path.exists(target):
            with open(target, "rb") as f:
                before = f.read()
        args = ["trunc", target, log, str(size), str(seed)]
    elif workload.startswith("sqlite"):
        target = m.p(f"{workload}.db")        # one database per log (make stress runs both)
        args = ["sqlite", target, log] + (["wal"] if workload == "sqlite-wal" else [])
    elif workload == "rename":
        target = m.p("treeA")
        args = ["rename", target, log, m.p("treeB")]
        if not os.path.isdir(target):
            target, args[3] = m.p("treeB"), m.p("treeA")
            args[1] = target
        expected_tree = _snapshot(target)
    else:
        raise ValueError(workload)
    starts = _log_lines(log).count("start")        # the SQLite logs run on over rounds
    writer = subprocess.Popen([sys.executable, "-c", WRITER, *args], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _log_lines(log).count("start") == starts:
            if time.monotonic() > deadline or writer.poll() is not None:
                break
            time.sleep(0.002)
        if max_delay is None:
            max_delay = {"new": 0.05, "trunc": 0.05, "sqlite": 0.3, "sqlite-wal": 0.3, "rename": 0.2}[workload]
        time.sleep(rng.uniform(0, max_delay))
        _kill_daemon(m, stale=rng.random() < 0.5)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    lines = _log_lines(log)
    m.mount()                   # must clean the stale mount left by the kill
    _verify_vault(m)
    for name, data in BYSTANDERS.items():
        with open(m.p(name), "rb") as f:
            assert f.read() == data, f"bystander {name} changed"
    if workload in ("new", "trunc"):
        new = random.Random(seed).randbytes(size)
        got = None
        if os.path.exists(target):
            with open(target, "rb") as f:
                got = f.read()
        if "closed" in lines:
            assert got == new, f"{workload}: closed file not complete after the kill"
        elif workload == "new":
            assert got in (None, new), f"new: a partial file is visible ({len(got)} bytes)"
        else:
            assert got in (before, new), f"trunc: neither the previous nor the new version ({len(got)} bytes)"
        outcome = "new" if got == new else ("absent" if got is None else "previous")
        if workload == "new" and got is not None:
            os.unlink(target)
    elif workload.startswith("sqlite"):
        committed = {int(l.split()[1]) for l in lines if l.startswith("c ")}
        con = sqlite3.connect(target)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            ids = {r[0] for r in con.execute("SELECT id FROM t")}
        finally:
            con.close()
        # The commit point is the journal's deletion (in WAL mode: the fsync of the
        # commit frame); the writer logs only after COMMIT returns, so in every round
        # the transaction after the last logged one may have committed too (its
        # DELETE of i - 5 then rightly took effect).
        deleted = {i - 5 for i in committed | _maybe_committed(lines) if i % 7 == 0}
        missing = committed - deleted - ids
        assert not missing, f"sqlite: committed ids missing after the kill: {sorted(missing)[:10]}"
        kept = ids & {i - 5 for i in committed if i % 7 == 0}
        assert not kept, f"sqlite: rows a committed transaction deleted are back: {sorted(kept)[:10]}"
        if workload == "sqlite-wal":
            assert set(l for l in lines if l.startswith("mode ")) == {"mode wal"}, "the writer did not run in WAL mode"
        outcome = f"{len(committed)} committed"
    else:
        there = [p for p in (m.p("treeA"), m.p("treeB")) if os.path.isdir(p)]
        assert len(there) == 1, f"rename: {there}"
        assert _snapshot(there[0]) == expected_tree, "rename: the tree's content changed"
        outcome = os.path.basename(there[0])
    return {"workload": workload, "outcome": outcome, "writer_lines": len(lines)}


def _maybe_committed(lines: list[str]) -> set[int]:
    """Per writer round (each logs ``first <id>``): the id after its last logged commit."""
    maybe, last = set(), None
    for line in lines:
        if line.startswith("first "):
            if last is not None:
                maybe.add(last + 1)
            last = int(line.split()[1]) - 1
        elif line.startswith("c "):
            last = int(line.split()[1])
    return maybe | ({last + 1} if last is not None else set())


def _snapshot(root) -> dict:
    snap = {}
    for d, dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                snap[os.path.relpath(os.path.join(d, name), root)] = hashlib.sha256(f.read()).hexdigest()
        for name in dirs:
            snap[os.path.relpath(os.path.join(d, name), root) + "/"] = ""
    return snap


def _verify_vault(m) -> None:
    """fsck: nothing but leftovers of the interrupted write."""
    report = chk.check(_tree(m))
    bad = [f for f in report.findings if f.kind != chk.TEMP]
    assert not bad, f"fsck after a kill: {[(f.path, f.reason) for f in bad]}"


@pytest.mark.parametrize("workload", ["new", "trunc", "sqlite", "sqlite-wal", "rename"])
def test_sigkill_during_workload(vault_mount, tmp_path, workload):
    m = vault_mount
    m.mount()
    prepare(m)
    with open(m.p("backup.db"), "wb") as f:
        f.write(os.urandom(3 * MIB))
    rng = random.Random(f"crash-{workload}")
    for _ in range(3 if workload.startswith("sqlite") else 2):
        result = crash_round(m, workload, rng, str(tmp_path))
    if workload.startswith("sqlite"):          # the kills must have met transactions
        assert int(result["outcome"].split()[0]) > 0, result
    m.unmount()


def _write_back(fd: int) -> None:
    """Hand the kernel's dirty pages of ``fd`` to the daemon now, without an fsync
    (so the daemon writes blocks in place but never reaches its flush)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    if libc.sync_file_range(fd, 0, 0, 1 | 2 | 4) != 0:      # WAIT_BEFORE | WRITE | WAIT_AFTER
        raise OSError(ctypes.get_errno(), "sync_file_range")


def _kill_during(m, path: str, change) -> None:
    """Run ``change(fd)`` on ``path`` in the mount, hand its dirty pages to the daemon,
    and SIGKILL the daemon before any flush."""
    fd = os.open(path, os.O_RDWR)
    try:
        change(fd)
        _write_back(fd)
        _kill_daemon(m)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_kill_between_in_place_writes_rolls_back_to_the_last_flush(vault_mount):
    """The window in-place writes used to leave open: a block rewritten in place and a
    short final block resealed as full and non-final, then the daemon is killed before
    its flush.  The file on disk fails authentication; the next mount applies the undo
    record and the file reads exactly as it was at its last flush."""
    from e2efs import undo
    from e2efs.errors import CorruptData
    from e2efs.transfer import authenticate_file
    m = vault_mount
    m.mount()
    old = os.urandom(10 * 4096 + 100)
    with open(m.p("chat.db"), "wb") as f:
        f.write(old)
    def change(fd):
        os.pwrite(fd, b"p" * 4096, 2 * 4096)             # a whole block, rewritten in place
        os.pwrite(fd, b"g" * 8000, len(old) - 50)        # fills the short final block, grows the file
    _kill_during(m, m.p("chat.db"), change)
    assert undo.left_behind(m.vault), "no undo record was left by the killed daemon"
    tree = _tree(m)
    entry = tree.lookup(tree.root, b"chat.db")
    with pytest.raises(CorruptData):
        authenticate_file(tree, tree.path(tree.root, entry))
    m.mount()
    with open(m.p("chat.db"), "rb") as f:
        assert f.read() == old
    assert "chat.db" not in m.log_text() and "rolled back an interrupted write" in m.log_text()
    assert not undo.left_behind(m.vault)
    _verify_vault(m)
    with open(m.p("chat.db"), "r+b") as f:     # in place again: a record file is taken, and kept for reuse
        f.write(b"again")
    m.unmount()
    assert os.listdir(os.path.join(m.vault, undo.UNDO_DIR)) == [], "unmount left record files behind"


def test_unlinking_the_name_an_undo_record_uses_keeps_the_other_link_safe(vault_mount):
    """A record names one hard link; removing that name mid-round must first settle
    the round, or a kill leaves the other link's file torn with no record to find it."""
    m = vault_mount
    m.mount()
    old = os.urandom(10 * 4096 + 100)
    with open(m.p("a.db"), "wb") as f:
        f.write(old)
    os.link(m.p("a.db"), m.p("b.db"))
    def change(fd):
        os.pwrite(fd, b"p" * 4096, 2 * 4096)              # the round's record names a.db
        _write_back(fd)
        os.unlink(m.p("a.db"))
        os.pwrite(fd, b"g" * 8000, len(old) - 50)         # the short final block filled: torn on disk
    _kill_during(m, m.p("b.db"), change)
    m.mount()
    with open(m.p("b.db"), "rb") as f:
        assert f.read() == old[:2 * 4096] + b"p" * 4096 + old[3 * 4096:]     # as at the unlink's flush
    _verify_vault(m)
    m.unmount()


def test_a_kill_rolls_back_only_its_own_round_of_a_reused_record(vault_mount):
    """A record keeps the bytes of its earlier rounds past its ``end`` (undo.py): a
    kill in the second round must put back that round's block only, not the blocks
    the first round saved and its fsync made final."""
    m = vault_mount
    m.mount()
    old = os.urandom(10 * 4096 + 100)
    with open(m.p("chat.db"), "wb") as f:
        f.write(old)
    first = bytearray(old)
    for i in (0, 2, 4, 6):
        first[i * 4096:(i + 1) * 4096] = bytes([i]) * 4096
    def change(fd):
        for i in (0, 2, 4, 6):                   # round one: four blocks, four ranges, then settled
            os.pwrite(fd, first[i * 4096:(i + 1) * 4096], i * 4096)
        os.fsync(fd)
        os.pwrite(fd, b"2" * 100, 4096 + 7)      # round two: one block, killed before its flush
    _kill_during(m, m.p("chat.db"), change)
    m.mount()
    with open(m.p("chat.db"), "rb") as f:
        assert f.read() == bytes(first)
    assert "rolled back an interrupted write" in m.log_text()
    _verify_vault(m)
    m.unmount()


def test_undo_records_hold_no_old_blocks_once_the_mount_is_quiet(vault_mount):
    """Between rounds a record keeps its pages (undo.py), but .e2efs-undo is uploaded
    with the vault: once requests pause, every settled record is 0 bytes again, even
    while its file stays open for writing."""
    from e2efs import undo
    m = vault_mount
    m.mount()
    with open(m.p("chat.db"), "wb") as f:
        f.write(os.urandom(10 * 4096))
    folder = os.path.join(m.vault, undo.UNDO_DIR)
    with open(m.p("chat.db"), "r+b") as f:
        for i in range(3):
            os.pwrite(f.fileno(), b"m" * 4096, 2 * i * 4096)
        os.fsync(f.fileno())                    # a round: three old blocks saved, then settled
        deadline = time.monotonic() + 5
        while any(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)):
            assert time.monotonic() < deadline, "a settled record kept its old blocks"
            time.sleep(0.05)
        assert os.listdir(folder), "the round made no record"
    m.unmount()
