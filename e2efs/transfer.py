"""Whole-tree copies between a plain folder and a vault: import and export.

Both directions write nothing that could pass for a finished result: import
commits each file by rename when it is complete, export builds the tree in a
hidden sibling folder and renames it into place only when every file has
been decrypted and authenticated.

``import_tree(..., in_place=True)`` removes each plaintext source file only
after its ciphertext is committed, its folder fsync'd, and the file read back
through the vault and compared with the source.  ``verify_export`` compares a
plain folder with the vault entry by entry (``e2efs disable``).

Files of ``chunks.PARALLEL_MIN`` and more are encrypted or decrypted in chunks
on a thread per core (chunks.py).
"""

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor

from .chunks import CHUNK, PARALLEL_MIN, each_chunk, pool as chunk_pool
from .content import ContentFile, scratch
from .diskio import pwrite_all
from .errors import CorruptData, DestinationNotEmpty, IOFailure, NoSpace, VerificationFailed
from .names import Kind
from .tree import Dir, Tree
from .vault import fsync_dir


def _io_error(exc: OSError, what: str) -> Exception:
    if exc.errno == 28:
        return NoSpace(f"{what}: no space left on the device")
    return IOFailure(f"{what}: {exc.strerror}")


def _keep_metadata(path: str, st: os.stat_result, follow: bool = True, mode: bool = True) -> None:
    """Owner (when root), mode and times of ``st`` onto ``path``; a link's own
    times when not ``follow``."""
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=follow)
    if mode and follow:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=follow)


def _read_chunks(path: str):
    """The file in 1 MiB views of one buffer reused across files (a fresh 1 MiB
    buffer is an mmap and 256 page faults: 60 us, more than encrypting a small
    file); each view is valid until the next.  Small files only: large ones are
    split into chunks for several threads (``_import_file``).  Measured slower
    on two cores: one reader thread feeding the encrypting one (GIL hand-offs,
    2.5x slower) and worker processes per file (docs/PERFORMANCE.md)."""
    buf = scratch(CHUNK, "import")
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            yield buf[:n]


class Stats:
    def __init__(self):
        self.files = self.dirs = self.bytes = 0
        self.removed = 0            # plaintext source files removed (import --in-place)
        self.kept: list[str] = []   # source files not removed: they changed while being imported


def import_tree(tree: Tree, source: str, progress=None, in_place: bool = False) -> Stats:
    """Encrypt the plain folder ``source`` into the vault root, merging by name.
    With ``in_place``, each source file is removed once its ciphertext is
    committed and verified, and each emptied subfolder after it (``source``
    itself stays)."""
    stats = Stats()
    with chunk_pool() as pool:
        _import_dir(tree, os.fsencode(source), tree.root, stats, progress, pool, in_place)
    return stats


class _SourceChanged(Exception):
    """A source file's size changed while its chunks were being read."""


def _import_file(tree: Tree, d: Dir, name: bytes, path: bytes, st: os.stat_result, pool: ThreadPoolExecutor):
    """A large file is encrypted 1 MiB chunk by chunk on the pool's threads
    (AES-GCM and the positional reads and writes run without the GIL); a small
    one, or one whose size changes meanwhile, streams through one thread."""
    if st.st_size >= PARALLEL_MIN:
        src = os.open(path, os.O_RDONLY)
        try:
            def fill(content: ContentFile) -> None:
                each_chunk(pool, st.st_size, lambda offset: _encrypt_chunk(src, content, offset, st.st_size))
                if os.fstat(src).st_size != st.st_size:
                    raise _SourceChanged()      # grown: the chunks stopped at the old size
                content.finish_sealed(st.st_size)
            return tree.new_file(d, name, fill)
        except _SourceChanged:
            pass
        finally:
            os.close(src)
    return tree.write_file(d, name, _read_chunks(path))


def _encrypt_chunk(src: int, content: ContentFile, offset: int, size: int) -> None:
    view = scratch(min(CHUNK, size - offset), "import")
    got = 0
    while got < len(view):
        n = os.preadv(src, [view[got:]], offset + got)
        if n == 0:
            raise _SourceChanged()
        got += n
    content.seal_at(offset, view, size)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _verify_imported(tree: Tree, d: Dir, entry, path: bytes, st: os.stat_result) -> None:
    """Read the committed entry back through the vault and compare it with the source."""
    shown = os.fsdecode(path)
    try:
        same = _same_as_vault(tree, d, entry, path, st)
    except CorruptData as exc:
        raise VerificationFailed(f"{shown}: reading it back from the vault failed ({exc}); it was not removed") from None
    if not same:
        raise VerificationFailed(f"{shown}: the vault's copy differs from it; it was not removed")


def _same_as_vault(tree: Tree, d: Dir, entry, path, st: os.stat_result) -> bool:
    """Does the plain file at ``path`` (lstat ``st``) hold what the vault entry holds?"""
    if entry.kind is Kind.SYMLINK:
        return tree.readlink(d, entry) == os.readlink(path)
    if entry.kind is Kind.NODE:
        return tree.node_info(d, entry) == (stat.S_IFMT(st.st_mode), st.st_rdev)
    return _content_equals(tree, tree.path(d, entry), path)


def _content_equals(tree: Tree, cipher_path: str, plain_path) -> bool:
    content = tree.open_content(cipher_path)
    try:
        with open(plain_path, "rb") as f:
            offset = 0
            while True:
                plain = f.read(CHUNK)
                if content.read(offset, CHUNK) != plain:
                    return False
                if not plain:
                    return offset == content.size
                offset += len(plain)
    finally:
        os.close(content.fd)


def _import_dir(tree: Tree, src: bytes, d: Dir, stats: Stats, progress, pool: ThreadPoolExecutor,
                in_place: bool = False) -> None:
    try:
        names = sorted(os.listdir(src))
    except OSError as exc:
        raise _io_error(exc, f"cannot read {os.fsdecode(src)}") from None
    for name in names:
        path = os.path.join(src, name)
        shown = os.fsdecode(path)
        try:
            st = os.lstat(path)
            existing = tree.lookup(d, name)
            if stat.S_ISDIR(st.st_mode):
                entry = existing if existing and existing.kind is Kind.DIR else tree.mkdir(d, name, 0o700)
                _import_dir(tree, path, tree.subdir(d, entry), stats, progress, pool, in_place)
                _keep_metadata(tree.path(d, entry), st)
                stats.dirs += 1
                if in_place and not os.listdir(path):
                    fsync_dir(d.path)
                    os.rmdir(path)
                continue
            if stat.S_ISREG(st.st_mode):
                entry = _import_file(tree, d, name, path, st, pool)
                stats.bytes += tree.plain_size(entry, os.stat(tree.path(d, entry)))   # the size may have changed
            elif stat.S_ISLNK(st.st_mode):
                entry = tree.symlink(d, name, os.readlink(path))
            elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry = tree.mknod(d, name, st.st_mode, st.st_rdev)
            else:
                continue                  # sockets belong to a running program, not a backup
            _keep_metadata(tree.path(d, entry), st, mode=entry.kind is not Kind.SYMLINK)
            stats.files += 1
            if in_place:
                fsync_dir(d.path)               # the commit is durable before the plaintext goes
                if not _same_file(st, os.lstat(path)):
                    stats.kept.append(shown)     # written to while we read it: keep the plaintext
                else:
                    _verify_imported(tree, d, entry, path, st)
                    os.unlink(path)
                    stats.removed += 1
            if progress:
                progress(shown, st.st_size)
        except OSError as exc:
            raise _io_error(exc, f"cannot import {shown}") from None


def export_tree(tree: Tree, dest: str, progress=None) -> Stats:
    """Decrypt the whole vault into ``dest`` (missing or empty), all or nothing."""
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise DestinationNotEmpty(f"{dest} exists and is not an empty folder; export needs a new or empty one")
    parent = os.path.dirname(os.path.abspath(dest))
    partial = os.path.join(parent, f".{os.path.basename(os.path.abspath(dest))}.e2efs-partial-{os.urandom(4).hex()}")
    stats = Stats()
    try:
        os.mkdir(partial, 0o700)
        with chunk_pool() as pool:
            _export_dir(tree, tree.root, os.fsencode(partial), stats, progress, pool)
        if tree.damaged_names:      # an entry left out is not a restore
            raise CorruptData(f"{len(tree.damaged_names)} names fail authentication (the first: "
                              f"{min(tree.damaged_names)}); 'e2efs fsck --repair' moves them to /lost+found")
        _keep_metadata(partial, os.stat(tree.root.path))
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(partial, dest)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _io_error(exc, f"cannot export to {dest}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return stats


def _export_dir(tree: Tree, d: Dir, out: bytes, stats: Stats, progress, pool: ThreadPoolExecutor) -> None:
    for name, entry in sorted(tree.entries(d).items()):
        target = os.path.join(out, name)
        source = tree.path(d, entry)
        st = os.lstat(source)
        if entry.kind is Kind.DIR:
            os.mkdir(target, 0o700)
            _export_dir(tree, tree.subdir(d, entry), target, stats, progress, pool)
            _keep_metadata(target, st)
            stats.dirs += 1
            continue
        if entry.kind is Kind.SYMLINK:
            os.symlink(tree.readlink(d, entry), target)
            _keep_metadata(target, st, follow=False)
        elif entry.kind is Kind.NODE:
            kind, rdev = tree.node_info(d, entry)
            os.mknod(target, kind | stat.S_IMODE(st.st_mode), rdev)
            _keep_metadata(target, st)
        else:
            stats.bytes += decrypt_file(tree, source, target, pool)
            _keep_metadata(target, st)
        stats.files += 1
        if progress:
            progress(os.fsdecode(target), st.st_size)


def decrypt_file(tree: Tree, source: str, target: str, pool: ThreadPoolExecutor) -> int:
    """``pool``: threads that decrypt the 1 MiB chunks of a large file side by
    side (AES-GCM, preadv and pwrite all run without the GIL)."""
    content = tree.open_content(source)
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            each_chunk(pool, content.size, lambda offset: _decrypt_chunk(content, out, offset))
        finally:
            os.close(out)
        return content.size
    finally:
        os.close(content.fd)


def _decrypt_chunk(content: ContentFile, out: int, offset: int) -> None:
    """Chunks are whole blocks, so concurrent reads of one file share no cached block."""
    buf = scratch(CHUNK, "export")
    pwrite_all(out, buf[:content.read_into(offset, buf)], offset)


def authenticate_file(tree: Tree, source: str) -> int:
    """Read and authenticate every block; returns the plaintext size."""
    content = tree.open_content(source)
    try:
        content.authenticate()
        return content.size
    finally:
        os.close(content.fd)


def verify_export(tree: Tree, dest: str, progress=None) -> None:
    """Compare ``dest`` with the vault: the same entries, kinds, link targets,
    special files and (decrypted again) file contents, and nothing else."""
    _verify_dir(tree, tree.root, os.fsencode(dest), progress)


def _verify_dir(tree: Tree, d: Dir, out: bytes, progress) -> None:
    entries = tree.entries(d)
    try:
        found = set(os.listdir(out))
    except OSError as exc:
        raise VerificationFailed(f"cannot read {os.fsdecode(out)}: {exc.strerror}") from None
    extra = found - set(entries)
    missing = set(entries) - found
    if extra or missing:
        what = sorted(missing)[0] if missing else sorted(extra)[0]
        raise VerificationFailed(f"{os.fsdecode(os.path.join(out, what))}: "
                                 + ("missing from the copy" if missing else "in the copy but not in the vault"))
    for name, entry in sorted(entries.items()):
        target = os.path.join(out, name)
        shown = os.fsdecode(target)
        st = os.lstat(target)
        kind_ok = {Kind.DIR: stat.S_ISDIR, Kind.SYMLINK: stat.S_ISLNK, Kind.FILE: stat.S_ISREG}.get(
            entry.kind, lambda m: not (stat.S_ISDIR(m) or stat.S_ISLNK(m) or stat.S_ISREG(m)))(st.st_mode)
        if not kind_ok:
            raise VerificationFailed(f"{shown}: not the same kind of file as in the vault")
        if entry.kind is Kind.DIR:
            _verify_dir(tree, tree.subdir(d, entry), target, progress)
            continue
        if not _same_as_vault(tree, d, entry, target, st):
            raise VerificationFailed(f"{shown}: differs from the vault's copy")
        if progress:
            progress(shown, st.st_size)
