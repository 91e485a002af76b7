"""The key's and the vault's life cycle beyond the vault file: rekey (a new K,
every file re-encrypted) and disable (decrypt everything, verify, remove the vault)."""

import argparse
import os
import shutil
import sys
import time

from .. import crypto, undo
from ..check import check
from ..errors import CorruptData, DestinationNotEmpty, IOFailure, NotConfirmed, SecretInputError, UsageError
from ..rekey import check_not_mounted, half_finished, rekey
from ..strength import check_password
from ..transfer import export_tree, verify_export
from ..tree import Tree
from ..vault import KeyFileSlot, LockedVault, PasswordSlot
from .common import (add_kdf_options, add_output_options, human, is_within, kdf_from_args, print_json,
                     print_key_block, say)
from .offline import KEY_WARNING
from .progress import Progress, folder_bytes
from .secrets import add_new_password_options, add_secret_options, read_new_password, unlock, unlock_with_secret

RAW = argparse.RawDescriptionHelpFormatter


# -- rekey --------------------------------------------------------------------

def cmd_rekey(args) -> int:
    root = args.vault
    check_not_mounted(root, "rekey")
    locked = LockedVault.read(root)
    vault, kind, secret = unlock_with_secret(args, locked, allow_rekey=True)
    for warning in vault.warnings:
        print(f"e2efs: warning: {warning}", file=sys.stderr)
    if half_finished(locked, vault):
        vault.save()              # the other copy still held the old key's rekey state
        key = crypto.format_recovery_key(vault.keys.master)
        if args.json:
            print_json({"vault": os.path.abspath(root), "recovery_key": key, "resumed": True, "files": 0,
                        "names": 0, "dirs": 0, "bytes": 0, "already_done": 0, "seconds": 0,
                        "slots": [{"id": s.id, "type": s.TYPE} for s in vault.slots], "dropped_slots": []})
        elif args.quiet:
            print(key)
        else:
            print("The interrupted rekey had already switched to the new key; the second copy of the vault file "
                  "is now written too. The new 64-digit key is:\n")
            print_key_block(key)
        return 0
    old_slots = list(vault.slots)
    unlocking = next((s for s in old_slots if s.id == vault.unlocked_slot), None)

    new_password = None
    if args.new_password_file or args.new_password_command:
        new_password = read_new_password(args.new_password_file, args.new_password_command)
    elif kind == "key" and not args.key_only:
        if not sys.stdin.isatty():
            raise SecretInputError("unlocked with the 64-digit key: give the new password with --new-password-file "
                                   "or --new-password-command, or pass --key-only to keep no password")
        new_password = read_new_password(None, None)
    if new_password is not None and not args.allow_weak_password:
        check_password(new_password)
    kdf = kdf_from_args(args)
    if kind == "password" and new_password is None and isinstance(unlocking, PasswordSlot):
        kdf = unlocking.kdf                       # the same password keeps its cost

    made: list = []

    def make_slots(new_master: bytes) -> list:
        """Once: the JSON output lists them before the vault file gets them."""
        if not made:
            if kind == "keyfile":
                made.append(KeyFileSlot.wrap(new_master, secret))
            if new_password is not None:
                made.append(PasswordSlot.wrap(new_master, new_password, kdf))
            elif kind == "password":
                made.append(PasswordSlot.wrap(new_master, secret, kdf))
        return made

    kept = unlocking if unlocking is not None and (kind == "keyfile" or new_password is None) else None
    replaced = unlocking if kind == "password" and new_password is not None else None
    dropped = [s for s in old_slots if s is not kept and s is not replaced]
    if vault.file.rekey is not None:
        say(args, f"Resuming the interrupted rekey of {root}.")
    else:
        say(args, f"Re-encrypting every file and name in {root} under a new key.")

    started = time.monotonic()

    def announce(result) -> None:
        """Before the vault file switches to the new key: if this output fails, the
        old secret still opens the vault and the same command resumes."""
        key = crypto.format_recovery_key(result.new_master)
        try:
            _show_new_key(key, result)
        except OSError as exc:
            raise IOFailure(f"the new key could not be written out ({exc.strerror}): the vault still opens "
                            "with the old secret; run the same rekey again") from None

    def _show_new_key(key: str, result) -> None:
        if args.json:
            stats = result.stats
            print_json({"vault": os.path.abspath(root), "recovery_key": key, "resumed": result.resumed,
                        "files": stats.files, "names": stats.names, "dirs": stats.dirs, "bytes": stats.bytes,
                        "already_done": stats.already, "seconds": round(time.monotonic() - started, 3),
                        "slots": [{"id": s.id, "type": s.TYPE} for s in make_slots(result.new_master)],
                        "dropped_slots": [{"id": s.id, "type": s.TYPE} for s in dropped]})
            return
        if args.quiet:
            print(key, flush=True)
            return
        print("\nYour NEW 64-digit key (the old one no longer opens this vault):\n")
        print_key_block(key)
        print()
        print(KEY_WARNING[bool(new_password is not None or kind != "key")], flush=True)

    with Progress("rekey", folder_bytes(root), args.quiet or args.json) as progress:
        result = rekey(vault, make_slots, progress, announce)
    if args.json:
        return 0
    stats = result.stats
    secs = time.monotonic() - started
    new_slots = LockedVault.read(root).copies[0].slots
    say(args,
        f"\nRekeyed {root}: {stats.files} files ({human(stats.bytes)}) re-encrypted and {stats.names} names "
        f"renamed in {secs:.1f} s" + (f"; {stats.already} were already done by the interrupted run" if stats.already
                                      else "") + ".",
        "Opens now with: " + (", ".join(f"key slot {s.id} ({s.describe()})" for s in new_slots) or "nothing but")
        + (" and " if new_slots else " ") + "the new 64-digit key above.")
    if dropped:
        say(args, "Dropped key slots (they belonged to the old key; add them again with 'e2efs key add'): "
            + ", ".join(f"{s.id} ({s.describe()})" for s in dropped) + ".")
    say(args, "Hard-linked files, if any, are now separate copies.",
        "Old versions of the vault kept by your cloud provider (file history, trash) are still encrypted under "
        "the OLD key: delete them there if that key may have leaked.")
    return 0


# -- disable ------------------------------------------------------------------

def _confirm(args, root: str, dest: str) -> None:
    if args.yes_i_understand:
        return
    name = os.path.basename(os.path.abspath(root))
    print(f"This decrypts every file of {root} into {dest}, checks the copy, and then DELETES the vault "
          f"folder {root} (the encrypted copy your cloud client syncs).\n"
          f"Type the vault folder's name ({name}) to go on: ", end="", file=sys.stderr, flush=True)
    typed = sys.stdin.readline()
    if not sys.stdin.isatty():
        print(file=sys.stderr)              # nothing was echoed: end the prompt line
    if not typed:
        raise NotConfirmed("not confirmed: type the vault folder's name when asked, or pass --yes-i-understand "
                           "in scripts; nothing was changed")
    if typed.strip() != name:
        raise NotConfirmed(f"the typed name does not match {name!r}; nothing was changed")


def cmd_disable(args) -> int:
    root, dest = args.vault, args.dest
    if is_within(dest, root):
        raise UsageError(f"{dest} is inside the vault folder, which disable deletes: choose a folder outside it")
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise DestinationNotEmpty(f"{dest} exists and is not an empty folder; disable needs a new or empty one")
    check_not_mounted(root, "disable")
    vault = unlock(args, root)
    for warning in vault.warnings:
        print(f"e2efs: warning: {warning}", file=sys.stderr)
    _confirm(args, root, dest)
    undo.recover(root)              # what a killed mount left half-written, rolled back first
    started = time.monotonic()
    tree = Tree(vault)
    # the export leaves out what is not an intact entry, and the folder goes whole;
    # the contents it authenticates itself
    findings = check(tree, contents=False).findings
    if findings:
        raise CorruptData(f"{len(findings)} problems in {root} (the first: {findings[0].path}: "
                          f"{findings[0].reason}); nothing was changed: see 'e2efs fsck {root}' and mend "
                          "them ('fsck --repair') before disabling")
    total = folder_bytes(root)
    with Progress("decrypt", total, args.quiet or args.json) as progress:
        stats = export_tree(tree, dest, progress)
    with Progress("verify", total, args.quiet or args.json) as progress:
        verify_export(Tree(vault), dest, progress)
    try:
        shutil.rmtree(root)
    except OSError as exc:
        raise IOFailure(f"{dest} is complete and verified, but removing {root} failed ({exc.strerror}): "
                        "remove it by hand") from None
    secs = time.monotonic() - started
    if args.json:
        print_json({"vault": os.path.abspath(root), "dest": os.path.abspath(dest), "files": stats.files,
                    "dirs": stats.dirs, "bytes": stats.bytes, "verified": True, "vault_removed": True,
                    "seconds": round(secs, 3)})
        return 0
    say(args, f"Decrypted {stats.files} files in {stats.dirs} folders ({human(stats.bytes)}) into {dest}, "
              f"verified every one, and removed the vault {root} in {secs:.1f} s.",
        "Encryption is off: the files in the destination are plaintext. Copies of the vault your cloud "
        "provider keeps (history, trash) are still encrypted and still open with the old password or key.")
    return 0


# -- registration -------------------------------------------------------------

REKEY_DESCRIPTION = """\
Replace the vault's master key (the 64-digit key) by a new random one and
re-encrypt every file's content and every name under it. Use it when the key,
a password or a key file may have leaked: 'e2efs passwd' and 'e2efs key remove'
change only the vault file, so old copies of it still open with the old secret.

The new 64-digit key is printed once, like at init, before the vault switches
to it (with --json the whole document is printed then: check the exit code too).
The secret you unlock with keeps working (rewrapped under the new key), or is
replaced with --new-password-file; every other password and key file is dropped
and listed.
Unlocking with the old 64-digit key asks for a new password (or --key-only).

Interrupt it at any point (Ctrl-C, crash, power loss) and run the same command
again with the same secret: it continues where it stopped. Every file stays
readable meanwhile by this command; the other commands refuse the vault until it
has finished. Hard-linked files become separate copies.

example:
  e2efs rekey ~/Drive/chats-vault
  e2efs rekey ~/Drive/chats-vault --password-file old.pw --new-password-file new.pw

It never runs while the vault is mounted on this machine (exit 26); unmount
first, and make sure no other machine writes to the vault while it runs. It
cannot reach old versions of the files your cloud provider keeps: those stay
under the old key.
"""

DISABLE_DESCRIPTION = """\
Turn encryption off: check the vault as fsck does (any problem, such as a name
that fails authentication or a file that is not the vault's, stops it: mend it
first), decrypt every file into DEST (new or empty), read every file back and
compare it with the vault, and only then delete the vault folder.
Asks for the secret and for the vault folder's name typed back as confirmation
(--yes-i-understand skips the typing, for scripts).

example:
  e2efs disable ~/Drive/chats-vault ~/ChatBackup-plain

It never deletes anything if a step fails: a wrong secret, a refused
confirmation, a file that does not authenticate, a copy that differs (exit 29)
all leave the vault untouched. It never runs while the vault is mounted.
"""


def register(sub) -> None:
    p = sub.add_parser("rekey", help="replace the 64-digit key and re-encrypt everything (resumable)",
                       description=REKEY_DESCRIPTION, formatter_class=RAW)
    p.add_argument("vault", help="the vault folder")
    p.add_argument("--key-only", action="store_true",
                   help="when unlocking with the 64-digit key: keep no password, only the new key opens the vault")
    add_output_options(p, quiet_help="print only the new 64-digit key (and errors)")
    add_secret_options(p)
    add_new_password_options(p)
    add_kdf_options(p)
    p.set_defaults(func=cmd_rekey)

    p = sub.add_parser("disable", help="decrypt everything to a folder, verify, then delete the vault",
                       description=DISABLE_DESCRIPTION, formatter_class=RAW)
    p.add_argument("vault", help="the vault folder (deleted at the end)")
    p.add_argument("dest", help="a new or empty folder for the plaintext")
    p.add_argument("--yes-i-understand", action="store_true",
                   help="do not ask to type the vault folder's name (for scripts)")
    add_output_options(p)
    add_secret_options(p)
    p.set_defaults(func=cmd_disable)
