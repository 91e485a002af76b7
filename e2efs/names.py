"""Name encryption: AES-SIV bound to the parent directory, lowercase base32.

Backing names (the grammar is in docs/FORMAT.md):

    <stem>                 regular file
    <stem>.<dirid>         directory (its 16-byte ID, base32: 26 characters)
    <stem>.l               symbolic link
    <stem>.n               other special file (fifo, socket, device node)
    _<sha256>.name         side record holding a long stem (see below)

``stem`` is base32(SIV(pad16(name), AD=parent dir ID)).  When the whole
backing name would pass ``MAX_BACKING_NAME`` characters the stem is replaced by
``_`` + base32(SHA-256(stem)) and the real stem goes into the side record.
Anything after a valid backing name that a sync client appended (`` (1)``,
``.sync-conflict-…``) is kept and shown after the plaintext name.
"""

import enum
import hashlib
import re
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from .errors import CorruptData

ROOT_DIR_ID = bytes(16)
DIR_ID_LEN = 16
NAME_PAD = 16
MAX_NAME_BYTES = 255
MAX_BACKING_NAME = 220
LONG_PREFIX = "_"
SIDE_SUFFIX = ".name"
MIN_STEM_CHARS = 52      # base32 of the smallest SIV output, 16 + 16 bytes


class Kind(enum.Enum):
    FILE = ""
    DIR = "d"
    SYMLINK = "l"
    NODE = "n"


_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]     # 10 bits -> 2 characters


def b32encode(data: bytes) -> str:
    """Lowercase base32 without padding, 1.7x faster than base64.b32encode plus
    decode/strip/lower (every new name is encoded): one int, 10 bits a step."""
    bits = len(data) * 8
    pairs = -(-bits // 10)
    value = int.from_bytes(data, "big") << (pairs * 10 - bits)
    text = "".join([_B32_PAIRS[(value >> shift) & 0x3FF] for shift in range(pairs * 10 - 10, -1, -10)])
    return text[:-(-bits // 5)]


_B32 = re.compile(r"[a-z2-7]+")


_B32_AS_BASE32HEX = str.maketrans("abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv")
_VALID_TAIL_CHARS = {0: 0, 2: 2, 4: 4, 5: 1, 7: 3}      # len % 8 -> unused low bits in the last char


def b32decode(text: str) -> bytes:
    """Strict lowercase base32 without padding, ~4x faster than base64.b32decode
    (listing a directory decodes every name): one int() over the whole string.
    Non-zero unused bits are rejected, so each byte string has one spelling."""
    unused = _VALID_TAIL_CHARS.get(len(text) % 8)
    if unused is None or not _B32.fullmatch(text):
        raise ValueError("not lowercase base32")
    value = int(text.translate(_B32_AS_BASE32HEX), 32)
    if value & ((1 << unused) - 1):
        raise ValueError("base32 with non-zero padding bits")
    return (value >> unused).to_bytes(len(text) * 5 // 8, "big")


def check_name(name: bytes) -> None:
    """POSIX rules for one path component; ValueError for the caller to map."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ValueError(f"invalid file name {name!r}")
    if len(name) > MAX_NAME_BYTES:
        raise OverflowError("file name longer than 255 bytes")


# A backing name, then whatever a sync client appended to it.
_BACKING = re.compile(
    r"(?P<stem>_[a-z2-7]{52}|[a-z2-7]{%d,})(?:\.(?P<suffix>[a-z2-7]{26}|l|n))?(?P<conflict>(?:[ .\-_~(].*)?)" % MIN_STEM_CHARS,
    re.DOTALL,
)


# ``<stem> (1).l``: clients such as Dropbox and Syncthing insert before the "extension".
_SUFFIX_AFTER_CONFLICT = re.compile(r"(?P<conflict>[ .\-_~(].*)\.(?P<suffix>[a-z2-7]{26}|l|n)", re.DOTALL)


class BackingName(NamedTuple):
    """A parsed backing name, before its stem is decrypted (a tuple: one per
    directory entry listed)."""
    stem: str
    kind: Kind
    dir_id: bytes | None
    conflict: str            # text a sync client appended, or ""

    @property
    def is_long(self) -> bool:
        return self.stem.startswith(LONG_PREFIX)


def parse_backing_name(fname: str) -> BackingName | None:
    """None for anything that is not an entry: vault files, temp files, side records."""
    if fname.endswith(SIDE_SUFFIX) and fname.startswith(LONG_PREFIX) and len(fname) == 53 + len(SIDE_SUFFIX):
        return None
    m = _BACKING.fullmatch(fname)
    if not m:
        return None
    conflict = m["conflict"]
    suffix = m["suffix"]
    if suffix is None and conflict:
        if m["stem"].startswith(LONG_PREFIX) and SIDE_SUFFIX in conflict:
            return None                  # a sync client's copy of a side record
        moved = _SUFFIX_AFTER_CONFLICT.fullmatch(conflict)
        if moved:                        # the client took our kind suffix for an extension
            conflict, suffix = moved["conflict"], moved["suffix"]
    if suffix is None:
        return BackingName(m["stem"], Kind.FILE, None, conflict)
    if suffix in ("l", "n"):
        return BackingName(m["stem"], Kind(suffix), None, conflict)
    return BackingName(m["stem"], Kind.DIR, b32decode(suffix), conflict)


def kind_suffix(kind: Kind, dir_id: bytes | None = None) -> str:
    if kind is Kind.DIR:
        return "." + b32encode(dir_id)
    return "" if kind is Kind.FILE else "." + kind.value


def side_record_name(long_stem: str) -> str:
    return long_stem + SIDE_SUFFIX


class NameCipher:
    """Deterministic name encryption with a directory's ID as associated data."""

    def __init__(self, siv):
        self._siv = siv

    def stem(self, parent_id: bytes, name: bytes) -> str:
        padded = name + bytes(-len(name) % NAME_PAD)
        return b32encode(self._siv.encrypt(padded, [parent_id]))

    def decrypt_stem(self, parent_id: bytes, stem: str) -> bytes:
        try:
            plain = self._siv.decrypt(b32decode(stem), [parent_id])
        except (InvalidTag, ValueError) as exc:
            raise CorruptData("name failed authentication") from exc
        name = plain.rstrip(b"\0")
        try:
            check_name(name)
        except (ValueError, OverflowError) as exc:
            raise CorruptData("name decrypts to an invalid file name") from exc
        return name

    def backing_name(self, parent_id: bytes, name: bytes, kind: Kind, dir_id: bytes | None = None) -> tuple[str, str | None]:
        """(backing name, long stem to keep in a side record or None)."""
        stem = self.stem(parent_id, name)
        suffix = kind_suffix(kind, dir_id)
        if len(stem) + len(suffix) <= MAX_BACKING_NAME:
            return stem + suffix, None
        short = long_stem_name(stem)
        return short + suffix, stem


def long_stem_name(stem: str) -> str:
    return LONG_PREFIX + b32encode(hashlib.sha256(stem.encode("ascii")).digest())
