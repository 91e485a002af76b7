"""Undo records: a file changed in place can always be rolled back to its last flush.

New files are written under a temporary name and renamed into place, but a
file changed in place (an SQLite database, its journal after the first fsync)
is rewritten block by block.  A process killed between those pwrites, or inside
one, would leave blocks that fail authentication, and with them the unchanged
pages that share the block.  So before the first byte of a consistent file is
overwritten, the bytes it held are copied to an undo record in the vault's
``.e2efs-undo`` folder; the record is emptied once the file is consistent again
(the end of ``ContentFile.flush``) by zeroing its ``end`` field: the record file
keeps its pages for the next round, since new pages cost more than the copy
itself on tmpfs (docs/PERFORMANCE.md), and is cut to 0 bytes once the mount is
quiet (``RecordFiles.trim``): ``.e2efs-undo`` is uploaded by the sync client
with the rest of the vault, and a settled record's old blocks must not be.
Whoever opens the vault next for writing
finds any record a dead process left and restores the file: exactly as it was
at its last flush, or, if the flush had finished its writes, cut to its new
size.  A live writer whose flush cannot complete (disk full) does the same at
once (``roll_back``).  Records hold ciphertext only and need no key.

A live record is ``flock``ed by its writer; ``recover`` skips those.  Each
record names its file by vault-relative path and content file ID, so a record
for a file that was since deleted or replaced is dropped, never applied.
Records come from the vault folder, so they are untrusted: no symlink is
followed, only regular files are written, and only below the record's size.
The guarantee is against the writer dying (SIGKILL, OOM, a crash), not power
loss: nothing here is fsync'd before the overwrite (as in gocryptfs, a power
cut during an in-place write can still leave a block that fails authentication).
"""

import errno
import fcntl
import logging
import os
import re
import stat
import struct
import time
from typing import Callable

from .blocks import HEADER_LEN, Layout
from .diskio import pwrite_all

log = logging.getLogger("e2efs")

UNDO_DIR = ".e2efs-undo"
MAGIC = b"E2EU"
VERSION = 2
FILE_ID_OFFSET = 8                       # where a content header keeps its file ID
_HEAD = struct.Struct(">4sB3s16sQQQH")   # magic, version, reserved, file ID, base size, done size, end, path length
_HEAD_V1 = struct.Struct(">4sB3s16sQQH")  # version 1 had no end: its records ended where the file did
_DONE_AT = 4 + 1 + 3 + 16 + 8
_END_AT = _DONE_AT + 8
_U64 = struct.Struct(">Q")               # the done and end fields
_RECORD = struct.Struct(">QI")           # ciphertext offset, length
_NAME = re.compile(r"[0-9a-f]{16}")
MAX_RECORD = 256 << 20                   # real ones stay near content.UNDO_LIMIT_BYTES
STALE_TEMP_SECONDS = 60                  # a record file still unnamed after this was left by a kill
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UndoLog:
    """The undo record of one ciphertext file open for in-place writing.

    ``where`` gives the file's current absolute path (None once it has no
    name: a file nobody can reach needs no undo).  The caller must settle
    (flush) the file before renaming it, a folder above it, or unlinking the
    name the record uses.
    """

    def __init__(self, records: "RecordFiles", fd: int, file_id: bytes, layout: Layout,
                 where: Callable[[], str | None]):
        self.records = records
        self.vault_root = records.vault_root
        self.target_fd = fd
        self.file_id = file_id
        self.layout = layout
        self.where = where
        self.fd: int | None = None
        self.name: str | None = None
        self.base = 0                    # ciphertext size at the last consistent point
        self.end = 0                     # end of the last complete saved range
        self.saved: set[int] = set()     # blocks already copied this time round
        self.active = False

    @property
    def path(self) -> str | None:
        return None if self.name is None else os.path.join(self.vault_root, UNDO_DIR, self.name)

    @property
    def saved_bytes(self) -> int:
        return self.end

    def save(self, offset: int, length: int, base: int, old: bytes | None = None) -> None:
        """Copy what [offset, offset+length) of the file holds before it is overwritten;
        ``base`` is the file's ciphertext size now, used if this starts a round;
        ``old``, if given, is what the block at ``offset`` holds now (saved from
        memory instead of copied from the file, when it is all that needs saving)."""
        if not self.active and not self._begin(base):
            return
        touched = self.layout.stored_blocks(offset, length)
        stop = min(touched.stop, self.layout.stored_blocks(HEADER_LEN, self.base - HEADER_LEN).stop)
        i = touched.start
        while i < stop:
            if i in self.saved:
                i += 1
                continue
            j = i
            while j < stop and j not in self.saved:
                j += 1
            lo = self.layout.block_offset(i)
            hi = min(self.layout.block_offset(j), self.base)
            self._append(lo, hi - lo, old if lo == offset and old is not None and len(old) == hi - lo else None)
            self.saved.update(range(i, j))
            i = j

    def done(self, size: int) -> None:
        """Every block of the change is written; only the cut to ``size`` is left
        (``size`` 0: not done after all, the cut failed)."""
        if self.active:
            os.pwrite(self.fd, _U64.pack(size), _DONE_AT)

    def settled(self) -> None:
        """The file is consistent again: forget this round."""
        if self.active:
            self._set_end(0)
            self.records.hold(self.fd)
            self.active = False
            self.saved.clear()
            self.end = 0

    def roll_back(self) -> bool:
        """Make the file consistent now, as ``recover`` would at the next mount,
        after a flush that cannot complete (disk full): True if it went back to
        its last flush, False if the change was written whole after all."""
        reverted = _restore(Record(self.fd), self.fd, self.target_fd)
        self.settled()
        return reverted

    def close(self, keep: bool = False) -> None:
        """Done with the file; ``keep`` leaves an unfinished round for ``recover``."""
        if self.fd is None:
            return
        if keep and self.active:
            self.records.drop(self.fd)
            os.close(self.fd)
        else:
            self.settled()
            self.records.give(self.fd, self.name)
        self.fd = self.name = None

    # -- internals ----------------------------------------------------------

    def _begin(self, base: int) -> bool:
        target = self.where()
        if target is None:
            return False
        rel = (target[len(self.vault_root) + 1:] if target.startswith(self.vault_root + "/")
               else os.path.relpath(target, self.vault_root)).encode()
        if self.fd is None:
            self.fd, self.name = self.records.take()
        self.records.use(self.fd)
        end = _HEAD.size + len(rel)
        head = _HEAD.pack(MAGIC, VERSION, bytes(3), self.file_id, base, 0, 0, len(rel)) + rel

        def write():        # ``end`` only once the header is whole: over an old one, a torn
            pwrite_all(self.fd, head, 0)        # header must not read as this round's
            self._set_end(end)
        self._write_or_cut(write, 0)
        self.base, self.end, self.active = base, end, True
        return True

    def _append(self, offset: int, length: int, data: bytes | None = None) -> None:
        """Save the file's bytes [offset, offset+length).  A range is complete, and
        ``end`` says so, before the overwrite it protects starts."""
        end = self.end + _RECORD.size + length

        def write():
            if data is None:
                pwrite_all(self.fd, _RECORD.pack(offset, length), self.end)
                _copy(self.target_fd, offset, self.fd, self.end + _RECORD.size, length)
            else:
                pwrite_all(self.fd, _RECORD.pack(offset, length) + data, self.end)
            self._set_end(end)
        self._write_or_cut(write, self.end)
        self.end = end

    def _set_end(self, end: int) -> None:
        os.pwrite(self.fd, _U64.pack(end), _END_AT)

    def _write_or_cut(self, write, end: int) -> None:
        """A failed write (ENOSPC) frees what it allocated; ``end`` still marks the
        last complete range."""
        try:
            write()
        except BaseException:
            try:
                os.ftruncate(self.fd, end)
            except OSError:
                pass
            raise


def _copy(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy inside the kernel (copy_file_range: no trip through Python's memory,
    a reflink where the file system has them); pread/pwrite, 1 MiB at a time,
    where it is refused."""
    while length:
        try:
            n = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        except OSError:
            n = 0
        if n == 0:
            data = os.pread(src, min(length, 1 << 20), src_offset)
            if not data:
                raise OSError(errno.EIO, "file shorter than its recorded size")
            pwrite_all(dst, data, dst_offset)
            n = len(data)
        src_offset, dst_offset, length = src_offset + n, dst_offset + n, length - n


def _open_folder(vault_root: str, create: bool) -> int | None:
    """The undo folder, never through a symlink (an attacker's link would aim
    ``recover`` at another folder)."""
    path = os.path.join(vault_root, UNDO_DIR)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        return None


class RecordFiles:
    """The record files of one vault's writer: created locked, and kept empty and
    locked for reuse (an SQLite journal is created, changed in place and deleted
    in every transaction; a record file each time cost a create, a rename and an
    unlink)."""

    SPARE = 8

    def __init__(self, vault_root: str):
        self.vault_root = vault_root
        self._folder: int | None = None
        self._spare: list[tuple[int, str]] = []
        self._held: set[int] = set()        # settled records that still hold an earlier round's pages
        self._inode: dict[int, int] = {}    # record fd -> its inode: trim cuts nothing else

    def take(self) -> tuple[int, str]:
        """(fd, name) of an empty record file this process holds the lock of."""
        if self._spare:
            return self._spare.pop()
        if self._folder is None:
            self._folder = _open_folder(self.vault_root, create=True)
        name = os.urandom(8).hex()
        fd = os.open("." + name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._folder)
        try:        # named only once locked, so recover never takes it for a dead writer's
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename("." + name, name, src_dir_fd=self._folder, dst_dir_fd=self._folder)
        except BaseException:
            os.close(fd)
            os.unlink("." + name, dir_fd=self._folder)
            raise
        self._inode[fd] = os.fstat(fd).st_ino
        return fd, name

    def hold(self, fd: int) -> None:
        """Record ``fd`` is settled but keeps its pages until ``trim``."""
        self._held.add(fd)

    def use(self, fd: int) -> None:
        """Record ``fd`` starts a round: ``trim`` must not cut it now."""
        self._held.discard(fd)

    def trim(self) -> None:
        """Cut every settled record to 0 bytes (the mount calls this when quiet)."""
        while self._held:
            fd = self._held.pop()
            try:
                if fd in self._inode and os.fstat(fd).st_ino == self._inode[fd]:
                    os.ftruncate(fd, 0)
            except OSError as exc:      # an empty record with old pages is harmless: left as it is
                log.warning("undo record %s not emptied: %s", fd, exc.strerror or exc)

    def give(self, fd: int, name: str) -> None:
        """Take back an empty record file."""
        if len(self._spare) < self.SPARE:
            self._spare.append((fd, name))
        else:
            self._remove(fd, name)

    def close(self) -> None:
        while self._spare:
            self._remove(*self._spare.pop())
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None

    def drop(self, fd: int) -> None:
        """Record ``fd`` is about to be closed, whatever it holds."""
        self._held.discard(fd)
        self._inode.pop(fd, None)

    def _remove(self, fd: int, name: str) -> None:
        self.drop(fd)
        try:
            os.unlink(name, dir_fd=self._folder)
        finally:
            os.close(fd)


# -- recovery ------------------------------------------------------------------

class Record:
    """The header of an undo record, and where its complete saved ranges are;
    ValueError if it must be ignored.  Reads version 1 records too (left by
    an earlier e2efs killed mid-write)."""

    def __init__(self, fd: int):
        size = os.fstat(fd).st_size
        if size > MAX_RECORD:
            raise ValueError("larger than any undo record e2efs writes")
        version, fields, head = _parse_head(os.pread(fd, _HEAD.size, 0))
        if version == 1:
            magic, version, reserved, self.file_id, self.base, self.done, path_len = fields
            end = size
        else:
            magic, version, reserved, self.file_id, self.base, self.done, end, path_len = fields
            if not head + path_len <= end <= size:
                raise ValueError("invalid end of the saved ranges")
        if reserved != bytes(3):
            raise ValueError("invalid reserved field")
        try:
            self.target = os.pread(fd, path_len, head).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("file path is not ASCII") from None
        self.parts = self.target.split("/")
        if any(part in ("", ".", "..") for part in self.parts):
            raise ValueError("invalid file path")
        if self.base < HEADER_LEN or (self.done and self.done < HEADER_LEN):
            raise ValueError("invalid file size")
        self.ranges: list[tuple[int, int, int]] = []      # (file offset, record offset, length)
        at = head + path_len
        while at + _RECORD.size <= end:
            offset, length = _RECORD.unpack(os.pread(fd, _RECORD.size, at))
            if at + _RECORD.size + length > end:
                break                   # torn at the end: its overwrite never started
            if offset < HEADER_LEN or offset + length > self.base:
                raise ValueError("a saved range lies outside the file")
            self.ranges.append((offset, at + _RECORD.size, length))
            at += _RECORD.size + length

    @staticmethod
    def started(fd: int) -> bool:
        """False for an empty record (no bytes, or ``end`` 0), or a version 1
        record killed while its header was written: nothing was changed yet."""
        raw = os.pread(fd, _HEAD.size, 0)
        if raw[:5] == MAGIC + bytes([VERSION]):
            return len(raw) == _HEAD.size and _U64.unpack_from(raw, _END_AT)[0] != 0
        return len(raw) >= _HEAD_V1.size and \
            os.fstat(fd).st_size >= _HEAD_V1.size + _HEAD_V1.unpack_from(raw)[-1]


def _parse_head(raw: bytes) -> tuple[int, tuple, int]:
    """(version, the header's fields, its length) of a record's first bytes."""
    if len(raw) < 5 or raw[:4] != MAGIC:
        raise ValueError("not an e2efs undo record")
    version = raw[4]
    layout = {1: _HEAD_V1, VERSION: _HEAD}.get(version)
    if layout is None:
        raise ValueError(f"undo record version {version} is not supported")
    if len(raw) < layout.size:
        raise ValueError("header cut short")
    return version, layout.unpack_from(raw), layout.size


def _left_behind(vault_root: str, writable: bool):
    """(name, folder fd, record fd) of each record whose writer is gone (a live
    writer holds its lock); unnamed record files a kill left are removed."""
    try:
        folder = _open_folder(vault_root, create=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise OSError(exc.errno, f"{UNDO_DIR} is not a folder: not touched") from None
        raise
    if folder is None:
        return
    try:
        for name in sorted(os.listdir(folder)):
            if not _NAME.fullmatch(name.removeprefix(".")):
                continue
            try:
                fd = os.open(name, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW
                             | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
            except OSError:
                continue                # gone, or not a record file (a folder, a symlink)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue            # its writer is alive
                try:        # another recover may have removed it while we waited for the lock
                    if os.stat(name, dir_fd=folder, follow_symlinks=False).st_ino != st.st_ino:
                        continue
                except FileNotFoundError:
                    continue
                if name.startswith("."):
                    if writable and time.time() - st.st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(name, dir_fd=folder)
                    continue
                yield name, folder, fd
            finally:
                os.close(fd)
    finally:
        os.close(folder)


def left_behind(vault_root: str) -> list[str]:
    """Undo records of interrupted writes, waiting for ``recover`` (fsck's report,
    read-only mounts: opens nothing for writing)."""
    return [os.path.join(vault_root, UNDO_DIR, name)
            for name, _, fd in _left_behind(vault_root, writable=False) if Record.started(fd)]


def recover(vault_root: str) -> list[str]:
    """Apply every undo record a dead process left, then remove it; one line per
    file restored or record refused.  Records still locked by a live writer, and
    records whose file cannot be opened now (permissions, I/O errors), are kept."""
    messages = []
    for name, folder, fd in _left_behind(vault_root, writable=True):
        label = f"{UNDO_DIR}/{name}"
        try:
            text, done = _apply(vault_root, fd, label)
        except OSError as exc:
            text, done = f"undo record {label} kept: {exc.strerror or exc}", False
        if done:
            try:
                os.unlink(name, dir_fd=folder)
            except FileNotFoundError:
                pass
        if text:
            messages.append(text)
    return messages


def _apply(vault_root: str, fd: int, label: str) -> tuple[str | None, bool]:
    """(message, whether the record is finished with)."""
    if not Record.started(fd):
        return None, True
    try:
        record = Record(fd)
    except ValueError as exc:
        return f"undo record {label} ignored and removed: {exc}", True
    try:
        tfd = _open_beneath(vault_root, record.parts)
    except (FileNotFoundError, NotADirectoryError):
        return None, True               # the file is gone: nothing to restore
    except ValueError as exc:
        return f"undo record {label} ignored and removed: {exc}", True
    try:
        if os.pread(tfd, len(record.file_id), FILE_ID_OFFSET) != record.file_id:
            return None, True           # another file took the name since
        if _restore(record, fd, tfd):
            return f"{record.target}: rolled back an interrupted write to its last flush", True
        return f"{record.target}: finished an interrupted write", True
    finally:
        os.close(tfd)


def _restore(record: Record, fd: int, tfd: int) -> bool:
    """Make file ``tfd`` consistent as ``record`` (read from ``fd``) says: cut to
    the new size if the change was written whole (False), else its saved bytes
    put back and the old size (True)."""
    if record.done:
        os.ftruncate(tfd, record.done)
    else:
        for offset, at, length in record.ranges:
            _copy(fd, at, tfd, offset, length)
        os.ftruncate(tfd, record.base)
    os.fsync(tfd)
    return not record.done


def _open_beneath(vault_root: str, parts: list[str]) -> int:
    """Open the regular file ``parts`` below the vault folder for writing without
    following any symlink on the way; ValueError if it is not one."""
    folder = os.open(vault_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                below = os.open(part, _DIR_FLAGS, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and \
                        stat.S_ISLNK(os.stat(part, dir_fd=folder, follow_symlinks=False).st_mode):
                    raise ValueError("its path goes through a symlink") from None
                raise
            os.close(folder)
            folder = below
        try:
            fd = os.open(parts[-1], os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise ValueError("it does not name a regular file") from None
            raise
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("it does not name a regular file")
    return fd
