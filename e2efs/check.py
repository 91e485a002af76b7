"""fsck: authenticate every name and every block of a vault, read-only.

It walks the backing folders itself rather than through ``Tree.entries`` so
that what the listing would skip (undecryptable names, foreign files,
leftovers of crashes) is reported instead of hidden.
"""

import os
import stat
from dataclasses import dataclass, field

from .errors import CorruptData
from .names import Kind, SIDE_SUFFIX, parse_backing_name
from .transfer import authenticate_file
from .tree import TEMP_PREFIX, Dir, Entry, Tree
from .vault import VAULT_BACKUP, VAULT_FILE


@dataclass
class Report:
    dirs: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))


def check(tree: Tree, progress=None) -> Report:
    report = Report()
    _check_dir(tree, tree.root, report, progress)
    return report


def _check_dir(tree: Tree, d: Dir, report: Report, progress) -> None:
    report.dirs += 1
    fnames = sorted(os.listdir(d.path))
    used_long_stems = set()
    for fname in fnames:
        path = os.path.join(d.path, fname)
        if d == tree.root and fname in (VAULT_FILE, VAULT_BACKUP):
            continue
        if fname.startswith(TEMP_PREFIX) or fname.startswith(f".{VAULT_FILE}.tmp-"):
            report.problem(path, "leftover temporary file from an interrupted write")
            continue
        parsed = parse_backing_name(fname)
        if parsed is None:
            if not fname.endswith(SIDE_SUFFIX):
                report.problem(path, "unknown file, not written by e2efs")
            continue
        if parsed.is_long:
            used_long_stems.add(parsed.stem)
        try:
            tree.decrypt_name(d, parsed)
        except CorruptData as exc:
            report.problem(path, str(exc))
            continue
        st = os.lstat(path)
        if parsed.kind is Kind.DIR:
            if not stat.S_ISDIR(st.st_mode):
                report.problem(path, "named as a directory but is not one")
                continue
            _check_dir(tree, Dir(path, parsed.dir_id), report, progress)
            continue
        if not stat.S_ISREG(st.st_mode):
            report.problem(path, "expected a regular ciphertext file")
            continue
        try:
            report.bytes += authenticate_file(tree, path)
            if parsed.kind is Kind.NODE:
                tree.node_info(d, Entry(b"", fname, Kind.NODE))
        except CorruptData as exc:
            report.problem(path, str(exc).removeprefix(path + ": "))
        except OSError as exc:
            report.problem(path, f"unreadable: {exc}")
        report.files += 1
        if progress:
            progress(path, st.st_size)
    for fname in fnames:
        if fname.endswith(SIDE_SUFFIX) and fname[:-len(SIDE_SUFFIX)] not in used_long_stems:
            report.problem(os.path.join(d.path, fname), "long-name record with no entry (orphan)")
