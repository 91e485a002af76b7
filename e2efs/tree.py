"""The ciphertext tree: plaintext names to backing paths, and every change to it.

A ``Dir`` is a backing directory and its ID (the associated data of its
children's names).  Listings are decrypted once and cached until the backing
directory changes.  New content is written to a temporary file beside its
final place and renamed over it when complete, so a crash or a sync client
never sees a half-written file as the real one.  No FUSE here: the mount and
the offline commands share this module.
"""

import logging
import os
import stat
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple

from .blocks import Layout
from .content import ContentFile
from .errors import CorruptData
from .names import (
    DIR_ID_LEN, LONG_PREFIX, ROOT_DIR_ID, BackingName, Kind, NameCipher, check_name, long_stem_name,
    parse_backing_name, side_record_name,
)
from .vault import Vault

log = logging.getLogger("e2efs")

TEMP_PREFIX = ".e2efs-tmp-"
MTIME_GRAIN_NS = 50_000_000       # far coarser than any file system's mtime tick
CONFIRM_BUDGET_S = 0.005          # confirmation work per turn between requests
ICLOUD_STUB = ".icloud"
MAX_SYMLINK_TARGET = 4095
_NODE_RECORD = struct.Struct(">IQ")     # file type bits, rdev


@dataclass(frozen=True)
class Dir:
    path: str
    id: bytes


class Entry(NamedTuple):
    """One name of a listing (a tuple: listings build thousands, ~4x faster than a frozen dataclass)."""
    name: bytes
    backing: str
    kind: Kind
    dir_id: bytes | None = None


class _Listing(NamedTuple):
    mtime: int                          # the backing directory's, when last validated
    entries: dict[bytes, Entry]         # by plaintext name
    by_backing: dict[str, Entry]        # by backing name, before duplicate names are told apart
    # backing names a rescan's shortcut cannot vouch for: long names (their side
    # records can change on their own), iCloud stubs and both names of a duplicate
    # pair (removing one changes how the other shows)
    full_scan_only: set[str]


def _is_icloud_stub(fname: str) -> bool:
    return fname.startswith(".") and fname.endswith(ICLOUD_STUB)     # no entry's backing name starts with "."


def _names_side_record(fname: str) -> bool:
    """A long name (or its iCloud stub) is only as good as its side record,
    which can go away on its own: such a name is never taken from the memo."""
    return fname.startswith(LONG_PREFIX) or fname.startswith("." + LONG_PREFIX)


class Tree:
    def __init__(self, vault: Vault):
        self.vault = vault
        self.keys = vault.keys
        self.layout = Layout(vault.block_size)
        self.names = NameCipher(vault.keys.names)
        self.root = Dir(vault.root, ROOT_DIR_ID)
        self._listings: dict[str, _Listing] = {}
        self._unsure: dict[str, Dir] = {}      # listings with our own changes not yet confirmed
        self._checked: set[str] | None = None  # listings validated in this step (``one_step``)
        self.damaged_names: set[str] = set()   # backing paths skipped as names that fail authentication

    # -- paths ----------------------------------------------------------------

    @staticmethod
    def path(parent: Dir, entry: Entry) -> str:
        return os.path.join(parent.path, entry.backing)

    def subdir(self, parent: Dir, entry: Entry) -> Dir:
        return Dir(self.path(parent, entry), entry.dir_id)

    def plain_size(self, entry: Entry, st: os.stat_result) -> int:
        """Plaintext size from the backing stat alone (no read, no decryption)."""
        if entry.kind in (Kind.DIR, Kind.NODE):
            return 0 if entry.kind is Kind.NODE else st.st_size
        size = self.layout.plaintext_size(st.st_size)
        return 0 if size is None else size

    # -- listing and lookup ---------------------------------------------------

    def one_step(self) -> None:
        """Start a step (for the mount, one request) in which each listing is
        validated once, not at every use: a create checks the folder for the
        name, makes its temp file, and so on.  Our own changes within the step
        are blessed by ``_record`` as always; another writer's change within it
        is one the first validation could have missed just as well, and the
        confirmation after a quiet grain finds both.  Without a call (offline
        tools) every use validates."""
        self._checked = set()

    def entries(self, d: Dir, mtime: int | None = None) -> dict[bytes, Entry]:
        """``mtime``: the folder's, from a stat the caller has just made."""
        cached = self._listings.get(d.path)
        checked = self._checked
        if cached is not None and checked is not None and d.path in checked:
            return cached.entries
        if mtime is None:
            mtime = os.stat(d.path).st_mtime_ns
        if (cached is None or cached.mtime != mtime
                or d.path in self._unsure and time.time_ns() - mtime >= MTIME_GRAIN_NS):
            cached = self._listings[d.path] = self._rescan(d, mtime, cached)
            self._unsure.pop(d.path, None)          # only now: a rescan that failed stays due
        if checked is not None:
            checked.add(d.path)
        return cached.entries

    def confirm_quiet(self) -> float | None:
        """Confirm now each listing whose directory has been quiet for a grain
        since our last change to it (see ``_record``); the mount calls this
        between requests, so an app that writes a file now and then into a big
        folder does not wait for that rescan at its next create.  Returns the
        seconds until it should be called again (0 when it stopped at its time
        budget), or None when no listing is left to confirm."""
        due = None
        stop = time.monotonic() + CONFIRM_BUDGET_S
        self.one_step()         # a listing the last request validated is confirmed all the same
        for i, d in enumerate(list(self._unsure.values())):
            if i and time.monotonic() > stop:        # at least one a turn
                return 0.0
            try:
                self.entries(d)
            except OSError:       # gone (moved away?) or unreadable now: forget it, read afresh when asked
                self._unsure.pop(d.path, None)
                self._listings.pop(d.path, None)
                continue
            if d.path in self._unsure:       # changed again within the grain
                wait = max(0.0, (self._listings[d.path].mtime + MTIME_GRAIN_NS - time.time_ns()) / 1e9)
                due = wait if due is None else min(due, wait)
        return due

    def lookup(self, d: Dir, name: bytes) -> Entry | None:
        return self.entries(d).get(name)

    def invalidate(self, d: Dir) -> None:
        self._listings.pop(d.path, None)

    def _record(self, d: Dir, name: bytes | None = None, entry: Entry | None = None) -> None:
        """Apply our own change to the cached listing of ``d`` instead of
        dropping it: a directory receiving thousands of new files is then
        scanned once, not once per file.  Callers validate the cache (``entries``)
        before changing the directory, so only our own change is blessed."""
        cached = self._listings.get(d.path)
        if cached is None:
            return
        if name is not None:
            if entry is None:
                gone = cached.entries.pop(name, None)
                if gone is not None:
                    cached.by_backing.pop(gone.backing, None)
                    cached.full_scan_only.discard(gone.backing)
            else:
                cached.entries[name] = entry
                cached.by_backing.setdefault(entry.backing, entry)
                if _names_side_record(entry.backing):
                    cached.full_scan_only.add(entry.backing)
        self._listings[d.path] = cached._replace(mtime=os.stat(d.path).st_mtime_ns)
        # Directory mtimes are coarse (a jiffy on ext4): a sync client's change in
        # the same tick as ours leaves the mtime we just blessed.  So the listing
        # is trusted while we keep changing the directory, and rescanned once the
        # directory has been quiet for a grain: one scan per burst, not per create.
        self._unsure[d.path] = d

    def _rescan(self, d: Dir, mtime: int, cached: _Listing | None) -> _Listing:
        """List ``d`` again.  When a burst of our own changes is confirmed the
        usual answer is "nothing else changed", found with one dict lookup a
        name instead of a pass that rebuilds the listing (a 20,000-file folder:
        ~11 instead of ~30 ms, most of it listdir)."""
        names = os.listdir(d.path)
        known = cached.by_backing if cached is not None else {}
        if cached is not None and not cached.full_scan_only:
            others = [fname for fname in names if fname not in known]
            if len(names) - len(others) == len(known):        # every entry we knew is still there
                fresh = {fname: e for fname in others if (e := self._read_entry(d, fname)) is not None}
                if not fresh:
                    return cached._replace(mtime=mtime)
                known = {**known, **fresh}
        return self._scan(d, mtime, names, known)

    def _scan(self, d: Dir, mtime: int, names: list[str], known: dict[str, Entry]) -> _Listing:
        """The listing of ``d`` from ``names`` (its listdir); a backing name in
        ``known`` (the last scan's) is not decrypted again, so a rescan of a large
        folder costs a listdir, not thousands of AES-SIV decryptions."""
        found: dict[bytes, Entry] = {}
        by_backing: dict[str, Entry] = {}
        full_scan_only = set()
        stubs = []
        for fname in sorted(names):
            side = _names_side_record(fname)
            entry = known.get(fname) if not side else None
            entry = entry or self._read_entry(d, fname)
            if entry is None:
                continue
            by_backing[entry.backing] = entry
            stub = _is_icloud_stub(fname)
            if side or stub:
                full_scan_only.add(fname)
            if stub:
                stubs.append(entry)
                continue
            if entry.name in found:
                full_scan_only.update((found[entry.name].backing, fname))
                entry = entry._replace(name=entry.name + f" (e2efs duplicate {fname[-8:]})".encode())
            found[entry.name] = entry
        for entry in stubs:
            # iCloud evicted the file and left ".<backing>.icloud": keep the name
            # visible; opening it says why it cannot be read (EIO, one log line)
            found.setdefault(entry.name, entry)
        return _Listing(mtime, found, by_backing, full_scan_only)

    def _read_entry(self, d: Dir, fname: str) -> Entry | None:
        """The entry a backing name stands for; None for anything that is not one
        (temp files, side records, a damaged name: logged)."""
        stub = _is_icloud_stub(fname)
        parsed = parse_backing_name(fname[1:-len(ICLOUD_STUB)] if stub else fname)
        if parsed is None or (stub and parsed.kind is Kind.DIR):
            return None
        try:
            name = self.decrypt_name(d, parsed) + parsed.conflict.encode()
        except CorruptData as exc:
            if not stub:
                log.warning("skipping %s: %s", os.path.join(d.path, fname), exc)
                self.damaged_names.add(os.path.join(d.path, fname))
            return None
        return Entry(name, fname, Kind.FILE) if stub else Entry(name, fname, parsed.kind, parsed.dir_id)

    def decrypt_name(self, d: Dir, parsed: BackingName) -> bytes:
        stem = parsed.stem
        if parsed.is_long:
            stem = self._read_side_record(d, parsed.stem)
        return self.names.decrypt_stem(d.id, stem)

    def _read_side_record(self, d: Dir, long_stem: str) -> str:
        path = os.path.join(d.path, side_record_name(long_stem))
        try:
            with open(path, "rb") as f:
                stem = f.read(1024).decode("ascii").strip()
        except FileNotFoundError:
            raise CorruptData("long-name side record is missing") from None
        except UnicodeDecodeError:
            raise CorruptData("long-name side record is not ASCII (damaged)") from None
        if long_stem_name(stem) != long_stem:
            raise CorruptData("long-name side record does not match its entry")
        return stem

    # -- creating and removing entries ---------------------------------------

    def new_entry(self, d: Dir, name: bytes, kind: Kind, dir_id: bytes | None = None) -> Entry:
        """Name a new entry (writing its side record if the name is long); a new
        directory gets a fresh random ID unless it keeps ``dir_id``."""
        check_name(name)
        self.entries(d)
        if kind is Kind.DIR and dir_id is None:
            dir_id = os.urandom(DIR_ID_LEN)
        backing, long_stem = self.names.backing_name(d.id, name, kind, dir_id)
        if long_stem is not None:
            short = backing.split(".", 1)[0]
            tmp = os.path.join(d.path, TEMP_PREFIX + os.urandom(8).hex())
            with open(tmp, "x") as f:
                f.write(long_stem)
            os.replace(tmp, os.path.join(d.path, side_record_name(short)))
            self._record(d)
        return Entry(name, backing, kind, dir_id)

    def _forget_side_record(self, d: Dir, entry: Entry) -> None:
        parsed = parse_backing_name(entry.backing)
        if parsed is not None and parsed.is_long:
            # parsing is enough to see who names this record: no need to decrypt the directory
            still_used = any(other != entry.backing and (p := parse_backing_name(other)) is not None
                             and p.stem == parsed.stem for other in os.listdir(d.path))
            if not still_used:
                try:
                    os.unlink(os.path.join(d.path, side_record_name(parsed.stem)))
                except FileNotFoundError:
                    pass
                self._record(d)

    def mkdir(self, d: Dir, name: bytes, mode: int = 0o777) -> Entry:
        entry = self.new_entry(d, name, Kind.DIR)
        os.mkdir(self.path(d, entry), mode)
        self._record(d, name, entry)
        return entry

    def temp_file(self, d: Dir, mode: int = 0o600) -> tuple[str, int]:
        """A fresh, empty temporary file beside the entries of ``d`` (path, fd)."""
        self.entries(d)
        path = os.path.join(d.path, TEMP_PREFIX + os.urandom(8).hex())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self._record(d)
        return path, fd

    def discard_temp(self, d: Dir, temp_path: str) -> None:
        """Delete a temporary file that will never be committed."""
        self.entries(d)
        os.unlink(temp_path)
        self._record(d)

    def commit(self, d: Dir, temp_path: str, name: bytes, kind: Kind = Kind.FILE) -> Entry:
        """Rename a completed temporary file into place as ``name``, replacing
        whatever non-directory held that name."""
        old = self.lookup(d, name)
        keep = old is not None and old.kind is kind and not _is_icloud_stub(old.backing)
        entry = old if keep else self.new_entry(d, name, kind)     # a placeholder is replaced, not written into
        os.replace(temp_path, self.path(d, entry))
        self._record(d, name, entry)
        if old is not None and old.backing != entry.backing:
            self._drop_replaced(d, old)
        return entry

    def _drop_replaced(self, d: Dir, old: Entry) -> None:
        """The new version is committed already: an old entry of another kind that
        cannot be removed (EIO) stays, listed as an '(e2efs duplicate …)' of the
        name, and is not reported as a lost version."""
        try:
            os.unlink(self.path(d, old))
        except OSError as exc:
            log.warning("%s: the entry it replaced could not be removed (%s); it is listed as a duplicate",
                        self.path(d, old), exc.strerror or exc)
            return
        self._record(d)
        self._forget_side_record(d, old)

    def write_file(self, d: Dir, name: bytes, chunks, mode: int = 0o644, kind: Kind = Kind.FILE) -> Entry:
        """Encrypt a stream of byte chunks into a new file, atomically."""
        def fill(content: ContentFile) -> None:
            offset = 0
            for chunk in chunks:
                content.write(offset, chunk)
                offset += len(chunk)
        return self.new_file(d, name, fill, mode, kind)

    def new_file(self, d: Dir, name: bytes, fill, mode: int = 0o644, kind: Kind = Kind.FILE) -> Entry:
        """A new file whose content ``fill(content)`` writes, committed by rename
        once it is on disk in full (fsync'd); on any failure nothing is left."""
        temp, fd = self.temp_file(d, mode)
        try:
            content = ContentFile.create(fd, self.keys, self.layout.block_size, temp)
            fill(content)
            content.fsync()
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        os.close(fd)
        return self.commit(d, temp, name, kind)

    def symlink(self, d: Dir, name: bytes, target: bytes) -> Entry:
        if len(target) > MAX_SYMLINK_TARGET:
            raise OverflowError("symlink target longer than 4095 bytes")
        return self.write_file(d, name, [target], mode=0o600, kind=Kind.SYMLINK)

    def mknod(self, d: Dir, name: bytes, mode: int, rdev: int = 0) -> Entry:
        record = _NODE_RECORD.pack(stat.S_IFMT(mode), rdev)
        return self.write_file(d, name, [record], mode=stat.S_IMODE(mode), kind=Kind.NODE)

    def remove(self, d: Dir, entry: Entry) -> None:
        """Unlink a non-directory entry (and its side record)."""
        self.entries(d)
        os.unlink(self.path(d, entry))
        self._record(d, entry.name)
        self._forget_side_record(d, entry)

    def rmdir(self, d: Dir, entry: Entry) -> None:
        self.entries(d)
        os.rmdir(self.path(d, entry))
        self._record(d, entry.name)
        self._forget_side_record(d, entry)

    def rename(self, src: Dir, entry: Entry, dst: Dir, new_name: bytes) -> Entry:
        """Move ``entry`` to ``dst``/``new_name``, replacing a target as rename(2) does
        (the caller has checked kinds and emptiness)."""
        target = self.lookup(dst, new_name)
        moved = self.new_entry(dst, new_name, entry.kind, entry.dir_id)
        if target is not None and target.backing != moved.backing:
            if target.kind is Kind.DIR:
                self.rmdir(dst, target)
            else:
                self.remove(dst, target)
        if (src.path, entry.backing) != (dst.path, moved.backing):
            self.entries(src)
            os.replace(self.path(src, entry), self.path(dst, moved))
            self._record(src, entry.name)
            self._record(dst, new_name, moved)
            self._forget_side_record(src, entry)
        return moved

    def link(self, d: Dir, entry: Entry, dst: Dir, new_name: bytes) -> Entry:
        linked = self.new_entry(dst, new_name, entry.kind)
        os.link(self.path(d, entry), self.path(dst, linked))
        self._record(dst, new_name, linked)
        return linked

    # -- content --------------------------------------------------------------

    @staticmethod
    def _open_backing(path: str, writable: bool) -> int:
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:    # reading ciphertext must not move the atime a user set
            return os.open(path, flags | os.O_NOATIME)
        except PermissionError:     # O_NOATIME needs ownership
            return os.open(path, flags)

    def reopen_writable(self, fd: int) -> None:
        """Make ``fd``, open read-only on a ciphertext file, read-write under the same
        number (its users keep it), on the same file whatever its name is now."""
        new = self._open_backing(f"/proc/self/fd/{fd}", writable=True)
        try:
            os.dup2(new, fd, inheritable=False)
        finally:
            os.close(new)

    def open_content(self, path: str, writable: bool = False) -> ContentFile:
        """Open a ciphertext file; the caller closes ``content.fd``."""
        fd = self._open_backing(path, writable)
        try:
            if path.endswith(ICLOUD_STUB) and os.path.basename(path).startswith("."):
                raise CorruptData(f"{path}: an iCloud placeholder: the file is not downloaded to this device yet")
            if os.fstat(fd).st_size == 0:
                raise CorruptData(f"{path}: empty ciphertext file: a sync client's placeholder or an "
                                  "unfinished download (no e2efs file is ever 0 bytes)")
            content = ContentFile.open(fd, self.keys, path)
            if content.layout.block_size != self.layout.block_size:
                raise CorruptData(f"{path}: block size differs from the vault's")
            return content
        except BaseException:
            os.close(fd)
            raise

    def read_all(self, path: str) -> bytes:
        content = self.open_content(path)
        try:
            return content.read(0, content.size)
        finally:
            os.close(content.fd)

    def readlink(self, d: Dir, entry: Entry) -> bytes:
        return self.read_all(self.path(d, entry))

    def node_info(self, d: Dir, entry: Entry) -> tuple[int, int]:
        """(file type bits, rdev) of a special file."""
        record = self.read_all(self.path(d, entry))
        if len(record) != _NODE_RECORD.size:
            raise CorruptData(f"{self.path(d, entry)}: invalid special-file record")
        return _NODE_RECORD.unpack(record)

    # -- whole-tree traversal (offline tools, fsck) --------------------------

    def walk(self, d: Dir | None = None, prefix: bytes = b""):
        """Yield (relative plaintext path, parent Dir, Entry), parents first."""
        d = d or self.root
        for name, entry in sorted(self.entries(d).items()):
            rel = prefix + name
            yield rel, d, entry
            if entry.kind is Kind.DIR:
                yield from self.walk(self.subdir(d, entry), rel + b"/")

    def resolve(self, path: bytes) -> tuple[Dir, Entry | None]:
        """(parent Dir, Entry) of a plaintext path; Entry is None for the root."""
        d, entry = self.root, None
        parts = [p for p in path.split(b"/") if p and p != b"."]
        for i, part in enumerate(parts):
            if entry is not None:
                if entry.kind is not Kind.DIR:
                    raise NotADirectoryError(b"/".join(parts[:i]).decode(errors="replace"))
                d = self.subdir(d, entry)
            entry = self.lookup(d, part)
            if entry is None:
                raise FileNotFoundError(b"/".join(parts[:i + 1]).decode(errors="replace"))
        return d, entry
