"""Where secrets come from: a TTY prompt, a file, or a command; never argv.

Every command that unlocks a vault calls ``add_secret_options`` on its parser
and ``unlock`` with the parsed arguments.
"""

import getpass
import os
import subprocess
import sys

from ..crypto import parse_recovery_key
from ..errors import BadKeyFormat, SecretInputError, WrongSecret
from ..vault import LockedVault, Vault


def add_secret_options(parser, new: bool = False) -> None:
    group = parser.add_argument_group(
        "secret", "Read from one of these, or asked on the terminal. Never given on the command line."
    ).add_mutually_exclusive_group()
    group.add_argument("--password-file", metavar="FILE",
                       help="read the %spassword from FILE (one trailing newline is ignored)" % ("new " if new else ""))
    group.add_argument("--password-command", metavar="CMD",
                       help="run CMD with the shell and read the password from its output, e.g. 'secret-tool lookup e2efs chats'")
    if not new:
        group.add_argument("--key-file", metavar="FILE",
                           help="read the 64-digit key from FILE, or use FILE as a key file added with 'e2efs key add'")


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def read_secret_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16)
    except OSError as exc:
        raise SecretInputError(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _run_command(cmd: str) -> bytes:
    try:
        done = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
    except subprocess.TimeoutExpired:
        raise SecretInputError("--password-command did not finish within 120 s") from None
    if done.returncode != 0:
        raise SecretInputError(f"--password-command failed with exit code {done.returncode}")
    return _strip_newline(done.stdout)


def _nonempty(password: bytes, where: str) -> bytes:
    if not password:
        raise SecretInputError(f"the password from {where} is empty")
    return password


def _prompt(prompt: str) -> str:
    if not os.isatty(sys.stdin.fileno()) and not _has_tty():
        raise SecretInputError(
            "no secret given and no terminal to ask on: use --password-file, --key-file or --password-command")
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise SecretInputError("no secret entered") from None


def _has_tty() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY))
        return True
    except OSError:
        return False


def add_new_password_options(parser) -> None:
    """--new-password-file / --new-password-command, for commands that also unlock."""
    group = parser.add_argument_group("new password", "Read from one of these, or typed twice on the terminal.")
    group.add_argument("--new-password-file", metavar="FILE", help="read the new password from FILE")
    group.add_argument("--new-password-command", metavar="CMD", help="read the new password from CMD's output")


def _password_from(file: str | None, command: str | None) -> bytes:
    """The password in ``file`` or printed by ``command``; empty is never one
    (init refuses it): the wrong file or a broken command, not a wrong guess."""
    if file:
        return _nonempty(_strip_newline(read_secret_file(file, "password")), file)
    return _nonempty(_run_command(command), "the password command")


def read_new_password(file: str | None, command: str | None) -> bytes:
    """A new password: from a file or a command, or typed twice."""
    if file or command:
        return _password_from(file, command)
    first = _prompt("New password: ").encode()
    if not first:
        raise SecretInputError("no password entered")
    if _prompt("Repeat the password: ").encode() != first:
        raise SecretInputError("the two passwords differ")
    return first


def unlock(args, root: str) -> Vault:
    """Unlock the vault at ``root`` with whichever secret the arguments name."""
    return unlock_with_secret(args, LockedVault.read(root))[0]


def unlock_with_secret(args, locked: LockedVault, allow_rekey: bool = False) -> tuple[Vault, str, bytes | None]:
    """(vault, which secret opened it: "password", "keyfile" or "key", that secret's
    bytes or None for the key). rekey needs the secret to wrap the new key under
    it; ``allow_rekey`` opens a vault in the middle of a rekey."""
    if getattr(args, "key_file", None):
        data = read_secret_file(args.key_file, "key")
        try:
            master = parse_recovery_key(data.decode("ascii", "replace"))
        except BadKeyFormat:
            if not locked.has_keyfile:
                raise
            return locked.unlock_with_keyfile(data, allow_rekey=allow_rekey), "keyfile", data
        return locked.unlock_with_key(master, allow_rekey=allow_rekey), "key", None
    if args.password_file or args.password_command:
        password = _password_from(args.password_file, args.password_command)
        return locked.unlock_with_password(password, allow_rekey=allow_rekey), "password", password
    if not locked.has_password:
        master = parse_recovery_key(_prompt("64-digit key: "))
        return locked.unlock_with_key(master, allow_rekey=allow_rekey), "key", None
    typed = _prompt("Password (or 64-digit key): ")
    if not typed:
        raise SecretInputError("no password entered")
    try:
        return locked.unlock_with_password(typed.encode(), allow_rekey=allow_rekey), "password", typed.encode()
    except WrongSecret:
        try:
            master = parse_recovery_key(typed)
        except BadKeyFormat:
            raise WrongSecret("wrong password") from None
        return locked.unlock_with_key(master, allow_rekey=allow_rekey), "key", None
