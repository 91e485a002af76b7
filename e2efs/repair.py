"""fsck --repair: act on what ``check`` found, and say exactly what was done.

* Leftover ``.e2efs-tmp-*`` files of interrupted writes (and ``.e2efs.vault.tmp-*``)
  are deleted; so are long-name side records whose entry is gone.
* A file whose content fails authentication, an entry whose name does not
  decrypt (tampered, or its long-name record lost) and an entry of the wrong
  type are moved to the vault's ``lost+found`` folder (a normal folder of the
  vault, visible in the mount): ``/lost+found/<UTC time of the repair>/<its
  former plaintext path>``, or ``.../unnamed-<start of its ciphertext name>``
  when the name itself is lost.  Moving never re-encrypts content (the file
  key comes from the header, not the name), so good blocks stay readable.
  With ``truncate=True`` a damaged regular file whose name is intact is instead
  cut to its last good block, in place (rewritten through a temp file and a
  rename); one whose header is gone has nothing to keep and is moved.
* A vault file copy that is missing, unparsable or fails its MAC is rewritten
  from the authentic one (never one a newer e2efs wrote).
* Foreign files and sync-client placeholders (iCloud stubs, empty files) are
  left alone: the sync client may still be downloading them.

Repair refuses a vault that is mounted on this machine.
"""

import os
import time
from dataclasses import dataclass, field

from . import check as chk
from .blocks import HEADER_LEN, NONCE_LEN, TAG_LEN
from .content import FileCipher, Header
from .errors import CorruptData, VaultMounted, VaultTooNew, VaultCorrupt
from .names import SIDE_SUFFIX, Kind, parse_backing_name
from .tree import TEMP_PREFIX, Dir, Entry, Tree
from .vault import VAULT_BACKUP, VAULT_FILE, VaultFile, atomic_write


@dataclass
class RepairLog:
    actions: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)     # problems not acted on

    def did(self, text: str) -> None:
        self.actions.append(text)


def mounted_on(vault_root: str) -> str | None:
    """The mount point where this vault is mounted on this machine, if any."""
    root = os.path.realpath(vault_root)
    try:
        from .fs import registry
        for entry in registry.live_mounts():
            if os.path.realpath(entry.get("vault", "")) == root:
                return entry["mountpoint"]
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        pass
    try:        # a mount started with another runtime dir still names its vault as the source
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                fstype, source = fields[sep + 1], fields[sep + 2]
                if fstype == "fuse.e2efs" and os.path.realpath(source.replace("\\040", " ")) == root:
                    return fields[4]
    except (OSError, ValueError, IndexError):
        pass
    return None


def refuse_if_mounted(vault_root: str) -> None:
    where = mounted_on(vault_root)
    if where is not None:
        raise VaultMounted(f"{vault_root} is mounted at {where}: unmount it before 'fsck --repair'")


def repair(tree: Tree, report: chk.Report, truncate: bool = False) -> RepairLog:
    log = RepairLog()
    _repair_vault_file(tree, log)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    lost = _LostFound(tree, stamp)
    # merges last and deepest first: they move whole folders other findings point into
    order = sorted(report.findings, key=lambda f: (f.kind == chk.DUP_DIR, -f.path.count(os.sep) if f.kind == chk.DUP_DIR else 0))
    for f in order:
        try:
            _repair_one(tree, f, lost, truncate, log)
        except (OSError, CorruptData) as exc:
            log.left.append((f.path, f"{f.reason} (repair failed: {exc})"))
    return log


def _repair_one(tree: Tree, f: chk.Finding, lost: "_LostFound", truncate: bool, log: RepairLog) -> None:
    if f.kind in (chk.TEMP, chk.ORPHAN_SIDE):
        try:
            os.unlink(f.path)
        except FileNotFoundError:
            pass
        what = "temporary file" if f.kind == chk.TEMP else "orphaned long-name record"
        log.did(f"removed {what} {f.path}")
        if f.parent is not None:
            tree.invalidate(f.parent)
        return
    if f.kind == chk.DUP_DIR:
        into = parse_backing_name(f.twin)
        src = Dir(f.path, f.parsed.dir_id)
        dst = Dir(os.path.join(f.parent.path, f.twin), into.dir_id)
        moved = _merge(tree, src, dst)
        tree.rmdir(f.parent, Entry(b"", f.fname, Kind.DIR, f.parsed.dir_id))
        log.did(f"merged folder {f.rel.decode(errors='replace')} created on two devices: {moved} entr"
                f"{'y' if moved == 1 else 'ies'} of {f.path} moved into {dst.path}")
        return
    if f.kind in (chk.FOREIGN, chk.PLACEHOLDER) or f.parsed is None or f.parent is None:
        log.left.append((f.path, f.reason + " (left alone)"))
        return
    if truncate and f.kind == chk.BAD_CONTENT and f.parsed.kind is Kind.FILE and f.rel is not None:
        if _truncate(tree, f, log):
            return
    entry = Entry(b"", f.fname, f.parsed.kind, f.parsed.dir_id)
    target_dir, name = lost.place(f)
    moved = tree.rename(f.parent, entry, target_dir, name)
    shown = f.rel.decode(errors="replace") if f.rel is not None else "(name lost)"
    log.did(f"moved {f.path} ({shown}: {f.reason}) to /{lost.shown(name)}"
            + (f" [ciphertext {tree.path(target_dir, moved)}]" if moved else ""))


def _merge(tree: Tree, src: Dir, dst: Dir) -> int:
    """Move every entry of ``src`` into ``dst`` (names re-encrypted under dst's ID);
    same-named folders merge recursively, other clashes keep both with a suffix."""
    moved = 0
    for name, entry in sorted(tree.entries(src).items()):
        there = tree.lookup(dst, name)
        if there is not None and there.kind is Kind.DIR and entry.kind is Kind.DIR:
            moved += _merge(tree, tree.subdir(src, entry), tree.subdir(dst, there))
            tree.rmdir(src, entry)
            continue
        new_name, n = name, 1
        while tree.lookup(dst, new_name) is not None:
            n += 1
            new_name = name + (b" (other device)" if n == 2 else f" (other device {n})".encode())
        tree.rename(src, entry, dst, new_name)
        moved += 1
    for fname in os.listdir(src.path):          # crash leftovers must not block the rmdir
        if fname.startswith(TEMP_PREFIX) or fname.endswith(SIDE_SUFFIX):
            os.unlink(os.path.join(src.path, fname))
    tree.invalidate(src)
    return moved


def _truncate(tree: Tree, f: chk.Finding, log: RepairLog) -> bool:
    """Rewrite a damaged file as its good leading blocks; False if nothing can be kept."""
    with open(f.path, "rb") as src:
        raw_header = src.read(HEADER_LEN)
        try:
            header = Header.parse(raw_header, f.path)
        except CorruptData:
            return False
        if header.layout.block_size != tree.layout.block_size:
            return False
        cipher = FileCipher(tree.keys, header)
        stride = header.layout.stride
        good: list[bytes] = []
        total = os.fstat(src.fileno()).st_size
        while True:
            block = src.read(stride)
            if len(block) < NONCE_LEN + TAG_LEN:
                break
            plain = cipher.open(len(good), block, final=False)
            if plain is None:
                plain = cipher.open(len(good), block, final=True)
                if plain is not None:
                    good.append(plain)
                break
            good.append(plain)
    st = os.stat(f.path)
    kept = sum(map(len, good))
    name = os.path.basename(f.rel)
    entry = tree.write_file(f.parent, name, good, mode=st.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(tree.path(f.parent, entry), st.st_uid, st.st_gid)
    os.utime(tree.path(f.parent, entry), ns=(st.st_atime_ns, st.st_mtime_ns))
    if tree.path(f.parent, entry) != f.path and os.path.exists(f.path):
        os.unlink(f.path)       # a conflict copy's entry name differs from its backing name
    log.did(f"truncated {f.path} ({f.rel.decode(errors='replace')}: {f.reason}) to its {len(good)} good "
            f"block(s), {kept} bytes kept (ciphertext was {total} bytes)")
    return True


class _LostFound:
    """``/lost+found/<stamp>/...`` created on first use."""

    def __init__(self, tree: Tree, stamp: str):
        self.tree = tree
        self.stamp = stamp.encode()
        self._dirs: dict[bytes, Dir] = {}

    def _dir(self, rel: bytes) -> Dir:
        if rel in self._dirs:
            return self._dirs[rel]
        if not rel:
            d = self.tree.root
        else:
            parent_rel, _, name = rel.rpartition(b"/")
            parent = self._dir(parent_rel)
            entry = self.tree.lookup(parent, name)
            if entry is None or entry.kind is not Kind.DIR:
                if entry is not None:
                    name += b" (lost+found)"
                    rel = parent_rel + b"/" + name if parent_rel else name
                entry = self.tree.lookup(parent, name) or self.tree.mkdir(parent, name, 0o700)
            d = self.tree.subdir(parent, entry)
        self._dirs[rel] = d
        return d

    def place(self, f: chk.Finding) -> tuple[Dir, bytes]:
        if f.rel is not None:
            parent_rel, _, name = f.rel.rpartition(b"/")
        else:
            parent_rel, name = b"", b"unnamed-" + f.fname[:16].encode()
        base = chk.LOST_FOUND + b"/" + self.stamp + (b"/" + parent_rel if parent_rel else b"")
        d = self._dir(base)
        candidate, n = name, 1
        while self.tree.lookup(d, candidate) is not None:
            n += 1
            candidate = name + f" ({n})".encode()
        self._last = base + b"/" + candidate
        return d, candidate

    def shown(self, _name: bytes) -> str:
        return self._last.decode(errors="replace")


def _repair_vault_file(tree: Tree, log: RepairLog) -> None:
    """Rewrite a missing or damaged vault file copy from the authentic one in use."""
    vault = tree.vault
    if not any(os.path.exists(os.path.join(vault.root, n)) for n in (VAULT_FILE, VAULT_BACKUP)):
        log.left.append(("vault file", "both vault file copies are lost; opened with the key alone "
                                       "(create a new vault file with 'e2efs init' elsewhere and import)"))
        return
    good = vault.file.serialize(vault.keys)
    for name in (VAULT_FILE, VAULT_BACKUP):
        path = os.path.join(vault.root, name)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(1 << 20)
            copy = VaultFile.parse(raw, path)
            if copy.authentic(vault.keys):
                continue
            why = "fails authentication"
        except FileNotFoundError:
            why = "was missing"
        except IsADirectoryError:
            log.left.append((path, "a folder is where this copy belongs: left alone (move it away and "
                                   "run 'e2efs fsck --repair' again)"))
            continue
        except VaultTooNew:
            log.left.append((path, "written by a newer e2efs: left alone"))
            continue
        except VaultCorrupt as exc:
            why = str(exc).removeprefix(path + " ")
        atomic_write(path, good)
        log.did(f"rewrote {path} from the authentic copy (it {why})")
