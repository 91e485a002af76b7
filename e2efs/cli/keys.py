"""The key life cycle that touches only the vault file: passwd, key add/list/remove/show-recovery.

None of these rewrites file data: K stays the same, only its wrappings change.
That is also their limit, said at each step: an old copy of the vault file
(a cloud provider's version history) still opens with a removed secret; only
``e2efs rekey`` replaces K itself.
"""

import argparse
import base64
import os
import sys

from .. import crypto
from ..errors import LastKeySlot, UsageError
from ..strength import check_password
from ..vault import LockedVault
from .common import add_kdf_options, add_output_options, kdf_from_args, print_json
from .secrets import add_new_password_options, add_secret_options, read_new_password, unlock

OLD_COPIES_WARNING = (
    "Old copies of the vault file that your cloud provider or a backup keeps still open with the "
    "{what}. If it may have leaked, run 'e2efs rekey' to replace the key itself.")

KEYFILE_PREFIX = "e2efs-keyfile-v1 "


def _new_password(args) -> bytes:
    password = read_new_password(args.new_password_file, args.new_password_command)
    if not args.allow_weak_password:
        check_password(password)
    return password


def cmd_passwd(args) -> int:
    vault = unlock(args, args.vault)
    password = _new_password(args)
    passwords = [s.id for s in vault.slots if s.TYPE == "password"]
    if args.slot is not None:
        if args.slot not in passwords:
            raise UsageError(f"no password in key slot {args.slot!r} (passwords: {', '.join(passwords) or 'none'})")
        target = args.slot
    elif vault.unlocked_slot in passwords:
        target = vault.unlocked_slot
    elif len(passwords) <= 1:
        target = passwords[0] if passwords else None
    else:
        raise UsageError(f"this vault has {len(passwords)} passwords: name the one to replace with --slot "
                         f"({', '.join(passwords)})")
    slot = vault.replace_password(target, password, kdf_from_args(args))
    if args.json:
        print_json({"vault": os.path.abspath(args.vault), "slot": slot.id, "replaced": target,
                    "files_reencrypted": 0})
    elif not args.quiet:
        print(f"Password changed (key slot {slot.id}). No file was re-encrypted.")
        print(OLD_COPIES_WARNING.format(what="old password"))
    return 0


def cmd_key_list(args) -> int:
    locked = LockedVault.read(args.vault)
    slots = locked.copies[0].slots
    if args.quiet:
        return 0
    if args.json:
        print_json([{"id": s.id, "type": s.TYPE, "description": s.describe()} for s in slots]
                   + [{"id": "recovery", "type": "key", "description": "the 64-digit key (always works)"}])
        return 0
    for s in slots:
        print(f"{s.id}  {s.describe()}")
    print("recovery  the 64-digit key (always opens the vault; cannot be removed, only replaced by 'e2efs rekey')")
    return 0


def cmd_key_add(args) -> int:
    vault = unlock(args, args.vault)
    if args.keyfile_out:
        if os.path.lexists(args.keyfile_out):
            raise UsageError(f"{args.keyfile_out} exists; choose a new file for the key file")
        secret = (KEYFILE_PREFIX + base64.b64encode(os.urandom(32)).decode()).encode()
        fd = os.open(args.keyfile_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secret + b"\n")
            slot = vault.add_keyfile(secret + b"\n")       # written first: no slot without its file
        except BaseException:
            os.unlink(args.keyfile_out)                     # a secret that opens nothing is not left lying about
            raise
        what = f"key file {args.keyfile_out}"
    else:
        slot = vault.add_password(_new_password(args), kdf_from_args(args))
        what = "password"
    if args.json:
        print_json({"vault": os.path.abspath(args.vault), "slot": slot.id, "type": slot.TYPE,
                    "keyfile": os.path.abspath(args.keyfile_out) if args.keyfile_out else None})
    elif not args.quiet:
        print(f"Added {what} as key slot {slot.id}.")
    return 0


def cmd_key_remove(args) -> int:
    vault = unlock(args, args.vault)
    vault.slot(args.slot_id)
    if len(vault.slots) == 1 and not args.leave_key_only:
        raise LastKeySlot("that is the vault's last password or key file: afterwards only the 64-digit key opens it. "
                        "If you really hold that key, repeat with --leave-key-only")
    vault.remove_slot(args.slot_id)
    if args.json:
        print_json({"vault": os.path.abspath(args.vault), "removed": args.slot_id,
                    "slots": [s.id for s in vault.slots]})
    elif not args.quiet:
        print(f"Removed key slot {args.slot_id}.")
        print(OLD_COPIES_WARNING.format(what="removed secret"))
    return 0


def cmd_show_recovery(args) -> int:
    vault = unlock(args, args.vault)
    print("WARNING: anyone who sees this key can decrypt every backup in this vault, now and in every "
          "copy the cloud keeps. Make sure nobody is watching your screen.", file=sys.stderr)
    key = crypto.format_recovery_key(vault.keys.master)
    if args.json:
        print_json({"vault": os.path.abspath(args.vault), "recovery_key": key})
    else:
        print(key)
    return 0


RAW = argparse.RawDescriptionHelpFormatter

PASSWD_DESCRIPTION = """\
Change a password: the vault key is rewrapped under the new password and only
the vault file changes; no file is re-encrypted. Forgot the password but have
the 64-digit key (or a key file)? Unlock with --key-file.

example:
  e2efs passwd ~/Drive/chats-vault
  e2efs passwd --password-file old.pw --new-password-file new.pw ~/Drive/chats-vault

It never changes the 64-digit key (that is 'e2efs rekey') and cannot reach old
copies of the vault file your cloud provider keeps: they still open with the
old password.
"""

KEY_DESCRIPTION = """\
Key slots: more passwords, key files, and the 64-digit recovery key.

example:
  e2efs key list ~/Drive/chats-vault
  e2efs key add ~/Drive/chats-vault --keyfile-out /media/usb/chats.key
  e2efs key remove ~/Drive/chats-vault 1a2b3c4d
  e2efs key show-recovery ~/Drive/chats-vault

It never removes the last password or key file without --leave-key-only, and
never shows the 64-digit key without a current secret and a warning.
"""


def register(sub) -> None:
    p = sub.add_parser("passwd", help="change the password (with the old password or the 64-digit key)",
                       description=PASSWD_DESCRIPTION, formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("--slot", help="which password to replace when the vault has several")
    add_output_options(p)
    add_secret_options(p)
    add_new_password_options(p)
    add_kdf_options(p)
    p.set_defaults(func=cmd_passwd)

    key = sub.add_parser("key", help="list, add or remove passwords and key files; show the recovery key",
                         description=KEY_DESCRIPTION, formatter_class=RAW)
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION")
    ksub.required = True

    p = ksub.add_parser("list", help="list key slots (no secret needed)",
                        description="List the vault's key slots, read without a secret.\n\nexample:\n"
                                    "  e2efs key list ~/Drive/chats-vault --json", formatter_class=RAW)
    p.add_argument("vault")
    add_output_options(p)
    p.set_defaults(func=cmd_key_list)

    p = ksub.add_parser("add", help="add a password, or a new key file with --keyfile-out FILE",
                        description="Add a password, or generate a random key file and add it.\n\nexample:\n"
                                    "  e2efs key add ~/Drive/chats-vault --keyfile-out /media/usb/chats.key\n\n"
                                    "It never overwrites an existing file.", formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("--keyfile-out", metavar="FILE", help="generate a random key file at FILE and add it")
    add_output_options(p)
    add_secret_options(p)
    add_new_password_options(p)
    add_kdf_options(p)
    p.set_defaults(func=cmd_key_add)

    p = ksub.add_parser("remove", help="remove a key slot (never the last one without --leave-key-only)",
                        description="Remove a password or key file by its slot id ('e2efs key list').\n\n"
                                    "example:\n  e2efs key remove ~/Drive/chats-vault 1a2b3c4d\n\n"
                                    "Old copies of the vault file still open with the removed secret: only "
                                    "'e2efs rekey' replaces the key itself.", formatter_class=RAW)
    p.add_argument("vault")
    p.add_argument("slot_id")
    p.add_argument("--leave-key-only", action="store_true",
                   help="allow removing the last slot: only the 64-digit key will open the vault")
    add_output_options(p)
    add_secret_options(p)
    p.set_defaults(func=cmd_key_remove)

    p = ksub.add_parser("show-recovery", help="show the 64-digit key again (needs a current secret)",
                        description="Show the 64-digit key after proving a current secret.\n\nexample:\n"
                                    "  e2efs key show-recovery ~/Drive/chats-vault\n\n"
                                    "It never shows the key without a warning on stderr (not even with "
                                    "--quiet or --json).", formatter_class=RAW)
    p.add_argument("vault")
    add_output_options(p, quiet_help="accepted for symmetry: the key is the output, the warning always goes "
                                     "to stderr")
    add_secret_options(p)
    p.set_defaults(func=cmd_show_recovery)
