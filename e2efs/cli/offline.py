"""Commands that need no mount: init, info, import, export, ls, cat, fsck."""

import argparse
import os
import stat
import sys
import time

from .. import crypto, undo
from ..check import check
from ..errors import (CorruptData, DestinationNotEmpty, IOFailure, NotFoundInVault, UsageError,
                      VaultNotFound)
from ..names import Kind
from ..strength import check_password
from ..transfer import authenticate_file, export_tree, import_tree
from ..tree import Tree
from ..vault import FORMAT_VERSION, VAULT_BACKUP, VAULT_FILE, LockedVault, Vault, open_with_key_only
from .common import (add_kdf_options, add_output_options, human, is_within, kdf_from_args, parse_size, print_json,
                     print_key_block)
from .progress import Progress, folder_bytes
from .secrets import add_secret_options, read_new_password, read_secret_file, unlock

# -- init ---------------------------------------------------------------------

KEY_WARNING = {
    True: ("Write this key down and keep it away from the vault (on paper, in a password\n"
           "manager). Your password or this key opens the backups. Nobody (not e2efs, not\n"
           "your cloud provider) can reset either: if you forget the password AND lose\n"
           "this key, your backups are gone for good."),
    False: ("Write this key down and keep it away from the vault (on paper, in a password\n"
            "manager). It is the only way in. Nobody (not e2efs, not your cloud provider)\n"
            "can recover it: if you lose it, your backups are gone for good."),
}


def cmd_init(args) -> int:
    root = args.vault
    if os.path.lexists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DestinationNotEmpty(f"{root} exists and is not an empty folder; a new vault needs a new or empty one")
    block_size = parse_size(args.block_size)
    kdf = kdf_from_args(args)
    password = None
    if not args.key_only:
        password = read_new_password(args.password_file, args.password_command)
        if not args.allow_weak_password:
            check_password(password)
    master = crypto.new_master_key()
    os.makedirs(root, exist_ok=True)
    try:
        Vault.create(root, master, password, block_size, kdf)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        _show_new_vault(args, root, crypto.format_recovery_key(master), block_size, kdf, password is not None)
    except OSError as exc:
        # a key-only vault whose key nobody saw opens never: it holds nothing yet, so it goes
        for name in (VAULT_FILE, VAULT_BACKUP):
            os.unlink(os.path.join(root, name))
        raise IOFailure(f"the new vault's key could not be written out ({exc.strerror}): "
                        f"the vault was removed from {root} again") from None
    return 0


def _show_new_vault(args, root: str, key: str, block_size: int, kdf, with_password: bool) -> None:
    if args.quiet and not args.json:
        print(key, flush=True)              # the one thing init must always show
    elif args.json:
        print_json({"vault": os.path.abspath(root), "recovery_key": key, "block_size": block_size,
                    "password": with_password})
    else:
        print(f"Created vault {root} (format {FORMAT_VERSION}, {human(block_size)} blocks"
              + (f", Argon2id {human(kdf.memory_kib * 1024)} x {kdf.time_cost})." if with_password else ")."))
        print("\nYour 64-digit " + ("recovery " if with_password else "") + "key:\n")
        print_key_block(key)
        print()
        print(KEY_WARNING[with_password], flush=True)


# -- info ---------------------------------------------------------------------

def cmd_info(args) -> int:
    locked = LockedVault.read(args.vault)
    vf = locked.copies[0]
    if args.json:
        slots = [{k: v for k, v in s.to_json().items() if k not in ("salt", "nonce", "wrapped_key")} | {"id": s.id}
                 for s in vf.slots]
        print_json({"vault": os.path.abspath(args.vault), "format_version": vf.version,
                    "block_size": vf.block_size, "slots": slots, "problems": locked.damaged,
                    "rekey_in_progress": any(c.rekey is not None for c in locked.copies)})
        return 0
    if args.quiet:
        return 0
    print(f"vault:          {os.path.abspath(args.vault)}")
    print(f"format version: {vf.version}")
    print(f"block size:     {human(vf.block_size)}")
    for s in vf.slots:
        print(f"key slot {s.id}: {s.describe()}")
    print("unlock with:    " + ("a key slot above or the 64-digit key" if vf.slots else "the 64-digit key only"))
    if any(c.rekey is not None for c in locked.copies):
        print("rekey:          an interrupted 'e2efs rekey' must be run again to finish")
    for problem in locked.damaged:
        print(f"problem:        {problem}")
    print("(read without a secret: nothing here is authenticated; 'e2efs fsck' checks everything)")
    return 0


# -- unlocking for the reading commands --------------------------------------

def open_tree(args, recover: bool = True) -> Tree:
    """Unlock the vault named by ``args.vault``; with --key-file this works even
    when both vault files are lost (the key is K itself).  Like a mount, it first
    rolls back writes a killed mount left half-done (unless ``recover`` is False)."""
    try:
        vault = unlock(args, args.vault)
    except VaultNotFound:
        if not (getattr(args, "key_file", None) and os.path.isdir(args.vault)):
            raise
        master = crypto.parse_recovery_key(read_secret_file(args.key_file, "key").decode("ascii", "replace"))
        vault = open_with_key_only(args.vault, master)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        for warning in vault.warnings:
            print(f"e2efs: warning: {warning}", file=sys.stderr)
    if recover:
        try:
            for line in undo.recover(args.vault):
                if not quiet:
                    print(f"e2efs: {line}", file=sys.stderr)
        except OSError as exc:
            print(f"e2efs: warning: an interrupted write could not be rolled back ({exc.strerror}): "
                  "its file fails authentication until it is", file=sys.stderr)
    return Tree(vault)


def _resolve(tree: Tree, path: str):
    try:
        return tree.resolve(os.fsencode(path))
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundInVault(f"{path}: no such file or directory in the vault") from None


# -- import / export ----------------------------------------------------------

def _summary(args, verb: str, stats, started: float, extra: dict | None = None) -> None:
    if args.json:
        print_json({"files": stats.files, "dirs": stats.dirs, "bytes": stats.bytes,
                    "seconds": round(time.monotonic() - started, 3), **(extra or {})})
    elif not args.quiet:
        secs = time.monotonic() - started
        print(f"{verb} {stats.files} files in {stats.dirs} folders, {human(stats.bytes)} in {secs:.1f} s")


def cmd_import(args) -> int:
    if not os.path.isdir(args.source):
        raise IOFailure(f"{args.source} is not a folder")
    if is_within(args.vault, args.source) or is_within(args.source, args.vault):
        raise UsageError(f"{args.source} and the vault {args.vault} overlap: import a folder outside the vault "
                         "that does not contain it")
    tree = open_tree(args)
    started = time.monotonic()
    with Progress("import", folder_bytes(args.source), args.quiet or args.json) as progress:
        stats = import_tree(tree, args.source, progress, in_place=args.in_place)
    extra = {"in_place": True, "removed": stats.removed, "kept": stats.kept} if args.in_place else None
    _summary(args, "imported", stats, started, extra)
    if args.in_place and not args.json:
        for path in stats.kept:
            print(f"e2efs: warning: {path} changed while it was imported: kept (run import again)", file=sys.stderr)
        if not args.quiet:
            print(f"removed {stats.removed} plaintext files from {args.source}, each after its encrypted copy "
                  "was committed and read back")
    return 0


def cmd_export(args) -> int:
    if is_within(args.dest, args.vault):
        raise UsageError(f"{args.dest} is inside the vault folder, which is synced: plaintext must not go there")
    tree = open_tree(args)
    started = time.monotonic()
    with Progress("export", folder_bytes(args.vault), args.quiet or args.json) as progress:
        stats = export_tree(tree, args.dest, progress)
    _summary(args, "exported", stats, started)
    return 0


# -- ls / cat -----------------------------------------------------------------

def cmd_ls(args) -> int:
    tree = open_tree(args)
    d, entry = _resolve(tree, args.path)
    if entry is None or entry.kind is Kind.DIR:
        listing_dir = d if entry is None else tree.subdir(d, entry)
        rows = [(listing_dir, e) for _, e in sorted(tree.entries(listing_dir).items())]
    else:
        rows = [(d, entry)]
    out = []
    for parent, e in rows:
        st = os.lstat(tree.path(parent, e))
        size = tree.plain_size(e, st)
        mode = 0o777 if e.kind is Kind.SYMLINK else stat.S_IMODE(st.st_mode)
        type_bits = {Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK, Kind.FILE: stat.S_IFREG}.get(e.kind)
        if type_bits is None:
            type_bits = tree.node_info(parent, e)[0]
        name = os.fsdecode(e.name)
        if args.quiet:
            continue
        if args.json:
            out.append({"name": name, "type": e.kind.name.lower(), "size": size, "mode": oct(mode),
                        "mtime": st.st_mtime})
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
        suffix = ""
        if e.kind is Kind.SYMLINK:
            suffix = " -> " + os.fsdecode(tree.readlink(parent, e))
        print(f"{stat.filemode(type_bits | mode)} {size:>12} {when} {name}{suffix}")
    if args.json and not args.quiet:
        print_json(out)
    return 0


def cmd_cat(args) -> int:
    tree = open_tree(args)
    d, entry = _resolve(tree, args.path)
    if entry is None or entry.kind is not Kind.FILE:
        raise UsageError(f"{args.path} is not a regular file")
    path = tree.path(d, entry)
    authenticate_file(tree, path)          # all of it first: nothing unauthenticated reaches stdout
    content = tree.open_content(path)
    try:
        out = sys.stdout.buffer
        for offset in range(0, content.size, 1 << 20):
            out.write(content.read(offset, 1 << 20))
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        os.close(content.fd)
    return 0


# -- fsck ---------------------------------------------------------------------

def cmd_fsck(args) -> int:
    from ..repair import refuse_if_mounted, repair
    if args.truncate and not args.repair:
        raise UsageError("--truncate only makes sense with --repair")
    if args.repair:
        refuse_if_mounted(args.vault)
    tree = open_tree(args, recover=False)
    started = time.monotonic()
    actions, left = [], []
    if args.repair:     # first, so a rolled-back file is not taken for a damaged one
        try:
            actions = [f"undo record applied: {line}" for line in undo.recover(args.vault)]
        except OSError as exc:
            print(f"e2efs: warning: undo records not applied: {exc}", file=sys.stderr)
    with Progress("fsck", folder_bytes(args.vault), args.quiet or args.json) as progress:
        report = check(tree, progress)
    if args.repair:
        done = repair(tree, report, truncate=args.truncate)
        actions, left = actions + done.actions, done.left
        tree = open_tree(args, recover=False)   # what is there now: a fresh look, vault file included
        report = check(tree)
    problems = [("vault file", w) for w in tree.vault.warnings] + report.problems
    if args.json:
        print_json({"dirs": report.dirs, "files": report.files, "bytes": report.bytes,
                     "problems": [{"path": p, "reason": r} for p, r in problems],
                     "repairs": actions, "not_repaired": [{"path": p, "reason": r} for p, r in left],
                     "lost_found": [{"path": p, "reason": r} for p, r in report.notes]})
    else:
        for action in actions:
            print(f"REPAIRED {action}")
        for path, reason in problems:
            print(f"CORRUPT {path}: {reason}")
        if report.notes and not args.quiet:
            print(f"note: {len(report.notes)} damaged item(s) set aside in /lost+found by an earlier repair")
        if not args.quiet:
            print(f"checked {report.files} files in {report.dirs} folders, {human(report.bytes)} "
                  f"in {time.monotonic() - started:.1f} s: "
                  + (f"{len(actions)} repair(s), " if args.repair else "")
                  + (f"{len(problems)} problem(s)" + (" left" if args.repair else "") if problems else "no problems"))
    if problems:
        raise CorruptData(f"fsck found {len(problems)} problem(s) in {args.vault}"
                          + ("" if args.repair else " (e2efs fsck --repair fixes what can be fixed)"))
    return 0


# -- registration -------------------------------------------------------------

RAW = argparse.RawDescriptionHelpFormatter

INIT_DESCRIPTION = """\
Create a vault in a new or empty folder (the one your cloud client syncs). By
default it is protected by a password you choose (Argon2id, about 1 s and
256 MiB per guess), and a 64-digit recovery key is shown once: write it down.
With --key-only there is no password and that key is the only way in.

example:
  e2efs init ~/Drive/chats-vault
  e2efs init ~/Drive/chats-vault --password-file pw.txt --json

It never writes into a folder that is not empty, never accepts a weak password
without --allow-weak-password, and never shows the key again unless you prove a
secret ('e2efs key show-recovery'). Nobody can reset a forgotten password and a
lost key.
"""

INFO_DESCRIPTION = """\
Show format version, block size, KDF cost and key slots, read from the vault
file without any secret.

example:
  e2efs info ~/Drive/chats-vault --json

It never asks for or shows a secret; nothing it prints is authenticated
('e2efs fsck' checks everything).
"""

IMPORT_DESCRIPTION = """\
Turn encryption on for an existing plain folder: encrypt every file, folder,
symlink and special file under SOURCE into the vault, merging by name (a file
of the same name in the vault is replaced). SOURCE is not changed, unless
--in-place: then each plaintext file is removed once its encrypted copy is
committed, synced to disk and read back through the vault and compared
byte for byte; emptied subfolders are removed too (SOURCE itself stays).

example:
  e2efs import ./old-backups ~/Drive/chats-vault
  e2efs import --in-place ~/WhatsApp/Backups ~/Drive/chats-vault

It never removes a plaintext file whose encrypted copy is not committed and
verified; a file that changes while it is imported is kept. Sockets are
skipped.
"""

EXPORT_DESCRIPTION = """\
Restore without FUSE: decrypt everything into DEST, which must be new or empty.
DEST appears only when every file decrypted and authenticated. Works with the
64-digit key even if both vault files are lost.

example:
  e2efs export ~/Drive/chats-vault ./restored --key-file key.txt

It never writes into a non-empty folder and never leaves a partial DEST behind.
"""

LS_DESCRIPTION = """\
List decrypted names, sizes and times of a folder in the vault (the root by
default), without mounting.

example:
  e2efs ls ~/Drive/chats-vault Media --json

It never writes anything; names that fail authentication are skipped and logged.
"""

CAT_DESCRIPTION = """\
Decrypt one file to standard output. The whole file is authenticated before the
first byte is written.

example:
  e2efs cat ~/Drive/chats-vault msgstore.db > msgstore.db

It never prints a byte of a file that fails authentication.
"""

FSCK_DESCRIPTION = """\
Check the whole vault: every name and every block is authenticated, and
leftovers of interrupted writes and foreign files are reported. Read-only
unless --repair. Exit 0 when everything authenticates (after --repair: when
nothing is left to fix), 16 when anything is corrupt (each problem is printed),
26 when --repair meets a mounted vault.

example:
  e2efs fsck ~/Drive/chats-vault
  e2efs fsck --repair ~/Drive/chats-vault

Without --repair it never changes anything; with it, it never deletes a damaged
file (it is set aside in /lost+found, or cut with --truncate) and never touches
a mounted vault.
"""


def _common(p, secret=True) -> None:
    add_output_options(p)
    if secret:
        add_secret_options(p)


def register(sub) -> None:
    p = sub.add_parser("init", help="create a new vault", description=INIT_DESCRIPTION, formatter_class=RAW)
    p.add_argument("vault", help="a new or empty folder")
    p.add_argument("--key-only", action="store_true",
                   help="no password: the generated 64-digit key is the only way in")
    p.add_argument("--block-size", default="64K", help="plaintext block size, 4K to 1M (default 64K)")
    add_kdf_options(p)
    add_output_options(p, json_help="print the result (including the key) as JSON",
                       quiet_help="print only the 64-digit key (and errors)")
    add_secret_options(p, new=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("info", help="show a vault's parameters (no secret needed)", description=INFO_DESCRIPTION,
                       formatter_class=RAW)
    p.add_argument("vault")
    _common(p, secret=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="encrypt a plain folder into a vault (turn on)",
                       description=IMPORT_DESCRIPTION, formatter_class=RAW)
    p.add_argument("source", help="the plain folder")
    p.add_argument("vault")
    p.add_argument("--in-place", action="store_true",
                   help="remove each plaintext file after its encrypted copy is committed and verified")
    _common(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="decrypt a whole vault into a plain folder", description=EXPORT_DESCRIPTION,
                       formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("dest", help="a new or empty folder")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ls", help="list decrypted names, sizes and times", description=LS_DESCRIPTION,
                       formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("path", nargs="?", default="", help="a folder or file inside the vault (default: the root)")
    _common(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="decrypt one file to standard output", description=CAT_DESCRIPTION,
                       formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("path", help="the file inside the vault")
    p.add_argument("-q", "--quiet", action="store_true", help="no warnings on stderr, only errors")
    add_secret_options(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("fsck", help="authenticate every name and every block (--repair to fix)",
                       description=FSCK_DESCRIPTION, formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("--repair", action="store_true",
                   help="move damaged files to /lost+found, delete leftover temp files and orphaned name "
                        "records, rewrite a damaged vault file copy; prints every action")
    p.add_argument("--truncate", action="store_true",
                   help="with --repair: cut a damaged file to its last good block instead of moving it")
    _common(p)
    p.set_defaults(func=cmd_fsck)
