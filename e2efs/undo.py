"""Undo records: a file changed in place can always be rolled back to its last flush.

New files are written under a temporary name and renamed into place, but a
file changed in place (an SQLite database, its journal after the first fsync)
is rewritten block by block.  A process killed between those pwrites, or inside
one, would leave blocks that fail authentication, and with them the unchanged
pages that share the block.  So before the first byte of a consistent file is
overwritten, the bytes it held are copied to an undo record in the vault's
``.e2efs-undo`` folder; the record is emptied once the file is consistent again
(the end of ``ContentFile.flush``).  Whoever opens the vault next for writing
finds any record a dead process left and restores the file: exactly as it was
at its last flush, or, if the flush had finished its writes, cut to its new
size.  Records hold ciphertext only and need no key.

A live record is ``flock``ed by its writer; ``recover`` skips those.  Each
record names its file by vault-relative path and content file ID, so a record
for a file that was since deleted or replaced is dropped, never applied.
The guarantee is against the writer dying (SIGKILL, OOM, a crash), not power
loss: nothing here is fsync'd before the overwrite (as in gocryptfs, a power
cut during an in-place write can still leave a block that fails authentication).
"""

import errno
import fcntl
import os
import struct
from typing import Callable

from .blocks import HEADER_LEN, Layout

UNDO_DIR = ".e2efs-undo"
MAGIC = b"E2EU"
VERSION = 1
FILE_ID_OFFSET = 8                       # where a content header keeps its file ID
_HEAD = struct.Struct(">4sB3x16sQQH")    # magic, version, file ID, base size, done size, path length
_DONE_AT = 4 + 1 + 3 + 16 + 8
_RECORD = struct.Struct(">QI")           # ciphertext offset, length


class UndoLog:
    """The undo record of one ciphertext file open for in-place writing.

    ``where`` gives the file's current absolute path (None once it has no
    name: a file nobody can reach needs no undo).  The caller must settle
    (flush) the file before renaming it or a folder above it.
    """

    def __init__(self, records: "RecordFiles", fd: int, file_id: bytes, layout: Layout,
                 where: Callable[[], str | None]):
        self.records = records
        self.vault_root = records.vault_root
        self.target_fd = fd
        self.file_id = file_id
        self.stride = layout.stride
        self.where = where
        self.fd: int | None = None
        self.path: str | None = None
        self.base = 0                    # ciphertext size at the last consistent point
        self.end = 0                     # end of the last complete record
        self.saved: set[int] = set()     # blocks already copied this time round
        self.active = False

    @property
    def saved_bytes(self) -> int:
        return self.end

    def save(self, offset: int, length: int, base: int) -> None:
        """Copy what [offset, offset+length) of the file holds before it is overwritten;
        ``base`` is the file's ciphertext size now, used if this starts a round."""
        if not self.active and not self._begin(base):
            return
        first = (offset - HEADER_LEN) // self.stride
        stop = min(-(-(offset + length - HEADER_LEN) // self.stride),
                   -(-(self.base - HEADER_LEN) // self.stride))
        i = first
        while i < stop:
            if i in self.saved:
                i += 1
                continue
            j = i
            while j < stop and j not in self.saved:
                j += 1
            lo = HEADER_LEN + i * self.stride
            hi = min(HEADER_LEN + j * self.stride, self.base)
            self._append(lo, hi - lo)
            self.saved.update(range(i, j))
            i = j

    def done(self, size: int) -> None:
        """Every block of the change is written; only the cut to ``size`` is left."""
        if self.active:
            os.pwrite(self.fd, struct.pack(">Q", size), _DONE_AT)

    def settled(self) -> None:
        """The file is consistent again: forget this round."""
        if self.active:
            os.ftruncate(self.fd, 0)
            self.active = False
            self.saved.clear()
            self.end = 0

    def close(self, keep: bool = False) -> None:
        """Done with the file; ``keep`` leaves an unfinished round for ``recover``."""
        if self.fd is None:
            return
        if keep and self.active:
            os.close(self.fd)
        else:
            self.settled()
            self.records.give(self.fd, self.path)
        self.fd = self.path = None

    # -- internals ----------------------------------------------------------

    def _begin(self, base: int) -> bool:
        target = self.where()
        if target is None:
            return False
        rel = (target[len(self.vault_root) + 1:] if target.startswith(self.vault_root + "/")
               else os.path.relpath(target, self.vault_root)).encode()
        if self.fd is None:
            self.fd, self.path = self.records.take()
        head = _HEAD.pack(MAGIC, VERSION, self.file_id, base, 0, len(rel)) + rel
        _pwrite_all(self.fd, head, 0)
        self.base, self.end, self.active = base, len(head), True
        return True

    def _append(self, offset: int, length: int) -> None:
        """Save the file's bytes [offset, offset+length).  A record is complete before
        the overwrite it protects starts; a torn one (ENOSPC, a kill) is at the end
        and is written over by the next."""
        _pwrite_all(self.fd, _RECORD.pack(offset, length), self.end)
        _copy(self.target_fd, offset, self.fd, self.end + _RECORD.size, length)
        self.end += _RECORD.size + length


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _copy(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy inside the kernel (copy_file_range: no trip through Python's memory,
    a reflink where the file system has them); pread/pwrite where it is refused."""
    while length:
        try:
            n = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        except OSError:
            n = 0
        if n == 0:
            data = os.pread(src, length, src_offset)
            if len(data) < length:
                raise OSError(errno.EIO, "file shorter than its recorded size")
            _pwrite_all(dst, data, dst_offset)
            return
        src_offset, dst_offset, length = src_offset + n, dst_offset + n, length - n


class RecordFiles:
    """The empty, locked record files of one vault, kept for reuse: an SQLite
    journal is created, changed in place and deleted in every transaction, and
    a record file each time cost a create, a rename and an unlink."""

    SPARE = 8

    def __init__(self, vault_root: str):
        self.vault_root = vault_root
        self._spare: list[tuple[int, str]] = []

    def take(self) -> tuple[int, str]:
        return self._spare.pop() if self._spare else _new_record_file(self.vault_root)

    def give(self, fd: int, path: str) -> None:
        """Take back an empty record file."""
        if len(self._spare) < self.SPARE:
            self._spare.append((fd, path))
        else:
            _remove(fd, path)

    def close(self) -> None:
        while self._spare:
            _remove(*self._spare.pop())


def _remove(fd: int, path: str) -> None:
    os.unlink(path)
    os.close(fd)


def _new_record_file(vault_root: str) -> tuple[int, str]:
    """Create and lock a record file; it only gets its final name once locked,
    so ``recover`` never takes a live record for a dead one."""
    folder = os.path.join(vault_root, UNDO_DIR)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    name = os.urandom(8).hex()
    temp = os.path.join(folder, "." + name)
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = os.path.join(folder, name)
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    return fd, path


# -- recovery ------------------------------------------------------------------

class Record:
    """A parsed undo record (what ``recover`` applies)."""

    def __init__(self, raw: bytes):
        magic, version, self.file_id, self.base, self.done, path_len = _HEAD.unpack_from(raw)
        if magic != MAGIC:
            raise ValueError("not an e2efs undo record")
        if version != VERSION:
            raise ValueError(f"undo record version {version} is not supported")
        rel = raw[_HEAD.size:_HEAD.size + path_len]
        try:
            self.target = rel.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("file path is not ASCII") from None
        parts = self.target.split("/")
        if len(rel) != path_len or not self.target or self.target.startswith("/") or ".." in parts:
            raise ValueError("invalid file path")
        if self.base < HEADER_LEN or (self.done and self.done < HEADER_LEN):
            raise ValueError("invalid file size")
        self.blocks: list[tuple[int, bytes]] = []
        at = _HEAD.size + path_len
        while at + _RECORD.size <= len(raw):
            offset, length = _RECORD.unpack_from(raw, at)
            data = raw[at + _RECORD.size:at + _RECORD.size + length]
            if len(data) < length:
                break                   # torn at the end: its overwrite never started
            if offset < HEADER_LEN or offset + length > self.base:
                raise ValueError("a saved range lies outside the file")
            self.blocks.append((offset, data))
            at += _RECORD.size + length


def _left_behind(vault_root: str):
    """(path, locked fd) of each record whose writer is gone; a live writer holds its lock."""
    folder = os.path.join(vault_root, UNDO_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield path, fd
        finally:
            os.close(fd)


def left_behind(vault_root: str) -> list[str]:
    """Undo records of interrupted writes, waiting for ``recover`` (for fsck's report)."""
    return [path for path, fd in _left_behind(vault_root) if os.fstat(fd).st_size]


def recover(vault_root: str) -> list[str]:
    """Apply every undo record a dead process left, then remove it; one line per
    file restored.  Records still locked by a live writer are left alone."""
    messages = []
    for path, fd in _left_behind(vault_root):
        text = _apply(vault_root, fd, os.path.basename(path))
        os.unlink(path)
        if text:
            messages.append(text)
    return messages


def _apply(vault_root: str, fd: int, name: str) -> str | None:
    raw = _read_all(fd)
    if len(raw) < _HEAD.size or len(raw) < _HEAD.size + _HEAD.unpack_from(raw)[-1]:
        return None                     # empty, or killed while its header was written: nothing changed yet
    try:
        record = Record(raw)
    except ValueError as exc:
        return f"undo record {UNDO_DIR}/{name} ignored and removed: {exc}"
    target = os.path.join(vault_root, record.target)
    try:
        tfd = os.open(target, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None                     # the file is gone: nothing to restore
    try:
        if os.pread(tfd, len(record.file_id), FILE_ID_OFFSET) != record.file_id:
            return None                 # another file took the name since
        if record.done:
            os.ftruncate(tfd, record.done)
            os.fsync(tfd)
            return f"{record.target}: finished an interrupted write"
        for offset, data in record.blocks:
            _pwrite_all(tfd, data, offset)
        os.ftruncate(tfd, record.base)
        os.fsync(tfd)
        return f"{record.target}: rolled back an interrupted write to its last flush"
    finally:
        os.close(tfd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
