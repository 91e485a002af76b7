"""Entry point: one parser, one subcommand per job, one exit code per failure.

Running a command imports only the module that defines it: the others pull in
the offline tools, the key management and the rekey machinery, ~0.1 s of
start-up that ``e2efs mount`` or ``unmount`` has no use for.  ``--help``,
``--version``, a mistyped command and ``e2efs completion`` build the whole
parser.
"""

import argparse
import contextlib
import errno
import gc
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import CLOSED_PIPE_EXIT, E2efsError, IOFailure, NoSpace

# command -> the module of this package that registers it; modules register in
# this order, which is the order of ``e2efs --help``
COMMANDS = {
    "init": "offline", "info": "offline", "import": "offline", "export": "offline", "ls": "offline",
    "cat": "offline", "fsck": "offline",
    "passwd": "keys", "key": "keys",
    "rekey": "lifecycle", "disable": "lifecycle",
    "mount": "mount",
    "unmount": "unmount", "lock": "unmount", "status": "unmount",
    "completion": "completion",
}

DESCRIPTION = """\
e2efs keeps chat backups end-to-end encrypted in a folder that a cloud client syncs.
An app writes plaintext into a mount point; only ciphertext (AES-256-GCM contents,
AES-SIV names) reaches the vault folder.

examples:
  e2efs init ~/Drive/chats-vault                 create a vault (password + 64-digit recovery key)
  e2efs mount ~/Drive/chats-vault ~/ChatBackup   unlock it as a folder
  e2efs unmount ~/ChatBackup                     flush and lock
  e2efs import --in-place ~/Old ~/Drive/chats-vault   turn encryption on for an existing folder
  e2efs export ~/Drive/chats-vault ./restored    restore without FUSE
  e2efs rekey ~/Drive/chats-vault                new 64-digit key, every file re-encrypted
  e2efs COMMAND --help                           what each command does and never does

Secrets are read from the terminal, --password-file, --key-file or
--password-command, never from the command line, and never printed in errors or
logs. --json gives a machine-readable result, -q only errors; each failure is one
line on stderr with its own exit code (README.md).

What e2efs never does: send anything anywhere, keep a copy of your key, or
recover a forgotten password and a lost 64-digit key: nobody can.
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for ``command`` and its module's siblings only."""
    parser = argparse.ArgumentParser(prog="e2efs", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"e2efs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


@contextlib.contextmanager
def no_gc():
    """Imports without the cyclic garbage collector: they create ~30,000
    objects that live as long as the process, and the collector would run ~75
    times over them to free almost nothing (~5% of ``e2efs mount``'s time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _command(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (the
    options before it, -v and --version, take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")     # a file name's bytes as they are, as ls(1) prints them
    with no_gc():
        args = build_parser(_command(argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="e2efs: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except E2efsError as exc:
        print(f"e2efs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("e2efs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`| head`): stop without a message,
        # with the status of a program SIGPIPE stopped
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE_EXIT
    except OSError as exc:
        # not foreseen by the command: still one line, and the class of failure
        where = f" ({exc.filename})" if exc.filename else ""
        cls = NoSpace if exc.errno == errno.ENOSPC else IOFailure
        print(f"e2efs: {exc.strerror or exc}{where}", file=sys.stderr)
        return cls.exit_code


if __name__ == "__main__":
    sys.exit(main())
