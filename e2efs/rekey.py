"""Rekey: replace the master key K by a new random K', re-encrypting every file's
content and every name, crash-safe and resumable.

How it stays safe when killed at any instant:

1. **Begin.** K' is drawn and stored in the vault file as ``rekey`` (K' wrapped
   under a K-derived key, covered by the vault MAC).  From then on the normal
   commands refuse the vault (``RekeyInProgress``) and any secret that opens K
   can resume: the same K' is unwrapped again, never a second one.
2. **Tree.**  Depth first, for each entry: its content is re-encrypted into a
   temporary file (``.e2efs-tmp-rekey-<hex>``) under K', fsync'd, and renamed
   over the old ciphertext (one atomic step); then the entry is renamed from
   its K name to its K' name (another atomic step; a long name's side record is
   written first).  A directory is renamed after its children.  So every
   content file opens with exactly one of K and K', every name decrypts under
   exactly one of them, and a reader holding both (this module, on resume)
   reads everything: it tries K' first, then K.
3. **Finish.**  The vault file is replaced by one keyed by K' (new
   ``key_check``, slots wrapped under K', MAC under K', no ``rekey``), first
   ``e2efs.vault`` then ``e2efs.vault.bak``.  Until the second copy is written
   the old secret still opens the other copy and resumes, which then only
   rewrites the vault file.

Hard links are broken: each name of a hard-linked file becomes its own copy.
File IDs change (a new header per file); directory IDs stay.
"""

import os
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import chunks, crypto, undo
from .blocks import HEADER_LEN
from .chunks import CHUNK, each_chunk
from .content import ContentFile, Header, scratch
from .crypto import Keys
from .errors import CorruptData, IOFailure, NoSpace, VaultCorrupt, VaultMounted
from .names import (ROOT_DIR_ID, SIDE_SUFFIX, Kind, NameCipher, long_stem_name, parse_backing_name,
                    side_record_name)
from .tree import TEMP_PREFIX
from .vault import (FORMAT_VERSION, VAULT_BACKUP, VAULT_FILE, RekeyState, Vault, VaultFile, atomic_write, fsync_dir,
                    key_check)

REKEY_TEMP_PREFIX = TEMP_PREFIX + "rekey-"
KILL_ENV = "E2EFS_TEST_REKEY_KILL_AFTER"      # tests only: SIGKILL ourselves after that many durable steps

_steps_done = 0


def _step() -> None:
    """Mark one durable change; the kill tests stop the process here."""
    global _steps_done
    _steps_done += 1
    limit = os.environ.get(KILL_ENV)
    if limit and _steps_done >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def mounted_at(root: str) -> str | None:
    """The mount point where the vault at ``root`` is mounted on this machine, if any."""
    from .fs import registry
    real = os.path.realpath(root)
    for entry in registry.live_mounts():
        if os.path.realpath(entry.get("vault", "")) == real:
            return entry["mountpoint"]
    return None


def check_not_mounted(root: str, what: str) -> None:
    where = mounted_at(root)
    if where is not None:
        raise VaultMounted(f"{root} is mounted at {where}: run 'e2efs unmount {where}' before {what}")


@dataclass
class Stats:
    files: int = 0          # content files re-encrypted by this run
    names: int = 0          # entries renamed to their K' name by this run
    dirs: int = 0
    bytes: int = 0          # plaintext bytes re-encrypted by this run
    already: int = 0        # entries found done by an earlier, interrupted run
    removed: list = field(default_factory=list)     # our leftover temp files and old side records


@dataclass
class Result:
    new_master: bytes
    resumed: bool
    stats: Stats


class TwoKeys:
    """A reader holding both keys: tells which one a name or a content file is under."""

    def __init__(self, old: Keys, new: Keys, block_size: int):
        self.old, self.new = old, new
        self.block_size = block_size
        self.old_names, self.new_names = NameCipher(old.names), NameCipher(new.names)

    def read_stem(self, dir_path: str, stem: str) -> str:
        """The real stem of an entry: a long stem's is in its side record."""
        if not stem.startswith("_"):
            return stem
        try:
            with open(os.path.join(dir_path, side_record_name(stem)), "rb") as f:
                real = f.read(1024).decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise CorruptData(f"{os.path.join(dir_path, stem)}: long-name side record is missing") from None
        if long_stem_name(real) != stem:
            raise CorruptData(f"{os.path.join(dir_path, stem)}: long-name side record does not match its entry")
        return real

    def name(self, dir_path: str, dir_id: bytes, stem: str) -> tuple[bytes, bool]:
        """(plaintext name, True if under K'); CorruptData if under neither."""
        real = self.read_stem(dir_path, stem)
        for cipher, is_new in ((self.new_names, True), (self.old_names, False)):
            try:
                return cipher.decrypt_stem(dir_id, real), is_new
            except CorruptData:
                continue
        raise CorruptData(f"{os.path.join(dir_path, stem)}: name authenticates under neither key")

    def content_is_new(self, path: str) -> bool:
        """True if the file opens with K', False with K; CorruptData with neither.
        The first block decides: content is replaced whole, by rename."""
        for keys, is_new in ((self.new, True), (self.old, False)):
            try:
                content = _open(path, keys)
            except CorruptData:
                continue
            try:
                content.read(0, 1)
                return is_new
            except CorruptData:
                continue
            finally:
                os.close(content.fd)
        raise CorruptData(f"{path}: content authenticates under neither key (run 'e2efs fsck'; remove or "
                          "restore that file, then run rekey again)")

    def read(self, path: str) -> bytes:
        """The whole plaintext, with whichever key the file is under."""
        content = _open(path, self.new if self.content_is_new(path) else self.old)
        try:
            return content.read(0, content.size)
        finally:
            os.close(content.fd)


def _open(path: str, keys: Keys) -> ContentFile:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ContentFile.open(fd, keys, path)
    except BaseException:
        os.close(fd)
        raise


def half_finished(locked, vault: Vault) -> bool:
    """True when ``vault`` was opened with K' from the first copy written by an
    interrupted finish, beside an old copy still holding the rekey state:
    the rekey is complete, only that old copy needs replacing."""
    return vault.file.rekey is None and any(c.rekey is not None and not c.authentic(vault.keys)
                                            for c in locked.copies)


def begin(vault: Vault) -> tuple[bytes, bool]:
    """(K', resumed): the K' of an interrupted rekey, or a new one recorded in the vault file."""
    state = vault.file.rekey
    if state is not None:
        new_master = state.unwrap(vault.keys.master)
        if new_master is None:
            raise VaultCorrupt(f"the rekey state in {vault.root} does not open with this key")
        return new_master, True
    new_master = crypto.new_master_key()
    vault.file.rekey = RekeyState.wrap(vault.keys.master, new_master)
    vault.save()
    _step()
    return new_master, False


def rekey(vault: Vault, make_slots, progress=None, announce=None) -> Result:
    """Re-encrypt the whole vault under a new key.  ``make_slots(new_master)``
    returns the key slots of the finished vault (wrapped under K');
    ``announce(result)`` is called when every file is done, before the vault
    file switches to K' (the CLI shows the new key there, so neither a crash nor
    a failed output can lose a key nobody has seen).  ``make_slots=None`` stops
    before the switch (tests)."""
    check_not_mounted(vault.root, "rekey")
    undo.recover(vault.root)        # a half-written file would be re-encrypted half-written
    new_master, resumed = begin(vault)
    stats = Stats()
    keys = TwoKeys(vault.keys, Keys(new_master), vault.block_size)
    try:
        with chunks.pool() as workers:
            rekey_dir(keys, vault.root, ROOT_DIR_ID, stats, progress, workers)
    except OSError as exc:
        if exc.errno == 28:
            raise NoSpace("no space left while re-encrypting; free some and run rekey again to continue") from None
        raise IOFailure(f"rekey stopped: {exc.strerror} ({exc.filename}); run rekey again to continue") from None
    result = Result(new_master, resumed, stats)
    if make_slots is None:
        return result
    if announce:
        announce(result)
    return finish(vault, new_master, make_slots, resumed, stats)


def finish(vault: Vault, new_master: bytes, make_slots, resumed: bool, stats: Stats) -> Result:
    """Replace both vault file copies by ones keyed by K' (one at a time: until the
    second is written, the old secret still opens the other and resumes)."""
    new_file = VaultFile(FORMAT_VERSION, vault.block_size, key_check(new_master), make_slots(new_master))
    data = new_file.serialize(Keys(new_master))
    for name in (VAULT_FILE, VAULT_BACKUP):
        atomic_write(os.path.join(vault.root, name), data)
        _step()
    return Result(new_master, resumed, stats)


def rekey_dir(keys: TwoKeys, path: str, dir_id: bytes, stats: Stats, progress, workers: ThreadPoolExecutor) -> None:
    stats.dirs += 1
    dir_st = os.stat(path)
    for fname in sorted(os.listdir(path)):
        if fname.startswith(REKEY_TEMP_PREFIX):
            os.unlink(os.path.join(path, fname))        # an interrupted run's half-written copy
            stats.removed.append(os.path.join(path, fname))
            continue
        parsed = parse_backing_name(fname)
        if parsed is None:
            continue                                    # not an entry: vault files, side records, foreign files
        old_path = os.path.join(path, fname)
        name, name_is_new = keys.name(path, dir_id, parsed.stem)
        st = os.lstat(old_path)
        if parsed.kind is Kind.DIR:
            if not stat.S_ISDIR(st.st_mode):
                raise CorruptData(f"{old_path}: named as a directory but is not one")
            rekey_dir(keys, old_path, parsed.dir_id, stats, progress, workers)
        else:
            if keys.content_is_new(old_path):
                stats.already += 1
            else:
                stats.bytes += _reencrypt(keys, path, old_path, st, workers)
                stats.files += 1
            if progress:
                progress(old_path, st.st_size)
        if name_is_new:
            continue
        new_path = _rename(keys, path, dir_id, fname, name, parsed)
        stats.names += 1
        if parsed.kind is Kind.DIR:
            os.utime(new_path, ns=(st.st_atime_ns, st.st_mtime_ns))     # its children changed it
    _drop_old_side_records(keys, path, dir_id, stats)
    os.utime(path, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))


def _copy_chunk(old: ContentFile, new: ContentFile, offset: int) -> None:
    buf = scratch(CHUNK, "rekey")
    new.seal_at(offset, buf[:old.read_into(offset, buf)], old.size)


def _reencrypt(keys: TwoKeys, dir_path: str, path: str, st: os.stat_result, workers: ThreadPoolExecutor) -> int:
    """Copy ``path`` under K' into a temp file and rename it over ``path``."""
    temp = os.path.join(dir_path, REKEY_TEMP_PREFIX + os.urandom(6).hex())
    old = _open(path, keys.old)
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            new = ContentFile.create(fd, keys.new, keys.block_size, temp)
            if old.size:        # (the empty file's one block is sealed by fsync)
                each_chunk(workers, old.size, lambda offset: _copy_chunk(old, new, offset))
                new.finish_sealed(old.size)
            new.fsync()
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    finally:
        os.close(old.fd)
    _step()
    return old.size


def _rename(keys: TwoKeys, dir_path: str, dir_id: bytes, fname: str, name: bytes, parsed) -> str:
    """Rename one entry from its K name to its K' name (side record first for a long one)."""
    backing, long_stem = keys.new_names.backing_name(dir_id, name, parsed.kind, parsed.dir_id)
    backing += parsed.conflict
    if long_stem is not None:
        short = backing.split(".", 1)[0]
        temp = os.path.join(dir_path, REKEY_TEMP_PREFIX + os.urandom(6).hex())
        with open(temp, "x") as f:
            f.write(long_stem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, os.path.join(dir_path, side_record_name(short)))
        _step()
    new_path = os.path.join(dir_path, backing)
    if os.path.lexists(new_path):
        raise IOFailure(f"cannot rename {os.path.join(dir_path, fname)}: {backing} already exists (two entries "
                        "with the same name; rename one through the mount, then run rekey again)")
    os.rename(os.path.join(dir_path, fname), new_path)
    fsync_dir(dir_path)
    _step()
    return new_path


def _drop_old_side_records(keys: TwoKeys, dir_path: str, dir_id: bytes, stats: Stats) -> None:
    """Side records of K names that no entry uses any more."""
    fnames = os.listdir(dir_path)
    used = {p.stem for p in map(parse_backing_name, fnames) if p is not None and p.is_long}
    for fname in fnames:
        if not (fname.endswith(SIDE_SUFFIX) and fname.startswith("_")):
            continue
        stem = fname[:-len(SIDE_SUFFIX)]
        if stem in used:
            continue
        try:
            keys.old_names.decrypt_stem(dir_id, keys.read_stem(dir_path, stem))
        except CorruptData:
            continue                                    # not ours to judge: fsck reports it
        os.unlink(os.path.join(dir_path, fname))
        stats.removed.append(os.path.join(dir_path, fname))


def snapshot_with_both_keys(root: str, old_master: bytes, new_master: bytes, block_size: int) -> dict:
    """What a reader holding both keys sees: plaintext path -> ("dir",) | ("file", bytes) |
    ("symlink", bytes) | ("node", bytes).  Raises CorruptData if anything opens with neither
    key, or (names, content) with both."""
    keys = TwoKeys(Keys(old_master), Keys(new_master), block_size)
    out: dict = {}

    def walk(path: str, dir_id: bytes, prefix: bytes) -> None:
        for fname in sorted(os.listdir(path)):
            parsed = parse_backing_name(fname)
            if parsed is None:
                continue
            name, _ = keys.name(path, dir_id, parsed.stem)
            rel = prefix + name + parsed.conflict.encode()
            full = os.path.join(path, fname)
            if parsed.kind is Kind.DIR:
                out[rel] = ("dir",)
                walk(full, parsed.dir_id, rel + b"/")
            else:
                with open(full, "rb") as f:
                    Header.parse(f.read(HEADER_LEN), full)
                out[rel] = (parsed.kind.name.lower(), keys.read(full))

    walk(root, ROOT_DIR_ID, b"")
    return out
