"""The 64-digit key text form, HKDF subkeys and the AEAD/MAC wrappers."""

import pytest

from e2efs import crypto
from e2efs.crypto import Keys, format_recovery_key, parse_recovery_key
from e2efs.errors import BadKeyFormat
from e2efs.vault import LABEL_KEY_CHECK, SLOT_AAD

from vaultutil import FIXED_K

FIXED_TEXT = "0001 0203 0405 0607 0809 0a0b 0c0d 0e0f 1011 1213 1415 1617 1819 1a1b 1c1d 1e1f"


def test_format_is_16_groups_of_4_lowercase_hex():
    assert format_recovery_key(FIXED_K) == FIXED_TEXT
    text = format_recovery_key(bytes([0xAB]) * 32)
    assert text == " ".join(["abab"] * 16)


@pytest.mark.parametrize("text", [
    FIXED_TEXT,
    FIXED_TEXT.upper(),
    FIXED_TEXT.replace(" ", ""),
    FIXED_TEXT.replace(" ", "-"),
    "  " + FIXED_TEXT.replace(" ", "\n") + "\n",
    FIXED_TEXT.replace(" ", " - \t"),
])
def test_parse_tolerates_case_spaces_dashes(text):
    assert parse_recovery_key(text) == FIXED_K


@pytest.mark.parametrize("text", [
    "",
    FIXED_TEXT[:-1],                       # 63 digits
    FIXED_TEXT + "0",                      # 65 digits
    FIXED_TEXT.replace("0a0b", "0g0b"),    # not hex
    FIXED_TEXT.replace(" ", "_"),          # other separators
    FIXED_TEXT.replace(" ", ":"),
    "0x" + FIXED_TEXT.replace(" ", "")[2:],
    FIXED_TEXT.replace("1e1f", "1e1f\u0661"),  # a non-ASCII digit
])
def test_parse_rejects_everything_else(text):
    with pytest.raises(BadKeyFormat) as err:
        parse_recovery_key(text)
    assert "64" in str(err.value)


def test_parse_error_never_echoes_the_input():
    secret = "deadbeef" * 7 + "deadbee"
    with pytest.raises(BadKeyFormat) as err:
        parse_recovery_key(secret)
    assert "deadbee" not in str(err.value)


def test_round_trip_random_keys():
    for _ in range(50):
        k = crypto.new_master_key()
        assert len(k) == 32
        assert parse_recovery_key(format_recovery_key(k)) == k


def test_labels_are_distinct_and_give_distinct_keys():
    labels = [crypto.LABEL_NAMES, crypto.LABEL_VAULT_MAC, LABEL_KEY_CHECK, SLOT_AAD,
              crypto.LABEL_FILE + bytes(16)]
    assert len(set(labels)) == len(labels)
    derived = {crypto.hkdf(FIXED_K, label) for label in labels}
    assert len(derived) == len(labels)


def test_file_keys_depend_on_file_id():
    keys = Keys(FIXED_K)
    a, b = keys.file_aead(bytes(16)), keys.file_aead(bytes(15) + b"\1")
    nonce = bytes(12)
    assert a.encrypt(nonce, b"x", b"") != b.encrypt(nonce, b"x", b"")


def test_keys_rejects_wrong_length_and_wipes():
    with pytest.raises(ValueError):
        Keys(bytes(31))
    keys = Keys(FIXED_K)
    keys.wipe()
    assert keys.master == bytes(32)
    assert keys.names is None and keys.vault_mac_key is None


def test_aead_open_fails_closed():
    key = crypto.hkdf(FIXED_K, b"test")
    nonce, sealed = crypto.aead_seal(key, b"secret", b"aad")
    assert crypto.aead_open(key, nonce, sealed, b"aad") == b"secret"
    assert crypto.aead_open(key, nonce, sealed, b"aaD") is None
    assert crypto.aead_open(key, nonce, bytes([sealed[0] ^ 1]) + sealed[1:], b"aad") is None
    assert crypto.aead_open(bytes(32), nonce, sealed, b"aad") is None


def test_mac_verify():
    tag = crypto.mac(b"k" * 32, b"data")
    assert crypto.mac_ok(b"k" * 32, b"data", tag)
    assert not crypto.mac_ok(b"k" * 32, b"datA", tag)
    assert not crypto.mac_ok(b"k" * 32, b"data", tag[:-1])


def test_argon2id_depends_on_every_input():
    base = dict(password=b"pw", salt=bytes(16), memory_kib=16, time_cost=1, parallelism=1)
    ref = crypto.argon2id(**base)
    assert len(ref) == 32
    for change in (dict(password=b"pW"), dict(salt=b"\1" * 16), dict(memory_kib=32),
                   dict(time_cost=2), dict(parallelism=2)):
        assert crypto.argon2id(**{**base, **change}) != ref
