"""Primitives: the master key, its 64-digit form, HKDF subkeys, Argon2id, AEAD wrap.

Everything above this module asks for keys by purpose (``Keys.names``,
``Keys.file_aead(file_id)``); no other module calls HKDF or picks labels.
"""

import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadKeyFormat, OutOfMemory

MASTER_KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16

LABEL_NAMES = b"e2efs v1 names"
LABEL_VAULT_MAC = b"e2efs v1 vault mac"
LABEL_FILE = b"e2efs v1 file "          # followed by the 16-byte file ID

# Defaults calibrated on the project's 2-core machines: ~1 s, 256 MiB (DESIGN §2.5).
ARGON2_MEMORY_KIB = 256 * 1024
ARGON2_TIME_COST = 5
ARGON2_PARALLELISM = 4


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_LEN)


def hkdf(key: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)


def format_recovery_key(master: bytes) -> str:
    """K as 64 lowercase hex digits in 16 groups of 4, WhatsApp style."""
    digits = master.hex()
    return " ".join(digits[i:i + 4] for i in range(0, len(digits), 4))


_KEY_SEPARATORS = re.compile(r"[\s\-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_recovery_key(text: str) -> bytes:
    digits = _KEY_SEPARATORS.sub("", text).lower()
    if not _HEX64.fullmatch(digits):
        raise BadKeyFormat(
            f"not a 64-digit key: expected 64 hex digits (0-9, a-f), got {len(digits)} "
            "characters after removing spaces and dashes"
        )
    return bytes.fromhex(digits)


def argon2id(password: bytes, salt: bytes, memory_kib: int, time_cost: int, parallelism: int) -> bytes:
    import argon2.exceptions
    import argon2.low_level            # imported when a password is used, not by every command

    try:
        return argon2.low_level.hash_secret_raw(
            password, salt, time_cost=time_cost, memory_cost=memory_kib,
            parallelism=parallelism, hash_len=32, type=argon2.low_level.Type.ID,
        )
    except argon2.exceptions.HashingError as exc:
        # valid costs fail only for want of resources (a vault's own setting may ask
        # up to 16 GiB): memory, or the threads for its lanes, that the system or the
        # process's limits refuse
        raise OutOfMemory(f"the password's key derivation could not get its memory or threads "
                          f"(Argon2id, {memory_kib // 1024} MiB, {parallelism} lanes: {exc}); free "
                          "memory, or unlock with the 64-digit key") from None


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a fresh random nonce; returns (nonce, ciphertext||tag)."""
    nonce = os.urandom(NONCE_LEN)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """None when authentication fails: callers decide what that means."""
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None


def mac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def mac_ok(key: bytes, data: bytes, tag: bytes) -> bool:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    try:
        h.verify(tag)
        return True
    except Exception:
        return False


class Keys:
    """The unlocked master key and the subkeys derived from it, by purpose."""

    def __init__(self, master: bytes):
        if len(master) != MASTER_KEY_LEN:
            raise ValueError("master key must be 32 bytes")
        self._master = bytearray(master)
        self.names = AESSIV(hkdf(master, LABEL_NAMES, 64))
        self.vault_mac_key = hkdf(master, LABEL_VAULT_MAC)

    @property
    def master(self) -> bytes:
        return bytes(self._master)

    def file_aead(self, file_id: bytes) -> AESGCM:
        return AESGCM(hkdf(self._master, LABEL_FILE + file_id))

    def wipe(self) -> None:
        """Overwrite the master key in place; derived objects are dropped."""
        for i in range(len(self._master)):
            self._master[i] = 0
        self.names = None
        self.vault_mac_key = None
