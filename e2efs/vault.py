"""The vault file: format parameters and key slots, authenticated with K.

Two identical copies sit at the vault root (``VAULT_FILE`` and
``VAULT_BACKUP``) so that losing or damaging one loses nothing.  The file is
JSON; its ``mac`` is HMAC-SHA256 under a K-derived key over the canonical JSON
of everything else, so no parameter (version, block size, KDF cost, slots) can
be changed without detection.  ``key_check`` tells a wrong 64-digit key apart
from a tampered file.
"""

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

from . import crypto
from .blocks import HEADER_LEN, Layout
from .content import Header
from .crypto import Keys
from .errors import (CorruptData, IOFailure, NoSpace, NotFoundInVault, RekeyInProgress, VaultCorrupt, VaultNotFound,
                     VaultTooNew, WrongSecret)
from .names import Kind, parse_backing_name

VAULT_FILE = "e2efs.vault"
VAULT_BACKUP = "e2efs.vault.bak"
FORMAT_NAME = "e2efs"
FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
LABEL_KEY_CHECK = b"e2efs v1 key check"
SLOT_AAD = b"e2efs v1 password slot"
KEYFILE_SLOT_AAD = b"e2efs v1 keyfile slot"
LABEL_KEYFILE_SLOT = b"e2efs v1 keyfile kek "    # followed by the slot salt
SALT_LEN = 16
MAX_KDF_MEMORY_KIB = 16 << 20       # 16 GiB
MAX_KDF_TIME_COST = 1000
MAX_KDF_PARALLELISM = 64
LABEL_REKEY_KEK = b"e2efs v1 rekey kek"
REKEY_AAD = b"e2efs v1 rekey"


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

    def problem(self) -> str | None:
        """Why these cannot be used: Argon2id's own minimum, or past the bounds a
        reader accepts, so that a tampered vault file (read before its MAC can be
        checked) cannot make the unlock take all memory or run for days."""
        if not 1 <= self.parallelism <= MAX_KDF_PARALLELISM:
            return f"Argon2id parallelism must be 1 to {MAX_KDF_PARALLELISM}"
        if not 8 * self.parallelism <= self.memory_kib <= MAX_KDF_MEMORY_KIB:
            return f"Argon2id memory must be 8 KiB per lane to {MAX_KDF_MEMORY_KIB // (1 << 20)} GiB"
        if not 1 <= self.time_cost <= MAX_KDF_TIME_COST:
            return f"Argon2id time cost must be 1 to {MAX_KDF_TIME_COST}"
        return None


@dataclass
class PasswordSlot:
    """K wrapped under Argon2id(password)."""
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes
    TYPE = "password"

    @classmethod
    def wrap(cls, master: bytes, password: bytes, kdf: KdfParams) -> "PasswordSlot":
        salt = os.urandom(SALT_LEN)
        nonce, wrapped = crypto.aead_seal(cls._kek(password, salt, kdf), master, SLOT_AAD)
        return cls(kdf, salt, nonce, wrapped)

    @staticmethod
    def _kek(password: bytes, salt: bytes, kdf: KdfParams) -> bytes:
        return crypto.argon2id(password, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism)

    def unwrap(self, password: bytes) -> bytes | None:
        return crypto.aead_open(self._kek(password, self.salt, self.kdf), self.nonce, self.wrapped, SLOT_AAD)

    @property
    def id(self) -> str:
        """A short stable name for ``e2efs key list/remove``, derived from the salt."""
        return hashlib.sha256(self.salt).hexdigest()[:8]

    def describe(self) -> str:
        return (f"password (Argon2id, {self.kdf.memory_kib // 1024} MiB, time cost {self.kdf.time_cost}, "
                f"{self.kdf.parallelism} lanes)")

    def to_json(self) -> dict:
        return {
            "type": "password", "kdf": "argon2id",
            "memory_kib": self.kdf.memory_kib, "time_cost": self.kdf.time_cost,
            "parallelism": self.kdf.parallelism,
            "salt": _b64(self.salt), "nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped),
        }

    @classmethod
    def from_json(cls, doc: dict) -> "PasswordSlot":
        if doc.get("kdf") != "argon2id":
            raise ValueError("unknown password KDF")
        kdf = KdfParams(*(_positive_int(doc[k]) for k in ("memory_kib", "time_cost", "parallelism")))
        if why := kdf.problem():
            raise ValueError(why)
        return cls(kdf, *_salt_nonce_wrapped(doc))


@dataclass
class KeyFileSlot:
    """K wrapped under HKDF(key file content): a high-entropy file needs no slow KDF."""
    salt: bytes
    nonce: bytes
    wrapped: bytes
    TYPE = "keyfile"

    @classmethod
    def wrap(cls, master: bytes, secret: bytes) -> "KeyFileSlot":
        salt = os.urandom(SALT_LEN)
        nonce, wrapped = crypto.aead_seal(cls._kek(secret, salt), master, KEYFILE_SLOT_AAD)
        return cls(salt, nonce, wrapped)

    @staticmethod
    def _kek(secret: bytes, salt: bytes) -> bytes:
        return crypto.hkdf(secret, LABEL_KEYFILE_SLOT + salt)

    def unwrap(self, secret: bytes) -> bytes | None:
        return crypto.aead_open(self._kek(secret, self.salt), self.nonce, self.wrapped, KEYFILE_SLOT_AAD)

    id = PasswordSlot.id

    def describe(self) -> str:
        return "key file"

    def to_json(self) -> dict:
        return {"type": "keyfile", "kdf": "hkdf-sha256", "salt": _b64(self.salt), "nonce": _b64(self.nonce),
                "wrapped_key": _b64(self.wrapped)}

    @classmethod
    def from_json(cls, doc: dict) -> "KeyFileSlot":
        if doc.get("kdf") != "hkdf-sha256":
            raise ValueError("unknown key file KDF")
        return cls(*_salt_nonce_wrapped(doc))


def _salt_nonce_wrapped(doc: dict) -> tuple[bytes, bytes, bytes]:
    salt, nonce, wrapped = _unb64(doc["salt"]), _unb64(doc["nonce"]), _unb64(doc["wrapped_key"])
    if len(salt) != SALT_LEN or len(nonce) != crypto.NONCE_LEN:
        raise ValueError("a key slot's salt or nonce has the wrong length")
    return salt, nonce, wrapped


SLOT_TYPES = {cls.TYPE: cls for cls in (PasswordSlot, KeyFileSlot)}


def slot_from_json(doc) -> PasswordSlot | KeyFileSlot:
    if not isinstance(doc, dict) or doc.get("type") not in SLOT_TYPES:
        raise ValueError("unknown slot type")
    return SLOT_TYPES[doc["type"]].from_json(doc)


def _positive_int(value) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError("expected a positive integer")
    return value


@dataclass
class RekeyState:
    """Present only while ``e2efs rekey`` runs: the new master key K' wrapped under
    a key derived from the current K, so any secret that opens K can resume."""
    nonce: bytes
    wrapped: bytes

    @classmethod
    def wrap(cls, master: bytes, new_master: bytes) -> "RekeyState":
        nonce, wrapped = crypto.aead_seal(crypto.hkdf(master, LABEL_REKEY_KEK), new_master, REKEY_AAD)
        return cls(nonce, wrapped)

    def unwrap(self, master: bytes) -> bytes | None:
        return crypto.aead_open(crypto.hkdf(master, LABEL_REKEY_KEK), self.nonce, self.wrapped, REKEY_AAD)

    def to_json(self) -> dict:
        return {"nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped)}

    @classmethod
    def from_json(cls, doc) -> "RekeyState":
        if not isinstance(doc, dict) or set(doc) != {"nonce", "wrapped_key"}:
            raise ValueError("malformed rekey field")
        state = cls(_unb64(doc["nonce"]), _unb64(doc["wrapped_key"]))
        if len(state.nonce) != crypto.NONCE_LEN or len(state.wrapped) != crypto.MASTER_KEY_LEN + crypto.TAG_LEN:
            raise ValueError("malformed rekey field")
        return state


@dataclass
class VaultFile:
    """The parsed, not yet authenticated, content of one vault file copy."""
    version: int
    block_size: int
    key_check: bytes
    slots: list = field(default_factory=list)     # PasswordSlot | KeyFileSlot
    mac: bytes = b""
    rekey: RekeyState | None = None

    def body(self) -> dict:
        body = {
            "format": FORMAT_NAME, "version": self.version, "block_size": self.block_size,
            "key_check": _b64(self.key_check), "slots": [s.to_json() for s in self.slots],
        }
        if self.rekey is not None:
            body["rekey"] = self.rekey.to_json()
        return body

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
        except (ValueError, UnicodeDecodeError, RecursionError):
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
            slots = [slot_from_json(s) for s in doc["slots"]]
            rekey = RekeyState.from_json(doc["rekey"]) if "rekey" in doc else None
            vf = cls(version, block_size, _unb64(doc["key_check"]), slots, _unb64(doc["mac"]), rekey)
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
        self.unlocked_slot: str | None = None      # the slot id that opened it; None for the 64-digit key

    @property
    def slots(self) -> list:
        return self.file.slots

    def slot(self, slot_id: str):
        for slot in self.file.slots:
            if slot.id == slot_id:
                return slot
        raise NotFoundInVault(f"no key slot {slot_id!r} (see 'e2efs key list')")

    def add_password(self, password: bytes, kdf: KdfParams | None = None) -> PasswordSlot:
        slot = PasswordSlot.wrap(self.keys.master, password, kdf or KdfParams())
        self.file.slots.append(slot)
        self.save()
        return slot

    def add_keyfile(self, secret: bytes) -> KeyFileSlot:
        slot = KeyFileSlot.wrap(self.keys.master, secret)
        self.file.slots.append(slot)
        self.save()
        return slot

    def remove_slot(self, slot_id: str) -> None:
        self.file.slots.remove(self.slot(slot_id))
        self.save()

    def replace_password(self, slot_id: str | None, password: bytes, kdf: KdfParams | None = None) -> PasswordSlot:
        """Rewrap K under a new password in place of ``slot_id`` (or as a new slot)."""
        new = PasswordSlot.wrap(self.keys.master, password, kdf or KdfParams())
        slots = self.file.slots
        if slot_id is None:
            slots.append(new)
        else:
            slots[slots.index(self.slot(slot_id))] = new
        self.save()
        return new

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
            except IsADirectoryError:       # a copy lost to a sync client's mix-up, like a damaged one
                errors.append(VaultCorrupt(f"{path} is a folder, not a vault file (move it away: "
                                           "'e2efs fsck --repair' then rewrites the copy)"))
                damaged.append(str(errors[-1]))
                continue
            except OSError as exc:
                raise IOFailure(f"cannot read {path}: {exc.strerror}") from None
            try:
                copies.append(VaultFile.parse(raw, path))
            except (VaultTooNew, VaultCorrupt) as exc:
                damaged.append(str(exc))
                errors.append(exc)
        if not copies:
            if errors:      # a newer version explains more than a damaged copy beside it
                raise next((e for e in errors if isinstance(e, VaultTooNew)), errors[0])
            raise VaultNotFound(f"no vault at {root}: {VAULT_FILE} not found (create one with 'e2efs init')")
        return cls(root, copies, damaged)

    @property
    def has_password(self) -> bool:
        return any(isinstance(slot, PasswordSlot) for c in self.copies for slot in c.slots)

    @property
    def has_keyfile(self) -> bool:
        return any(isinstance(slot, KeyFileSlot) for c in self.copies for slot in c.slots)

    @property
    def block_size(self) -> int:
        return self.copies[0].block_size

    def unlock_with_password(self, password: bytes, allow_rekey: bool = False) -> Vault:
        return self._unlock_slot(PasswordSlot, password, "wrong password",
                                 "this vault has no password: unlock it with its 64-digit key (--key-file)",
                                 allow_rekey)

    def unlock_with_keyfile(self, secret: bytes, allow_rekey: bool = False) -> Vault:
        return self._unlock_slot(KeyFileSlot, secret, "wrong key file",
                                 "not a 64-digit key, and this vault has no key-file slot", allow_rekey)

    def _unlock_slot(self, slot_type, secret: bytes, wrong: str, none: str, allow_rekey: bool) -> Vault:
        tried = set()
        for copy in self.copies:
            for slot in copy.slots:
                if not isinstance(slot, slot_type) or slot.id in tried:
                    continue
                tried.add(slot.id)
                master = slot.unwrap(secret)
                if master is not None:
                    vault = self._open(master, allow_rekey)
                    vault.unlocked_slot = slot.id
                    return vault
        raise WrongSecret(wrong if tried else none)

    def unlock_with_key(self, master: bytes, allow_rekey: bool = False) -> Vault:
        expected = key_check(master)
        if not any(hmac.compare_digest(c.key_check, expected) for c in self.copies):
            raise WrongSecret("wrong key: this 64-digit key does not belong to this vault")
        return self._open(master, allow_rekey)

    def _open(self, master: bytes, allow_rekey: bool = False) -> Vault:
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
        if good[0].rekey is not None and not allow_rekey:
            raise RekeyInProgress(
                f"an interrupted 'e2efs rekey' has not finished in {self.root}: run 'e2efs rekey {self.root}' "
                "again with the same secret to finish it")
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


def fsync_dir(path: str) -> None:
    """A rename or unlink is durable only once its directory is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        fsync_dir(directory or ".")
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno == 28:
            raise NoSpace(f"no space left writing {path}") from None
        raise IOFailure(f"cannot write {path}: {exc.strerror}") from None
