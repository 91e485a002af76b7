"""The vault file: format parameters and key slots, authenticated with K.

Two identical copies sit at the vault root (``VAULT_FILE`` and
``VAULT_BACKUP``) so that losing or damaging one loses nothing.  The file is
JSON; its ``mac`` is HMAC-SHA256 under a K-derived key over the canonical JSON
of everything else, so no parameter (version, block size, KDF cost, slots) can
be changed without detection.  ``key_check`` tells a wrong 64-digit key apart
from a tampered file.
"""

import base64
import hmac
import json
import os
from dataclasses import dataclass, field

from . import crypto
from .blocks import HEADER_LEN, Layout
from .content import Header
from .crypto import Keys
from .errors import CorruptData, VaultCorrupt, VaultNotFound, VaultTooNew, WrongSecret, IOFailure, NoSpace
from .names import Kind, parse_backing_name

VAULT_FILE = "e2efs.vault"
VAULT_BACKUP = "e2efs.vault.bak"
FORMAT_NAME = "e2efs"
FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
LABEL_KEY_CHECK = b"e2efs v1 key check"
SLOT_AAD = b"e2efs v1 password slot"
SALT_LEN = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def canonical_json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def key_check(master: bytes) -> bytes:
    return crypto.hkdf(master, LABEL_KEY_CHECK, 16)


@dataclass
class KdfParams:
    memory_kib: int = crypto.ARGON2_MEMORY_KIB
    time_cost: int = crypto.ARGON2_TIME_COST
    parallelism: int = crypto.ARGON2_PARALLELISM


@dataclass
class PasswordSlot:
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes

    @classmethod
    def wrap(cls, master: bytes, password: bytes, kdf: KdfParams) -> "PasswordSlot":
        salt = os.urandom(SALT_LEN)
        kek = crypto.argon2id(password, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism)
        nonce, wrapped = crypto.aead_seal(kek, master, SLOT_AAD)
        return cls(kdf, salt, nonce, wrapped)

    def unwrap(self, password: bytes) -> bytes | None:
        kek = crypto.argon2id(password, self.salt, self.kdf.memory_kib, self.kdf.time_cost, self.kdf.parallelism)
        return crypto.aead_open(kek, self.nonce, self.wrapped, SLOT_AAD)

    def to_json(self) -> dict:
        return {
            "type": "password", "kdf": "argon2id",
            "memory_kib": self.kdf.memory_kib, "time_cost": self.kdf.time_cost,
            "parallelism": self.kdf.parallelism,
            "salt": _b64(self.salt), "nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped),
        }

    @classmethod
    def from_json(cls, doc: dict) -> "PasswordSlot":
        if doc.get("type") != "password" or doc.get("kdf") != "argon2id":
            raise ValueError("unknown slot type")
        kdf = KdfParams(*(_positive_int(doc[k]) for k in ("memory_kib", "time_cost", "parallelism")))
        return cls(kdf, _unb64(doc["salt"]), _unb64(doc["nonce"]), _unb64(doc["wrapped_key"]))


def _positive_int(value) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError("expected a positive integer")
    return value


@dataclass
class VaultFile:
    """The parsed, not yet authenticated, content of one vault file copy."""
    version: int
    block_size: int
    key_check: bytes
    slots: list[PasswordSlot] = field(default_factory=list)
    mac: bytes = b""

    def body(self) -> dict:
        return {
            "format": FORMAT_NAME, "version": self.version, "block_size": self.block_size,
            "key_check": _b64(self.key_check), "slots": [s.to_json() for s in self.slots],
        }

    def serialize(self, keys: Keys) -> bytes:
        body = self.body()
        self.mac = crypto.mac(keys.vault_mac_key, canonical_json(body))
        body["mac"] = _b64(self.mac)
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("ascii")

    def authentic(self, keys: Keys) -> bool:
        return crypto.mac_ok(keys.vault_mac_key, canonical_json(self.body()), self.mac)

    @classmethod
    def parse(cls, raw: bytes, label: str) -> "VaultFile":
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise VaultCorrupt(f"{label} is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise VaultCorrupt(f"{label} is not an e2efs vault file")
        version = doc.get("version")
        if type(version) is not int:
            raise VaultCorrupt(f"{label} has no format version")
        if version > FORMAT_VERSION:
            raise VaultTooNew(
                f"{label} has format version {version}; this e2efs reads up to version "
                f"{FORMAT_VERSION}: upgrade e2efs to open it"
            )
        try:
            if version != FORMAT_VERSION:
                raise ValueError(f"unknown format version {version}")
            block_size = _positive_int(doc["block_size"])
            Layout(block_size)
            slots = [PasswordSlot.from_json(s) for s in doc["slots"]]
            vf = cls(version, block_size, _unb64(doc["key_check"]), slots, _unb64(doc["mac"]))
            extra = set(doc) - set(vf.body()) - {"mac"}
            if extra:
                raise ValueError(f"unknown fields {sorted(extra)}")
            return vf
        except (KeyError, TypeError, ValueError) as exc:
            raise VaultCorrupt(f"{label} is damaged: {exc}") from None


class Vault:
    """An unlocked vault: its root folder, its parameters and its keys."""

    def __init__(self, root: str, file: VaultFile, keys: Keys, warnings: list[str]):
        self.root = root
        self.file = file
        self.keys = keys
        self.warnings = warnings

    @property
    def block_size(self) -> int:
        return self.file.block_size

    @classmethod
    def create(cls, root: str, master: bytes, password: bytes | None, block_size: int = DEFAULT_BLOCK_SIZE,
               kdf: KdfParams | None = None) -> "Vault":
        Layout(block_size)
        keys = Keys(master)
        slots = [PasswordSlot.wrap(master, password, kdf or KdfParams())] if password is not None else []
        vault = cls(root, VaultFile(FORMAT_VERSION, block_size, key_check(master), slots), keys, [])
        vault.save()
        return vault

    def save(self) -> None:
        """Write both copies, each atomically (temp file, fsync, rename)."""
        data = self.file.serialize(self.keys)
        for name in (VAULT_FILE, VAULT_BACKUP):
            atomic_write(os.path.join(self.root, name), data)

    @classmethod
    def locked(cls, root: str) -> "LockedVault":
        return LockedVault.read(root)


class LockedVault:
    """Both copies of the vault file as found on disk, before any secret is given."""

    def __init__(self, root: str, copies: list[VaultFile], damaged: list[str]):
        self.root = root
        self.copies = copies
        self.damaged = damaged

    @classmethod
    def read(cls, root: str) -> "LockedVault":
        if not os.path.isdir(root):
            raise VaultNotFound(f"no vault at {root}: not a directory")
        copies, damaged, errors = [], [], []
        for name in (VAULT_FILE, VAULT_BACKUP):
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read(1 << 20)
            except FileNotFoundError:
                damaged.append(f"{name} is missing")
                continue
            except OSError as exc:
                raise IOFailure(f"cannot read {path}: {exc.strerror}") from None
            try:
                copies.append(VaultFile.parse(raw, path))
            except VaultTooNew:
                raise
            except VaultCorrupt as exc:
                damaged.append(str(exc))
                errors.append(exc)
        if not copies:
            if errors:
                raise errors[0]
            raise VaultNotFound(f"no vault at {root}: {VAULT_FILE} not found (create one with 'e2efs init')")
        return cls(root, copies, damaged)

    @property
    def has_password(self) -> bool:
        return any(c.slots for c in self.copies)

    @property
    def block_size(self) -> int:
        return self.copies[0].block_size

    def unlock_with_password(self, password: bytes) -> Vault:
        tried = set()
        for copy in self.copies:
            for slot in copy.slots:
                fingerprint = (slot.salt, slot.nonce, slot.wrapped)
                if fingerprint in tried:
                    continue
                tried.add(fingerprint)
                master = slot.unwrap(password)
                if master is not None:
                    return self._open(master)
        if not tried:
            raise WrongSecret("this vault has no password: unlock it with its 64-digit key (--key-file)")
        raise WrongSecret("wrong password")

    def unlock_with_key(self, master: bytes) -> Vault:
        expected = key_check(master)
        if not any(hmac.compare_digest(c.key_check, expected) for c in self.copies):
            raise WrongSecret("wrong key: this 64-digit key does not belong to this vault")
        return self._open(master)

    def _open(self, master: bytes) -> Vault:
        keys = Keys(master)
        warnings = list(self.damaged)
        good = [c for c in self.copies if c.authentic(keys)]
        for c in self.copies:
            if c not in good:
                warnings.append("a vault file copy fails authentication (modified or damaged)")
        if not good:
            raise VaultCorrupt(
                f"vault file in {self.root} fails authentication: its parameters were modified; refusing to use it"
            )
        return Vault(self.root, good[0], keys, warnings)


def open_with_key_only(root: str, master: bytes) -> Vault:
    """For restores where both vault files are lost: K alone opens the tree."""
    keys = Keys(master)
    return Vault(root, VaultFile(FORMAT_VERSION, _block_size_from_files(root), key_check(master)), keys,
                 ["no vault file found: opening the tree with the key alone (read-only use)"])


def _block_size_from_files(root: str) -> int:
    """The block size recorded in the first readable content header (the vault file that
    held it is lost); a forged header only makes that file fail authentication."""
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            parsed = parse_backing_name(name)
            if parsed is None or parsed.kind is Kind.DIR:
                continue
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    return Header.parse(f.read(HEADER_LEN), name).layout.block_size
            except (OSError, CorruptData):
                continue
    return DEFAULT_BLOCK_SIZE


def atomic_write(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.urandom(6).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno == 28:
            raise NoSpace(f"no space left writing {path}") from None
        raise IOFailure(f"cannot write {path}: {exc.strerror}") from None
