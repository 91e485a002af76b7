"""The content format: a file header and AES-256-GCM blocks, with random access.

``ContentFile`` is the plaintext view of one ciphertext file.  It is what the
mount and the offline tools both use: read, write, truncate at any offset,
re-encrypting only the blocks a change touches.  It knows nothing of FUSE.

Writes are buffered per block: a block is encrypted when it is complete (or
when ``flush`` is called), so sequential writes of any size encrypt each block
once.  Between flushes the ciphertext on disk may be torn; a torn file fails
authentication, it is never read back as data.  A file changed in place gets
an ``undo`` log (undo.py), so a writer killed before the next flush leaves a
file that can be rolled back to it.
"""

import itertools
import os
import struct
import threading
from collections import OrderedDict

from .blocks import BLOCK_OVERHEAD, HEADER_LEN, NONCE_LEN, Layout, MIN_BLOCK_SHIFT, MAX_BLOCK_SHIFT
from .crypto import Keys
from .diskio import pwrite_all
from cryptography.exceptions import InvalidTag
from .errors import CorruptData
from .undo import UndoLog

MAGIC = b"E2EF"
CONTENT_VERSION = 1
_HEADER = struct.Struct(">4sBBH16s")
_BLOCK_AAD = struct.Struct(">QB")
FILE_ID_LEN = 16

CLEAN_CACHE_BLOCKS = 16
DIRTY_LIMIT_BYTES = 4 << 20
UNDO_LIMIT_BYTES = 16 << 20     # an in-place rewrite flushes each time it has saved this much
RAW_LIMIT_BYTES = 1 << 20       # ciphertext of blocks read for a rewrite, kept for its undo record


class Header:
    __slots__ = ("file_id", "layout", "raw")

    def __init__(self, file_id: bytes, block_size: int):
        self.file_id = file_id
        self.layout = Layout(block_size)
        self.raw = _HEADER.pack(MAGIC, CONTENT_VERSION, block_size.bit_length() - 1, 0, file_id)

    @classmethod
    def new(cls, block_size: int) -> "Header":
        return cls(os.urandom(FILE_ID_LEN), block_size)

    @classmethod
    def parse(cls, raw: bytes, label: str) -> "Header":
        if len(raw) < HEADER_LEN:
            raise CorruptData(f"{label}: file is shorter than an e2efs header ({len(raw)} bytes)")
        magic, version, shift, reserved, file_id = _HEADER.unpack(raw[:HEADER_LEN])
        if magic != MAGIC:
            raise CorruptData(f"{label}: not an e2efs file (bad magic)")
        if version != CONTENT_VERSION:
            raise CorruptData(f"{label}: unsupported content format version {version}")
        if reserved != 0 or not MIN_BLOCK_SHIFT <= shift <= MAX_BLOCK_SHIFT:
            raise CorruptData(f"{label}: invalid header fields")
        return cls(file_id, 1 << shift)


class FileCipher:
    """Seals and opens the blocks of one file: key from K and the file ID.

    A block's associated data is the header followed by ``_BLOCK_AAD``; the run
    methods pack each block's index into one buffer per run instead of building
    bytes per block: at 4 KiB blocks the Python around each AEAD call costs as
    much as the call (docs/PERFORMANCE.md, block size).  One buffer per call,
    not per object: threads seal disjoint runs of one file at once (seal_at)."""

    def __init__(self, keys: Keys, header: Header):
        self._aead = keys.file_aead(header.file_id)
        self._header = header.raw
        self._block_size = header.layout.block_size
        self._aad_template = header.raw + bytes(_BLOCK_AAD.size)

    def _aad(self, index: int, final: bool) -> bytes:
        return self._header + _BLOCK_AAD.pack(index, 1 if final else 0)

    def seal(self, index: int, plain: bytes, final: bool) -> bytes:
        """nonce | ciphertext | tag as a new bytes (the format vectors)."""
        out = bytearray(len(plain) + BLOCK_OVERHEAD)
        self.seal_run_into(index, plain, index if final else None, memoryview(out))
        return bytes(out)

    def open(self, index: int, block: bytes, final: bool) -> bytes | None:
        try:
            return self._aead.decrypt(block[:NONCE_LEN], block[NONCE_LEN:], self._aad(index, final))
        except InvalidTag:
            return None

    def seal_run_into(self, first: int, plain, final: int | None, out: memoryview) -> None:
        """Seal ``plain`` as blocks ``first``, ``first+1``, ... (``final``: the index
        sealed as final, if among them; an empty ``plain`` is one empty block)
        into ``out``, laid out as on disk: one urandom for all nonces, no
        allocation per block."""
        encrypt_into, aad, pack_into = self._aead.encrypt_into, bytearray(self._aad_template), _BLOCK_AAD.pack_into
        at, block_size, plain = len(self._header), self._block_size, memoryview(plain)
        count = max(1, -(-len(plain) // block_size))
        nonces = memoryview(os.urandom(NONCE_LEN * count))
        o = p = 0
        for index in range(first, first + count):
            piece = plain[p:p + block_size]
            nonce = nonces[(index - first) * NONCE_LEN:(index - first + 1) * NONCE_LEN]
            pack_into(aad, at, index, index == final)
            out[o:o + NONCE_LEN] = nonce
            encrypt_into(nonce, piece, aad, out[o + NONCE_LEN:o + len(piece) + BLOCK_OVERHEAD])
            o += len(piece) + BLOCK_OVERHEAD
            p += block_size

    def open_run_into(self, first: int, raw: memoryview, out: memoryview) -> int | None:
        """Decrypt the full, non-final blocks in ``raw`` (block ``first`` onwards,
        as on disk) into ``out``; the index of the first that fails
        authentication, or None."""
        decrypt_into, aad, pack_into = self._aead.decrypt_into, bytearray(self._aad_template), _BLOCK_AAD.pack_into
        at, block_size = len(self._header), self._block_size
        stride = block_size + BLOCK_OVERHEAD
        o = p = 0
        for index in range(first, first + len(raw) // stride):
            pack_into(aad, at, index, 0)
            try:
                decrypt_into(raw[o:o + NONCE_LEN], raw[o + NONCE_LEN:o + stride], aad, out[p:p + block_size])
            except InvalidTag:
                return index
            o += stride
            p += block_size
        return None


_scratch = threading.local()


def scratch(size: int, slot: str = "out") -> memoryview:
    """A per-thread buffer reused across calls: a fresh buffer above glibc's
    mmap threshold per request costs more in page faults than the AES work
    (PYFUSE3_NOTES).  Distinct ``slot`` names give distinct buffers."""
    buf = getattr(_scratch, slot, None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 1 << 20))
        setattr(_scratch, slot, buf)
    return memoryview(buf)[:size]


class ContentFile:
    """Random-access plaintext over one open ciphertext file descriptor.

    The caller owns ``fd`` (opened read-write for writing); ``label`` names the
    file in errors and logs (a ciphertext path, never a plaintext name).
    """

    def __init__(self, fd: int, keys: Keys, header: Header, size: int, label: str):
        self.fd = fd
        self.label = label
        self.header = header
        self.layout = header.layout
        self._cipher = FileCipher(keys, header)
        self._size = size
        self._flushed_size = size
        self._disk_blocks = self.layout.block_count(size)
        self._disk_final: int | None = self._disk_blocks - 1
        # blocks held in memory, never changed in place: a change makes a new
        # object, so one can move from dirty to clean without a copy
        self._dirty: dict[int, bytes | bytearray] = {}
        self._clean: OrderedDict[int, bytes | bytearray] = OrderedDict()
        self._raw: dict[int, bytes] = {}     # ciphertext of blocks read since last written, for the undo record
        self.undo: UndoLog | None = None     # set by whoever writes the file in place
        self._disk_end = self.layout.ciphertext_size(size)     # where the ciphertext on disk ends
        self.disk_writes = 0        # changes made to the ciphertext file (each moved its mtime)
        self.refused_writes = 0     # writes dropped whole (disk full): their data is nowhere but the caller's

    @classmethod
    def create(cls, fd: int, keys: Keys, block_size: int, label: str) -> "ContentFile":
        """Start a new, empty file on a new, empty fd.  Only the header is written
        now: the final block is sealed by the first ``flush``, which every new
        file gets before it is committed, so a small file is sealed once."""
        header = Header.new(block_size)
        f = cls(fd, keys, header, 0, label)
        pwrite_all(fd, header.raw, 0)
        f._disk_blocks, f._disk_final, f._disk_end = 0, None, HEADER_LEN
        return f

    @classmethod
    def open(cls, fd: int, keys: Keys, label: str) -> "ContentFile":
        header = Header.parse(os.pread(fd, HEADER_LEN, 0), label)
        cipher_size = os.fstat(fd).st_size
        size = header.layout.plaintext_size(cipher_size)
        if size is None:
            raise CorruptData(f"{label}: ciphertext size {cipher_size} is impossible (truncated or extended)")
        f = cls(fd, keys, header, size, label)
        if size == 0:
            f._stored(0)     # no read will ever touch the one empty block: authenticate it now
        return f

    @property
    def size(self) -> int:
        return self._size

    # -- block access -------------------------------------------------------

    def _stored(self, index: int) -> bytes:
        cached = self._clean.get(index)
        if cached is not None:
            self._clean.move_to_end(index)
            return cached
        raw = os.pread(self.fd, self.layout.stride, self.layout.block_offset(index))
        plain = self._cipher.open(index, raw, final=index == self._disk_final)
        if plain is None:
            raise CorruptData(f"{self.label}: block {index} failed authentication")
        self._remember(index, plain)
        if self.undo is not None:       # a rewrite saves it from memory, not by copying it from disk again
            self._raw[index] = raw
            if len(self._raw) > max(1, RAW_LIMIT_BYTES // self.layout.stride):
                del self._raw[next(iter(self._raw))]
        return plain

    def _remember(self, index: int, plain: bytes) -> None:
        self._clean[index] = plain
        self._clean.move_to_end(index)
        while len(self._clean) > CLEAN_CACHE_BLOCKS:
            self._clean.popitem(last=False)

    def _current(self, index: int) -> bytes | bytearray:
        """Block ``index`` as the file holds it now, sized to the logical size."""
        want = self.layout.block_len(index, self._size)
        if index in self._dirty:
            data = self._dirty[index]
        elif index < self._disk_blocks:
            data = self._stored(index)
        else:
            data = b""
        if len(data) < want:
            return bytes(data) + bytes(want - len(data))
        return data[:want] if len(data) > want else data

    def _put(self, index: int, plain: bytes, final: bool) -> None:
        out = scratch(len(plain) + BLOCK_OVERHEAD)
        self._cipher.seal_run_into(index, plain, index if final else None, out)
        try:
            self._pwrite_all(out, self.layout.block_offset(index), self._raw.get(index))
        except BaseException:
            if index not in self._dirty:
                self._keep_pending(index, plain)
            raise

    def _keep_pending(self, index: int, plain) -> None:
        """A block whose write failed may be torn on disk now: only a rewrite
        repairs it, so it waits in the dirty blocks (the clean cache may drop it)."""
        self._dirty[index] = bytearray(plain)
        self._clean.pop(index, None)

    def _pwrite_all(self, view: memoryview, offset: int, old: bytes | None = None) -> None:
        """``old``: what the one block at ``offset`` holds on disk now, if known."""
        if self.undo is not None:
            self.undo.save(offset, len(view), self.layout.ciphertext_size(self._flushed_size), old)
            if self._raw:
                self._forget_raw(offset, len(view))
        self._disk_end = max(self._disk_end, offset + len(view))
        self.disk_writes += 1
        pwrite_all(self.fd, view, offset)

    def _forget_raw(self, offset: int, length: int) -> None:
        for i in self.layout.stored_blocks(offset, length):
            self._raw.pop(i, None)

    # -- plaintext operations -----------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self._size - offset))
        view = scratch(length)
        self.read_into(offset, view)
        return bytes(view)

    def read_into(self, offset: int, view: memoryview) -> int:
        """Read into the caller's buffer (no allocation); returns the bytes read."""
        end = min(offset + len(view), self._size)
        if offset >= end:
            return 0
        bs = self.layout.block_size
        view = view[:end - offset]
        blocks = self.layout.blocks_touched(offset, end - offset)
        i = blocks.start
        while i < blocks.stop:
            if self._on_disk_only(i):
                j = i + 1
                while j < blocks.stop and self._on_disk_only(j):
                    j += 1
                self._read_stored(i, j, offset, end, view)
                i = j
                continue
            start = i * bs
            lo, hi = max(offset, start), min(end, start + bs)
            view[lo - offset:hi - offset] = self._current(i)[lo - start:hi - start]
            i += 1
        return end - offset

    def _on_disk_only(self, index: int) -> bool:
        return index < self._disk_blocks and index not in self._dirty and index not in self._clean

    def _read_stored(self, first: int, stop: int, offset: int, end: int, out: memoryview) -> None:
        """Blocks [first, stop) straight from disk with one pread, decrypted in place
        into ``out`` (the plaintext range [offset, end)); only partly read blocks are cached."""
        bs, stride = self.layout.block_size, self.layout.stride
        raw = scratch((stop - first) * stride, "raw")
        raw = raw[:os.preadv(self.fd, [raw], self.layout.block_offset(first))]
        # [whole, past): full non-final blocks inside the range, decrypted in one pass
        whole = first if first * bs >= offset else first + 1
        past = max(whole, min(stop, end // bs, first + len(raw) // stride))
        if self._disk_final is not None and whole <= self._disk_final < past:
            past = self._disk_final
        bad = self._cipher.open_run_into(whole, raw[(whole - first) * stride:(past - first) * stride],
                                         out[whole * bs - offset:past * bs - offset])
        if bad is not None:
            raise CorruptData(f"{self.label}: block {bad} failed authentication")
        for i in itertools.chain(range(first, whole), range(past, stop)):
            block = raw[(i - first) * stride:(i - first + 1) * stride]
            start = i * bs
            final = i == self._disk_final        # only the disk's final block may be short
            want = self.layout.block_len(i, self._flushed_size) if final else bs
            if len(block) != want + BLOCK_OVERHEAD:
                raise CorruptData(f"{self.label}: block {i} is truncated")
            plain = self._cipher.open(i, block, final)
            if plain is None:
                raise CorruptData(f"{self.label}: block {i} failed authentication")
            lo, hi = max(offset, start), min(end, start + bs)
            chunk = plain[lo - start:hi - start]     # past a stored final block (an extension) the file reads zeros
            out[lo - offset:hi - offset] = chunk + bytes(hi - lo - len(chunk))
            if lo != start or hi - lo != want:
                self._remember(i, plain)

    def write(self, offset: int, data: bytes) -> int:
        if not data:
            return 0
        bs = self.layout.block_size
        if len(self._dirty) * bs > DIRTY_LIMIT_BYTES:
            # left over by a write that failed (disk full): written now, or this
            # write is refused too; never held in memory without bound
            try:
                self._seal_all_before(self._last_index())
            except BaseException:
                self.refused_writes += 1
                raise
        end = offset + len(data)
        old_last = self._last_index()
        self._size = max(self._size, end)
        try:
            self._write_blocks(offset, memoryview(data), old_last)
        except BaseException:
            self._keep_request(offset, memoryview(data))
            raise
        if len(self._dirty) * bs > DIRTY_LIMIT_BYTES:
            self._seal_all_before(self._last_index())
        if self.undo is not None and self.undo.saved_bytes > UNDO_LIMIT_BYTES:
            self.flush()
        return len(data)

    def _keep_request(self, offset: int, view: memoryview) -> None:
        """A block write failed (disk full) part way through a request: the size
        already counts all of it, so every block it touches waits in the dirty
        blocks, to be written by the next flush, rather than reading as zeros."""
        for i in self.layout.blocks_touched(offset, len(view)):
            self._keep_pending(i, self._block_with(i, offset, view))

    def _block_with(self, i: int, offset: int, view: memoryview) -> bytes | bytearray:
        """Block ``i`` once the request's bytes (``view`` at ``offset``) are in it:
        a new object, or the request's own bytes when they are the whole block."""
        start = i * self.layout.block_size
        lo, hi = max(offset, start), min(offset + len(view), start + self.layout.block_size)
        if lo == start and hi == start + self.layout.block_len(i, self._size):
            if lo == offset and hi - lo == len(view) == len(view.obj) and isinstance(view.obj, bytes):
                return view.obj
            return bytes(view[lo - offset:hi - offset])
        block = bytearray(self._current(i))
        block[lo - start:hi - start] = view[lo - offset:hi - offset]
        return block

    def _write_blocks(self, offset: int, view: memoryview, old_last: int) -> None:
        bs = self.layout.block_size
        end = offset + len(view)
        last = self._last_index()
        if old_last < last:
            self._seal_if_complete(old_last, last)      # the old tail, full and now followed by more
        run: list[int] = []
        for i in self.layout.blocks_touched(offset, len(view)):
            start = i * bs
            lo, hi = max(offset, start), min(end, start + bs)
            full = lo == start and hi == start + bs and i < last
            if full and run and run[-1] == i - 1:
                run.append(i)
                continue
            if run:
                self._seal_run(run, view, offset)
                run = []
            if full and self._sealable(i):
                run.append(i)
                continue
            self._dirty[i] = self._block_with(i, offset, view)
            self._clean.pop(i, None)
            if hi == start + bs:
                self._seal_if_complete(i, last)
        if run:
            self._seal_run(run, view, offset)

    def truncate(self, size: int) -> None:
        if size == self._size:
            return
        if size > self._size:
            self._size = size          # the new bytes read as zeros until flushed
            return
        self.flush()        # the changes before it first: if they fail, the truncate has not begun
        old_size, last, writes = self._size, self.layout.block_count(size) - 1, self.disk_writes
        old_block = bytes(self._current(last))
        self._dirty = {last: bytearray(old_block[:self.layout.block_len(last, size)])}
        self._clean.clear()
        self._raw.clear()
        self._size = size
        try:
            self.flush()
        except BaseException:
            if not self._undo_truncate(old_size, last, old_block, writes):
                raise

    def _undo_truncate(self, old_size: int, last: int, old_block: bytes, writes: int) -> bool:
        """A shrink whose flush failed (disk full) is not left pending: the caller
        hears it failed, and the kernel keeps the old size.  The file goes back to
        the flush just before it; True if the shrink is on disk whole after all."""
        self._clean.clear()             # it may hold the new final block
        self._raw.clear()
        reverted = None
        if self.undo is not None and self.undo.active:
            try:
                reverted = self.undo.roll_back()
            except Exception:
                pass                    # the file stays as the failed flush left it
        shrunk = reverted is False or (reverted is None and self._disk_end <= self.layout.ciphertext_size(self._size))
        if shrunk:                      # new final block written and the file cut
            self._dirty = {}
            self._as_flushed(self._size)
            return True
        # back on disk, or to be put back: the old final block may be torn (rewritten
        # by the next flush; a kill before it leaves the record to restore it)
        self._dirty = {last: bytearray(old_block)} if not reverted and self.disk_writes != writes else {}
        self._size = old_size
        self._as_flushed(old_size)
        return False

    def _as_flushed(self, size: int) -> None:
        """The bookkeeping of a file whose ciphertext holds ``size`` bytes, whole."""
        self._flushed_size = size
        self._disk_blocks = self.layout.block_count(size)
        self._disk_final = self._disk_blocks - 1
        self._disk_end = self.layout.ciphertext_size(size)

    def authenticate(self) -> None:
        """Decrypt every block once (fsck, cat): raises CorruptData at the first bad one."""
        for i in range(self._last_index() + 1):
            self._current(i)
            self._clean.pop(i, None)

    @property
    def unflushed(self) -> bool:
        """Does the file hold changes that are not on disk as a complete file yet?"""
        return bool(self._dirty) or self._flushed_size != self._size or self._disk_final != self._last_index()

    def flush(self) -> None:
        """Write every pending block and leave a complete, authentic file on disk."""
        last = self._last_index()
        if self.unflushed:
            self._seal_all_before(last)
            if last in self._dirty or self._disk_final != last or self._flushed_size != self._size:
                tail = self._current(last)
                self._put(last, tail, final=True)    # else it is on disk already
                self._remember(last, tail)
            self._dirty.pop(last, None)
            expected = self.layout.ciphertext_size(self._size)
            if self._disk_end > expected:      # else the final block's pwrite ended the file
                if self.undo is not None:
                    self.undo.done(expected)
                self._raw.clear()
                try:
                    self.disk_writes += 1
                    os.ftruncate(self.fd, expected)
                except BaseException:
                    if self.undo is not None:
                        self.undo.done(0)       # not done: a kill from here on must roll back
                    raise
                self._disk_end = expected
            self._disk_blocks, self._disk_final = last + 1, last
            self._flushed_size = self._size
        if self.undo is not None:
            self.undo.settled()

    def fsync(self) -> None:
        self.flush()
        os.fsync(self.fd)

    # -- internals ----------------------------------------------------------

    def _last_index(self) -> int:
        return self._last_index_of(self._size)

    def _last_index_of(self, size: int) -> int:
        return self.layout.block_count(size) - 1

    def _sealable(self, index: int) -> bool:
        """Can block ``index`` go to disk now without leaving a gap before it?"""
        return index <= self._disk_blocks and (self._disk_final is None or self._disk_final >= index)

    def _mark_sealed(self, index: int) -> None:
        self._dirty.pop(index, None)
        self._clean.pop(index, None)
        if self._disk_final == index:
            self._disk_final = None
        self._disk_blocks = max(self._disk_blocks, index + 1)

    def _sealed_blocks(self, first: int, plain: memoryview, final: int | None) -> memoryview:
        """The blocks of ``plain`` (block ``first`` onwards; ``final``: the index
        sealed as final, if among them) as they go on disk, in this thread's scratch buffer."""
        count = -(-len(plain) // self.layout.block_size)
        out = scratch(len(plain) + count * BLOCK_OVERHEAD)
        self._cipher.seal_run_into(first, plain, final, out)
        return out

    def seal_at(self, offset: int, plain: memoryview, size: int) -> None:
        """Seal and write plaintext [offset, offset+len(plain)) of a new file that
        will hold ``size`` bytes: ``offset`` is block-aligned, ``plain`` ends on a
        block boundary or at ``size``.  Changes no state of this object, so
        threads may seal disjoint ranges of one file at once; ``finish_sealed(size)``
        follows when every range is on disk."""
        first = offset // self.layout.block_size
        pwrite_all(self.fd, self._sealed_blocks(first, plain, self._last_index_of(size)), self.layout.block_offset(first))

    def finish_sealed(self, size: int) -> None:
        """Every block of a ``size``-byte new file is on disk (``seal_at``)."""
        assert size and self.undo is None and not self._dirty and self._disk_end == HEADER_LEN, "new files only"
        self._size = size
        self._as_flushed(size)

    def _seal_run(self, run: list[int], data: memoryview, offset: int) -> None:
        """Seal consecutive full non-final blocks straight from the caller's buffer
        with one pwrite (the sequential-write fast path).  If the write fails
        (ENOSPC) the blocks stay pending, to be written again."""
        bs = self.layout.block_size
        out = self._sealed_blocks(run[0], data[run[0] * bs - offset:(run[-1] + 1) * bs - offset], None)
        try:
            self._pwrite_all(out, self.layout.block_offset(run[0]))
        except BaseException:
            for i in run:
                self._keep_pending(i, data[i * bs - offset:(i + 1) * bs - offset])
            raise
        for i in run:
            self._mark_sealed(i)

    def _seal_if_complete(self, index: int, last: int) -> None:
        """Seal a dirty block once it is full and not the last one, if that leaves
        no gap on disk; otherwise it waits for the full pass (``_seal_all_before``)."""
        block = self._dirty.get(index)
        if block is not None and len(block) == self.layout.block_size and index < last and self._sealable(index):
            self._seal_nonfinal(index)

    def _seal_all_before(self, upto: int) -> None:
        """Seal, as non-final, every block before ``upto`` that differs from disk:
        dirty blocks, the zero blocks of an extension, and the old final block."""
        pending = {i for i in self._dirty if i < upto}
        if self._disk_final is not None and self._disk_final < upto:
            pending.add(self._disk_final)
        for i in sorted(pending):
            if i < self._disk_blocks:
                self._seal_nonfinal(i)
        for i in range(self._disk_blocks, upto):
            self._seal_nonfinal(i)

    def _seal_nonfinal(self, index: int) -> None:
        plain = self._current(index)
        self._put(index, plain, final=False)
        self._mark_sealed(index)
        self._remember(index, plain)
