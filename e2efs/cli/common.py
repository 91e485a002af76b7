"""Small pieces every command shares: sizes, JSON output, KDF cost options."""

import json
import os
import sys

from .. import crypto
from ..errors import UsageError
from ..vault import KdfParams

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'64K', '256M', '65536' -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        return int(t[:len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"not a size: {text!r} (examples: 64K, 256M)") from None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def is_within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it, symlinks resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2)
    print(flush=True)       # a full disk or closed pipe fails here, not after the caller moved on


def add_kdf_options(parser) -> None:
    parser.add_argument("--kdf-memory", default=f"{crypto.ARGON2_MEMORY_KIB // 1024}M",
                        help="Argon2id memory for the password (default %(default)s)")
    parser.add_argument("--kdf-time", type=int, default=crypto.ARGON2_TIME_COST,
                        help="Argon2id passes (default %(default)s, about 1 s here)")
    parser.add_argument("--kdf-parallelism", type=int, default=crypto.ARGON2_PARALLELISM,
                        help="Argon2id lanes (default %(default)s)")
    parser.add_argument("--allow-weak-password", action="store_true",
                        help="accept a password the strength estimator rejects")


def kdf_from_args(args) -> KdfParams:
    kdf = KdfParams(parse_size(args.kdf_memory) // 1024, args.kdf_time, args.kdf_parallelism)
    if why := kdf.problem():        # past what a reader accepts, the vault would never open
        raise UsageError(f"--kdf-memory, --kdf-time, --kdf-parallelism: {why}")
    return kdf


def add_output_options(parser, json_help: str = "print a machine-readable summary as JSON on stdout",
                       quiet_help: str = "print nothing but errors (the exit code tells the outcome)") -> None:
    """--json and -q/--quiet, the same on every command that prints a result."""
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def say(args, *lines) -> None:
    """Human-readable lines on stdout, unless --quiet or --json."""
    if not (getattr(args, "quiet", False) or getattr(args, "json", False)):
        for line in lines:
            print(line)


def print_key_block(key: str) -> None:
    """The 64-digit key, 4 groups of 4 per line, indented (init and rekey)."""
    groups = key.split()
    for i in range(0, 16, 4):
        print("    " + " ".join(groups[i:i + 4]))
