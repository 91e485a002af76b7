"""fsck: authenticate every name and every block of a vault, read-only.

It walks the backing folders itself rather than through ``Tree.entries`` so
that what the listing would skip (undecryptable names, foreign files,
leftovers of crashes, sync-client placeholders) is reported instead of hidden.
Every problem is a ``Finding`` with a kind, so ``repair`` can act on it.
What already sits in the vault's ``lost+found`` folder was put there by a
repair: it is listed as a note, not counted as a problem again.
"""

import os
import stat
from dataclasses import dataclass, field

from .errors import CorruptData
from .names import Kind, SIDE_SUFFIX, BackingName, parse_backing_name
from .transfer import authenticate_file
from .tree import TEMP_PREFIX, Dir, Entry, Tree
from .undo import UNDO_DIR, left_behind
from .vault import VAULT_BACKUP, VAULT_FILE

LOST_FOUND = b"lost+found"

# Finding kinds
TEMP = "temp"                   # leftover temporary file of an interrupted write
FOREIGN = "foreign"             # not written by e2efs
PLACEHOLDER = "placeholder"     # a sync client's stub or a partial download
BAD_NAME = "name"               # the name does not decrypt (or its side record is lost)
BAD_TYPE = "type"               # a directory name on a file, or a file that is not regular
BAD_CONTENT = "content"         # header or block fails authentication
UNREADABLE = "unreadable"       # the OS refused to read it
ORPHAN_SIDE = "orphan-side"     # long-name record whose entry is gone
DUP_DIR = "dup-dir"             # one folder created on two devices: two IDs, one name
UNDO = "undo"                   # undo record of an interrupted in-place write (undo.py)


@dataclass
class Finding:
    kind: str
    path: str
    reason: str
    parent: Dir | None = None
    parsed: BackingName | None = None
    rel: bytes | None = None            # plaintext path when the name decrypted
    twin: str | None = None             # DUP_DIR: the backing name of the folder it merges into

    @property
    def fname(self) -> str:
        return os.path.basename(self.path)


@dataclass
class Report:
    dirs: int = 0
    files: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)    # inside lost+found

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(f.path, f.reason) for f in self.findings]

    def problem(self, path: str, reason: str, kind: str = BAD_CONTENT, **kw) -> None:
        self.findings.append(Finding(kind, path, reason, **kw))


def check(tree: Tree, progress=None, contents: bool = True) -> Report:
    """``contents=False``: names and what is not an entry only, no block read
    (for a caller that authenticates every file's content itself)."""
    report = Report()
    _check_dir(tree, tree.root, report, progress, b"", contents)
    return report


def _placeholder_reason(fname: str) -> str | None:
    if fname.startswith(".") and fname.endswith(".icloud"):
        return f"iCloud placeholder for {fname[1:-len('.icloud')]}: not downloaded yet (open the folder in Finder or run 'brctl download')"
    low = fname.lower()
    for marker in (".partial", ".part", ".crdownload", ".tmp", ".download", "~$"):
        if low.endswith(marker) or low.startswith(marker):
            return "partial download left by a sync client"
    if ".syncthing." in low or low.startswith(".~") or low.startswith(".dropbox"):
        return "sync client's temporary file"
    return None


def _check_dir(tree: Tree, d: Dir, report: Report, progress, prefix: bytes, contents: bool) -> None:
    report.dirs += 1
    fnames = sorted(os.listdir(d.path))
    used_long_stems = set()
    dir_names: dict[bytes, str] = {}
    start = len(report.findings)
    for fname in fnames:
        path = os.path.join(d.path, fname)
        if d == tree.root and fname in (VAULT_FILE, VAULT_BACKUP):
            continue
        if d == tree.root and fname == UNDO_DIR:
            try:
                for record in left_behind(d.path):
                    report.problem(record, "undo record of an interrupted write: its file is rolled back by "
                                           "the next read-write mount or 'e2efs fsck --repair'", UNDO)
            except OSError as exc:
                report.problem(path, f"unreadable: {exc.strerror or exc}", UNREADABLE)
            continue
        if fname.startswith(TEMP_PREFIX) or fname.startswith(f".{VAULT_FILE}.tmp-"):
            report.problem(path, "leftover temporary file from an interrupted write", TEMP, parent=d)
            continue
        parsed = parse_backing_name(fname)
        if parsed is None:
            if not fname.endswith(SIDE_SUFFIX):
                placeholder = _placeholder_reason(fname)
                if placeholder:
                    report.problem(path, placeholder, PLACEHOLDER, parent=d)
                else:
                    report.problem(path, "unknown file, not written by e2efs", FOREIGN, parent=d)
            continue
        if parsed.is_long:
            used_long_stems.add(parsed.stem)
        try:
            rel = prefix + tree.decrypt_name(d, parsed) + parsed.conflict.encode()
        except CorruptData as exc:
            report.problem(path, str(exc), BAD_NAME, parent=d, parsed=parsed)
            continue
        except OSError as exc:
            report.problem(path, f"unreadable long-name record: {exc.strerror}", UNREADABLE, parent=d, parsed=parsed)
            continue
        try:
            st = os.lstat(path)
        except OSError as exc:
            report.problem(path, f"unreadable: {exc.strerror}", UNREADABLE, parent=d, parsed=parsed, rel=rel)
            continue
        if parsed.kind is Kind.DIR:
            if not stat.S_ISDIR(st.st_mode):
                report.problem(path, "named as a directory but is not one", BAD_TYPE, parent=d, parsed=parsed, rel=rel)
                continue
            if rel in dir_names:
                report.problem(path, f"folder {rel.decode(errors='replace')} exists twice (created on two devices); "
                                     "the mount shows the second with an '(e2efs duplicate …)' suffix",
                               DUP_DIR, parent=d, parsed=parsed, rel=rel, twin=dir_names[rel])
            dir_names.setdefault(rel, fname)
            try:
                _check_dir(tree, Dir(path, parsed.dir_id), report, progress, rel + b"/", contents)
            except OSError as exc:
                report.problem(path, f"unreadable folder: {exc.strerror}", UNREADABLE, parent=d, parsed=parsed, rel=rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            report.problem(path, "expected a regular ciphertext file", BAD_TYPE, parent=d, parsed=parsed, rel=rel)
            continue
        report.files += 1
        if st.st_size == 0:
            report.problem(path, "empty ciphertext file: a sync client's placeholder or an unfinished download "
                                 "(no e2efs file is ever 0 bytes)", PLACEHOLDER, parent=d, parsed=parsed, rel=rel)
            continue
        if not contents:
            continue
        try:
            report.bytes += authenticate_file(tree, path)
            if parsed.kind is Kind.NODE:
                tree.node_info(d, Entry(b"", fname, Kind.NODE))
        except CorruptData as exc:
            report.problem(path, str(exc).removeprefix(path + ": "), BAD_CONTENT, parent=d, parsed=parsed, rel=rel)
        except OSError as exc:
            report.problem(path, f"unreadable: {exc.strerror}", UNREADABLE, parent=d, parsed=parsed, rel=rel)
        if progress:
            progress(path, st.st_size)
    for fname in fnames:
        if fname.endswith(SIDE_SUFFIX) and fname[:-len(SIDE_SUFFIX)] not in used_long_stems:
            report.problem(os.path.join(d.path, fname), "long-name record with no entry (orphan)", ORPHAN_SIDE, parent=d)
    if prefix == LOST_FOUND + b"/" or prefix.startswith(LOST_FOUND + b"/"):
        # what a repair already set aside: notes, not new problems
        moved, report.findings[start:] = report.findings[start:], []
        keep = [f for f in moved if f.kind in (TEMP, ORPHAN_SIDE)]
        report.findings.extend(keep)
        report.notes.extend((f.path, f.reason) for f in moved if f not in keep)
