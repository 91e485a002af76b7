"""Undo records (undo.py): an in-place change killed at any write is rolled back whole.

A forked writer applies a change to a real ciphertext file and dies (``os._exit``)
at its N-th pwrite or ftruncate, after writing only half of that pwrite; then
``recover`` runs and the file must read back as exactly the old or the new
plaintext (or one the change passed through whole: a flush point), for every N.
Without the undo log the same kills leave files that fail authentication, which
shows the kills reach the windows that matter.
"""

import os
import random
import struct

import pytest

from e2efs import undo
from e2efs.content import ContentFile
from e2efs.crypto import Keys
from e2efs.errors import CorruptData
from e2efs.undo import UNDO_DIR, RecordFiles, UndoLog

from vaultutil import FIXED_K, SMALL_BLOCK, new_content, open_content

KEYS = Keys(FIXED_K)
BS = SMALL_BLOCK
FINISHED = 7


def _old_file(path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    f = new_content(path, KEYS)
    f.write(0, data)
    f.flush()
    os.close(f.fd)
    return data


def _with_undo(root, path, records: RecordFiles | None = None) -> ContentFile:
    f = open_content(path, KEYS)
    f.undo = UndoLog(records or RecordFiles(str(root)), f.fd, f.header.file_id, f.layout, lambda: str(path))
    return f


CHANGES = {
    # SQLite-like: pages in several blocks, one of them the old final block, and growth
    "pages": (5 * BS + 100, [("w", BS + 10, 300), ("w", 3 * BS, 4096), ("w", 5 * BS + 50, BS)]),
    # growth from a short final block (resealed as non-final), then a partial overwrite
    "append": (2 * BS + 7, [("w", 2 * BS + 7, 3 * BS), ("w", 10, 20)]),
    # a shrink in the middle of a block
    "shrink": (6 * BS + 5, [("w", 100, 50), ("t", 2 * BS + 999)]),
    # full-block overwrites, sealed while writing (before any flush)
    "rewrite": (8 * BS, [("w", 0, 7 * BS), ("w", 7 * BS + 1, 10)]),
}


def _apply(f: ContentFile, model: bytearray, ops, flush_points: list | None = None) -> None:
    """``flush_points`` gets the versions a change passes through whole: a shrink
    flushes the writes before it first."""
    for op in ops:
        if op[0] == "w":
            _, off, n = op
            data = random.Random(off * 31 + n).randbytes(n)
            f.write(off, data)
            model[len(model):off + n] = bytes(max(0, off + n - len(model)))
            model[off:off + n] = data
        else:
            if flush_points is not None and op[1] < len(model):
                flush_points.append(bytes(model))
            f.truncate(op[1])
            del model[op[1]:]
    f.flush()


def _killed_writer(root, path, ops, crash_at: int, use_undo: bool) -> int:
    """Fork a writer that dies at its ``crash_at``-th write call; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            calls = [0]
            real_pwrite, real_ftruncate = os.pwrite, os.ftruncate

            def pwrite(fd, data, offset):
                calls[0] += 1
                if calls[0] == crash_at:
                    real_pwrite(fd, bytes(data)[:max(1, len(data) // 2)], offset)
                    os._exit(0)
                return real_pwrite(fd, data, offset)

            def ftruncate(fd, size):
                calls[0] += 1
                if calls[0] == crash_at:
                    os._exit(0)
                return real_ftruncate(fd, size)

            f = _with_undo(root, path) if use_undo else open_content(path, KEYS)
            os.pwrite, os.ftruncate = pwrite, ftruncate
            _apply(f, bytearray(), ops)
            os._exit(FINISHED)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _read(path) -> bytes | None:
    try:
        f = open_content(path, KEYS)
    except CorruptData:
        return None
    try:
        return f.read(0, f.size)
    except CorruptData:
        return None
    finally:
        os.close(f.fd)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_kill_at_every_write_leaves_old_or_new(tmp_path, change):
    size, ops = CHANGES[change]
    path = tmp_path / "f"
    old = _old_file(path, size)
    new = bytearray(old)
    model_file = tmp_path / "model"
    _old_file(model_file, size)
    f = open_content(model_file, KEYS)
    between = []
    _apply(f, new, ops, between)
    os.close(f.fd)
    outcomes = set()
    for crash_at in range(1, 200):
        _old_file(path, size)
        status = _killed_writer(tmp_path, path, ops, crash_at, use_undo=True)
        assert status in (0, FINISHED), f"writer failed at call {crash_at}"
        for line in undo.recover(str(tmp_path)):
            outcomes.add(line.split(": ", 1)[1].split()[0])       # "rolled" or "finished"
        got = _read(path)
        assert got in [old, bytes(new)] + between, f"{change}: kill at write {crash_at} left no whole version"
        outcomes.add("old" if got == old else "new" if got == new else "between")
        assert not undo.left_behind(str(tmp_path))
        if status == FINISHED:
            break
    else:
        pytest.fail("the writer never finished")
    # both versions were seen, and a roll-back; a shrink also ends with a cut, and a
    # kill between its last block and the ftruncate is finished, not rolled back;
    # a kill after the flush before the shrink leaves the writes without the shrink
    assert outcomes == {"old", "new", "rolled"} | ({"finished", "between"} if change == "shrink" else set())


def test_without_undo_the_same_kills_corrupt(tmp_path):
    """The control: the kills above do reach states that fail authentication."""
    size, ops = CHANGES["pages"]
    path = tmp_path / "f"
    corrupt = 0
    for crash_at in range(1, 40):
        _old_file(path, size)
        if _killed_writer(tmp_path, path, ops, crash_at, use_undo=False) == FINISHED:
            break
        corrupt += _read(path) is None
    assert corrupt


def test_flush_empties_the_record_and_close_keeps_it_for_reuse(tmp_path):
    path = tmp_path / "f"
    _old_file(path, 3 * BS)
    f = _with_undo(tmp_path, path)
    f.write(BS, b"x" * BS)
    record = f.undo.path
    assert os.path.dirname(record) == str(tmp_path / UNDO_DIR)
    assert os.path.getsize(record) > BS                 # the old block is saved before the overwrite
    kept = os.path.getsize(record)
    f.flush()
    with open(record, "rb") as r:                       # emptied, its pages kept for the next round
        assert not undo.Record.started(r.fileno()) and os.path.getsize(record) == kept
    assert undo.recover(str(tmp_path)) == []            # locked: a live writer's record is never applied
    f.undo.close()                                      # kept, empty and locked, for the next file
    assert undo.recover(str(tmp_path)) == [] and os.listdir(tmp_path / UNDO_DIR) == [os.path.basename(record)]
    f.undo.records.close()
    os.close(f.fd)
    assert os.listdir(tmp_path / UNDO_DIR) == []


def test_a_settled_record_keeps_its_pages_until_the_mount_is_quiet(tmp_path):
    records = RecordFiles(str(tmp_path))
    a, b = tmp_path / "a", tmp_path / "b"
    _old_file(a, 4 * BS)
    _old_file(b, 4 * BS)
    fa, fb = _with_undo(tmp_path, a, records), _with_undo(tmp_path, b, records)
    fa.write(0, b"x" * 3 * BS)
    fa.flush()                                          # settled, its pages kept
    fb.write(0, b"y" * BS)                              # a round still open
    kept, open_round = os.path.getsize(fa.undo.path), os.path.getsize(fb.undo.path)
    assert kept > 3 * BS
    records.trim()                                      # what the mount does when quiet
    assert os.path.getsize(fa.undo.path) == 0           # nothing of its old blocks for the sync client
    assert os.path.getsize(fb.undo.path) == open_round
    with open(fb.undo.path, "rb") as r:
        assert undo.Record.started(r.fileno())
    fa.write(BS, b"z" * 10)                             # the next round starts from an empty file
    fa.flush()
    for f in (fa, fb):
        f.flush()
        f.undo.close()
        os.close(f.fd)
    records.close()
    assert _read(a)[BS:BS + 10] == b"z" * 10 and _read(b)[:BS] == b"y" * BS


def test_a_header_torn_over_an_earlier_rounds_is_not_read_as_this_rounds(tmp_path):
    """A round writes its header over the last round's bytes.  Killed half-way, the
    record must read as empty, not as the new header's ``end`` with the old path
    length, which would make a range of an earlier round out of the old bytes."""
    path = tmp_path / "f"
    _old_file(path, BS + 1)
    where = {"p": str(path)}
    f = open_content(path, KEYS)
    f.undo = UndoLog(RecordFiles(str(tmp_path)), f.fd, f.header.file_id, f.layout, lambda: where["p"])
    f.write(0, b"Z")
    f.flush()                           # round 0: the record holds block 0's old bytes
    f.write(BS, b"X")
    f.flush()                           # round 1: only the short final block; settled
    flushed = f.read(0, f.size)
    longer = tmp_path / ("g" * 46)      # the next round's record names a longer path
    os.link(path, longer)
    where["p"] = str(longer)
    pid = os.fork()
    if pid == 0:
        real = os.pwrite

        def pwrite(fd, data, offset):
            if fd == f.undo.fd and offset == 0:
                real(fd, bytes(data)[:len(data) // 2], 0)
                os._exit(0)
            return real(fd, data, offset)
        os.pwrite = pwrite
        f.write(0, b"Y")
        f.flush()
        os._exit(FINISHED)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    os.close(f.fd)
    os.close(f.undo.fd)
    undo.recover(str(tmp_path))
    assert _read(path) == flushed


def test_ranges_left_from_an_earlier_round_are_never_applied(tmp_path):
    """The record keeps its pages across rounds: what lies past ``end`` is an earlier
    round's, and applying it would take back blocks that round's flush made final."""
    path = tmp_path / "f"
    _old_file(path, 4 * BS)
    f = _with_undo(tmp_path, path)
    f.write(0, b"1" * (3 * BS))         # round one saves blocks 0-2
    f.flush()
    after_first = _read(path)
    f.write(0, b"2" * 10)               # round two saves block 0 only, then the writer dies
    f._seal_nonfinal(0)
    record = f.undo.path
    os.close(f.undo.fd)
    os.close(f.fd)
    with open(record, "rb") as r:
        assert len(undo.Record(r.fileno()).ranges) == 1
    assert len(undo.recover(str(tmp_path))) == 1
    assert _read(path) == after_first


def _stale_record(tmp_path, path, edit=None) -> str:
    """A record left by a writer that wrote one block in place and died."""
    f = _with_undo(tmp_path, path)
    f.write(0, b"n" * BS)
    f.write(BS, b"m" * 10)
    record = f.undo.path
    os.close(f.undo.fd)             # the writer is gone: its lock with it
    os.close(f.fd)
    if edit:
        with open(record, "r+b") as r:
            edit(r)
    return record


def test_record_for_another_file_is_dropped(tmp_path):
    path = tmp_path / "f"
    _old_file(path, 2 * BS)
    record = _stale_record(tmp_path, path)
    damaged = open(path, "rb").read()
    _old_file(path, 2 * BS)             # a new file under the same name: another file ID
    replaced = open(path, "rb").read()
    assert damaged != replaced
    assert undo.recover(str(tmp_path)) == []
    assert open(path, "rb").read() == replaced and not os.path.exists(record)


def test_tampered_record_is_refused_and_touches_nothing(tmp_path):
    path = tmp_path / "f"
    old = _old_file(path, 2 * BS)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"E2EF0000" + b"x" * 100)

    def escape(r):          # point the record at a file outside the vault
        raw = r.read()
        end, old_len = struct.unpack_from(">QH", raw, undo._END_AT)
        rel = os.path.relpath(outside, tmp_path).encode()
        rest = raw[undo._HEAD.size + old_len:]
        r.seek(undo._END_AT)
        r.write(struct.pack(">QH", end - old_len + len(rel), len(rel)) + rel + rest)
        r.truncate()
    _stale_record(tmp_path, path, escape)
    before = open(path, "rb").read()
    lines = undo.recover(str(tmp_path))
    assert len(lines) == 1 and "ignored and removed: invalid file path" in lines[0]
    assert open(path, "rb").read() == before and outside.read_bytes() == b"E2EF0000" + b"x" * 100


def test_record_torn_at_its_end_is_applied_up_to_it(tmp_path):
    path = tmp_path / "f"
    old = _old_file(path, 3 * BS)
    f = _with_undo(tmp_path, path)
    f.write(0, b"a" * BS)               # block 0 sealed in place (its old copy saved)
    record = f.undo.path
    whole = os.path.getsize(record)
    os.close(f.undo.fd)
    os.close(f.fd)
    with open(record, "ab") as r:       # a second record torn by the kill before its overwrite
        r.write(struct.pack(">QI", 24 + 4124, 4124) + b"z" * 100)
    assert os.path.getsize(record) > whole
    assert len(undo.recover(str(tmp_path))) == 1
    assert _read(path) == old


def _half_written_vault(tmp_path):
    """A vault whose file ``a.bin`` a killed writer left with one block rewritten in place."""
    from cli import init_vault, run
    from e2efs.tree import Tree
    from e2efs.vault import Vault
    vault, pw, _ = init_vault(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    original = os.urandom(200_000)
    (src / "a.bin").write_bytes(original)
    run("import", src, vault, "--password-file", pw, "--quiet")
    tree = Tree(Vault.locked(str(vault)).unlock_with_password(pw.read_bytes().strip()))
    path = tree.path(*tree.resolve(b"a.bin"))
    f = tree.open_content(path, writable=True)
    f.undo = UndoLog(RecordFiles(str(vault)), f.fd, f.header.file_id, f.layout, lambda: path)
    f.write(0, b"x" * f.layout.block_size)          # sealed in place at once
    os.close(f.undo.fd)
    os.close(f.fd)
    return vault, pw, original


def test_fsck_reports_the_record_and_repair_rolls_back(tmp_path):
    from cli import run
    from e2efs.errors import CorruptData as Corrupt
    vault, pw, original = _half_written_vault(tmp_path)
    fsck = run("fsck", vault, "--password-file", pw, check=False)
    assert fsck.returncode == Corrupt.exit_code
    assert "undo record of an interrupted write" in fsck.stdout
    repair = run("fsck", "--repair", vault, "--password-file", pw)
    assert "REPAIRED undo record applied" in repair.stdout and "rolled back" in repair.stdout
    out = subprocess_cat(vault, pw)
    assert out == original


def test_offline_commands_roll_back_first(tmp_path):
    vault, pw, original = _half_written_vault(tmp_path)
    assert subprocess_cat(vault, pw) == original
    assert not undo.left_behind(str(vault))


def subprocess_cat(vault, pw) -> bytes:
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "e2efs", "cat", str(vault), "a.bin", "--password-file", str(pw)],
                          capture_output=True, check=True).stdout


# -- what the review found: hostile records, odd entries, failed writes ---------------

def _record_naming(tmp_path, rel: str, file_id: bytes, base: int, name="00112233445566ff") -> str:
    folder = tmp_path / UNDO_DIR
    folder.mkdir(exist_ok=True)
    end = undo._HEAD.size + len(rel) + 12 + 10
    head = undo._HEAD.pack(undo.MAGIC, undo.VERSION, bytes(3), file_id, base, 0, end, len(rel)) + rel.encode()
    path = folder / name
    path.write_bytes(head + struct.pack(">QI", 24, 10) + b"X" * 10)
    return str(path)


def test_record_never_writes_through_a_symlink(tmp_path):
    vault, outside = tmp_path / "v", tmp_path / "outside"
    vault.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"#!/bin/sh\n" + bytes(range(14)) + b"echo harmless\n" + b"." * 50)
    (vault / "evil").symlink_to(outside)
    _record_naming(vault, "evil/victim", victim.read_bytes()[8:24], 60)
    lines = undo.recover(str(vault))
    assert len(lines) == 1 and "goes through a symlink" in lines[0]
    assert victim.read_bytes().endswith(b"echo harmless\n" + b"." * 50)
    (vault / "link").symlink_to(victim)                     # the last component a symlink
    _record_naming(vault, "link", victim.read_bytes()[8:24], 60)
    assert "not name a regular file" in undo.recover(str(vault))[0]
    assert victim.read_bytes().endswith(b"echo harmless\n" + b"." * 50)


def test_undo_folder_that_is_a_symlink_is_not_followed(tmp_path):
    vault, precious = tmp_path / "v", tmp_path / "precious"
    vault.mkdir()
    precious.mkdir()
    (precious / "0123456789abcdef").write_bytes(b"not a record, not ours")
    (vault / UNDO_DIR).symlink_to(precious)
    with pytest.raises(OSError, match="not a folder"):
        undo.recover(str(vault))
    assert os.listdir(precious) == ["0123456789abcdef"]


def test_odd_entries_and_oversized_records_do_not_stop_recovery(tmp_path):
    path = tmp_path / "f"
    old = _old_file(path, 2 * BS)
    folder = tmp_path / UNDO_DIR
    folder.mkdir()
    (folder / "00000000000000aa").mkdir()                   # a folder where a record would be
    os.mkfifo(tmp_path / "fifo")
    _record_naming(tmp_path, "fifo", bytes(16), 60, name="00000000000000bb")
    huge = _record_naming(tmp_path, "f", open(path, "rb").read()[8:24], 60, name="00000000000000cc")
    os.truncate(huge, undo.MAX_RECORD + 1)                 # sparse: must not be read into memory
    lines = undo.recover(str(tmp_path))
    assert any("not name a regular file" in l for l in lines)
    assert any("larger than any undo record" in l for l in lines)
    assert _read(path) == old
    assert sorted(os.listdir(folder)) == ["00000000000000aa"]


def test_a_failed_cut_leaves_the_round_rolling_back(tmp_path):
    """A shrink's ftruncate fails after the record was marked done: the mark must be
    withdrawn, or a kill later in the same round would 'finish' instead of rolling back."""
    path = tmp_path / "f"
    old = _old_file(path, 6 * BS + 5)
    pid = os.fork()
    if pid == 0:
        try:
            f = _with_undo(tmp_path, path)
            real_ftruncate, real_pwrite = os.ftruncate, os.pwrite

            def failing_ftruncate(fd, n):
                if fd == f.fd:
                    raise OSError(5, "injected EIO")
                return real_ftruncate(fd, n)
            os.ftruncate = failing_ftruncate
            try:
                f.truncate(2 * BS + 999)
            except OSError:
                pass
            os.ftruncate = real_ftruncate

            def dying_pwrite(fd, data, offset):
                if fd == f.fd:
                    real_pwrite(fd, bytes(data)[:len(data) // 2], offset)
                    os._exit(0)
                return real_pwrite(fd, data, offset)
            os.pwrite = dying_pwrite
            f.write(0, b"x" * BS)
            os._exit(FINISHED)
        except BaseException:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert "rolled back" in undo.recover(str(tmp_path))[0]
    assert _read(path) == old


def test_disk_full_while_sealing_a_run_keeps_its_blocks_pending(tmp_path):
    """The blocks of a failed run write stay pending, so the next flush writes them
    instead of declaring a file with torn blocks complete."""
    path = tmp_path / "f"
    old = _old_file(path, 2 * BS + 5)
    f = _with_undo(tmp_path, path)
    new = random.Random(5).randbytes(3 * BS)
    real_pwrite = os.pwrite

    def full_disk(fd, data, offset):
        if fd == f.undo.fd and offset > 0:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)
    os.pwrite = full_disk
    try:
        with pytest.raises(OSError):
            f.write(BS, new)                     # blocks 1-3 full: one run
    finally:
        os.pwrite = real_pwrite
    f.flush()
    f.undo.close()
    f.undo.records.close()
    os.close(f.fd)
    got = _read(path)           # authentic; the failed run's blocks were written by the flush,
    assert got == old[:BS] + new    # and so was the block after them, which the failure skipped


@pytest.mark.parametrize("roll_back_fails", [False, True])
@pytest.mark.parametrize("fails_at", ["record start", "range entry", "block write"])
def test_a_shrink_the_disk_has_no_room_for_is_not_applied_later(tmp_path, fails_at, roll_back_fails, monkeypatch):
    """The caller of a truncate that failed (disk full: the undo record of its new
    final block, or that block) keeps the old size, and so does the vault once
    space is back; the writes before it are flushed first, and stay."""
    path = tmp_path / "f"
    old = _old_file(path, 6 * BS + 5)
    f = _with_undo(tmp_path, path)
    f.write(100, b"w" * 50)
    expected = old[:100] + b"w" * 50 + old[150:]
    real_pwrite = os.pwrite
    rounds, failed = [], []

    def full_in_second_round(fd, data, offset):
        if fd == f.undo.fd and offset == 0:
            rounds.append(offset)
        if len(rounds) > 1 and {"record start": fd == f.undo.fd and offset == 0,
                                "range entry": fd == f.undo.fd and offset > 0,
                                "block write": fd == f.fd}[fails_at]:
            if fails_at == "block write":
                real_pwrite(fd, bytes(data)[:len(data) // 2], offset)       # torn
            failed.append(fd)
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)
    os.pwrite = full_in_second_round
    if roll_back_fails:                 # putting the old bytes back needs room too (btrfs)
        def no_room(self):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(UndoLog, "roll_back", no_room)
    try:
        with pytest.raises(OSError):
            f.truncate(2 * BS + 999)
    finally:
        os.pwrite = real_pwrite
        monkeypatch.undo()
    assert failed and f.size == len(old) and f.read(0, f.size) == expected
    f.flush()
    f.undo.close()
    f.undo.records.close()
    os.close(f.fd)
    assert _read(path) == expected


@pytest.mark.parametrize("fails_at", ["cut", "record reset"])
def test_a_shrink_that_fails_after_its_blocks_ends_old_or_new(tmp_path, fails_at, monkeypatch):
    """Every block of the shrink is written: a failed cut (EIO) puts the file back
    at its old size, while a failure once the record says "done" (its reset) is
    finished by the record, so the truncate succeeds after all."""
    path = tmp_path / "f"
    old = _old_file(path, 6 * BS + 5)
    f = _with_undo(tmp_path, path)
    name = "ftruncate" if fails_at == "cut" else "pwrite"
    real = getattr(os, name)
    failed = []

    def fails_once(fd, *args):
        if not failed and (fd == f.fd if fails_at == "cut" else (fd, *args) == (f.undo.fd, bytes(8), undo._END_AT)):
            failed.append(args)
            raise OSError(5, "Input/output error")
        return real(fd, *args)
    monkeypatch.setattr(os, name, fails_once)
    if fails_at == "cut":
        with pytest.raises(OSError):
            f.truncate(2 * BS + 999)
    else:
        f.truncate(2 * BS + 999)
    monkeypatch.undo()
    want = old if fails_at == "cut" else old[:2 * BS + 999]
    assert failed and f.size == len(want) and f.read(0, f.size) == want and not f.unflushed
    f.undo.close()
    f.undo.records.close()
    os.close(f.fd)
    assert _read(path) == want


def test_roll_back_in_process_restores_the_last_flush(tmp_path):
    """The mount's way out of a flush that cannot complete (disk full): the writer
    itself puts the file back at its last flush, as ``recover`` would later."""
    path = tmp_path / "f"
    old = _old_file(path, 5 * BS + 100)
    f = _with_undo(tmp_path, path)
    real_pwrite = os.pwrite
    written = []

    def fills_up(fd, data, offset):
        if fd == f.fd:
            written.append(offset)
            if len(written) > 1:                  # the first block goes in, then the disk is full
                raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)
    os.pwrite = fills_up
    try:
        with pytest.raises(OSError):
            f.write(BS + 10, random.Random(9).randbytes(3 * BS))
            f.flush()
    finally:
        os.pwrite = real_pwrite
    assert _read(path) != old                    # half changed: the first rewritten block is new
    assert f.undo.roll_back() is True
    assert not f.undo.active
    f.undo.close()
    f.undo.records.close()
    os.close(f.fd)
    assert _read(path) == old
    assert undo.recover(str(tmp_path)) == []     # nothing left for the next mount


def test_a_block_torn_while_resealed_stays_pending(tmp_path):
    """Growth reseals the old final block as non-final; a short write there (disk
    full) tears it on disk, and its plaintext must stay pending, not only in the
    clean cache that later small writes push it out of: once space is back the
    flush completes."""
    path = tmp_path / "f"
    old = _old_file(path, 40 * BS + 100)
    f = _with_undo(tmp_path, path)
    f.write(45 * BS, b"x" * 10)                     # block 40 must become non-final
    real_pwrite = os.pwrite
    torn_at = f.layout.block_offset(40)

    def short_write(fd, data, offset):
        if fd == f.fd and offset == torn_at:
            real_pwrite(fd, bytes(data)[:BS // 2], offset)      # the part that fits
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)
    os.pwrite = short_write
    try:
        with pytest.raises(OSError):
            f.flush()
    finally:
        os.pwrite = real_pwrite
    for i in range(20):                              # SQLite-like page writes elsewhere
        f.write(i * BS + 1, b"y")
    f.flush()                                        # space is back
    f.undo.close()
    f.undo.records.close()
    os.close(f.fd)
    want = bytearray(old + bytes(45 * BS - len(old)) + b"x" * 10)
    for i in range(20):
        want[i * BS + 1] = ord("y")
    assert _read(path) == bytes(want)


def test_a_block_just_read_is_saved_from_memory_as_it_was_on_disk(tmp_path, monkeypatch):
    """A rewrite of part of a block reads and decrypts it first: its ciphertext
    goes to the record from that read, with no second copy from the file."""
    path = tmp_path / "f"
    old = _old_file(path, 3 * BS)
    on_disk = open(path, "rb").read()
    f = _with_undo(tmp_path, path)
    monkeypatch.setattr(os, "copy_file_range", lambda *a: pytest.fail("copied from the file"))
    f.write(BS + 10, b"z" * 20)
    f._seal_nonfinal(1)
    with open(f.undo.path, "rb") as r:
        rec = undo.Record(r.fileno())
        (offset, at, length), = rec.ranges
        saved = os.pread(r.fileno(), length, at)
    assert offset == 24 + (BS + 28) and saved == on_disk[offset:offset + length]
    monkeypatch.undo()
    os.close(f.undo.fd)             # the writer dies: the record puts block 1 back
    os.close(f.fd)
    assert len(undo.recover(str(tmp_path))) == 1 and _read(path) == old
