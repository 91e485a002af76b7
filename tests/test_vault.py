"""The vault file: unlocking, wrong secrets, tampered parameters, damaged copies."""

import json
import os

import pytest

from e2efs.errors import VaultCorrupt, VaultNotFound, VaultTooNew, WrongSecret
from e2efs.vault import (
    FORMAT_VERSION, VAULT_BACKUP, VAULT_FILE, LockedVault, Vault, canonical_json, open_with_key_only,
)

from vaultutil import FIXED_K, PASSWORD, edit_vault_json, make_vault

OTHER_K = bytes(range(1, 33))


@pytest.fixture
def vault_dir(tmp_path):
    make_vault(tmp_path)
    return tmp_path


def locked(root) -> LockedVault:
    return Vault.locked(str(root))


def test_create_writes_two_identical_copies_and_no_temp(vault_dir):
    assert sorted(os.listdir(vault_dir)) == [VAULT_FILE, VAULT_BACKUP]
    a, b = ((vault_dir / n).read_bytes() for n in (VAULT_FILE, VAULT_BACKUP))
    assert a == b
    doc = json.loads(a)
    assert set(doc) == {"format", "version", "block_size", "key_check", "mac", "slots"}
    assert doc["format"] == "e2efs" and doc["version"] == FORMAT_VERSION and doc["block_size"] == 4096
    assert FIXED_K.hex() not in a.decode() and PASSWORD.decode() not in a.decode()


def test_unlock_with_password_and_key(vault_dir):
    lv = locked(vault_dir)
    assert lv.has_password and lv.block_size == 4096
    for v in (lv.unlock_with_password(PASSWORD), lv.unlock_with_key(FIXED_K)):
        assert v.keys.master == FIXED_K and v.block_size == 4096 and v.warnings == []


def test_wrong_password(vault_dir):
    with pytest.raises(WrongSecret, match="wrong password"):
        locked(vault_dir).unlock_with_password(PASSWORD + b"!")


def test_wrong_key(vault_dir):
    with pytest.raises(WrongSecret, match="wrong key"):
        locked(vault_dir).unlock_with_key(OTHER_K)


def test_wrong_secret_changes_nothing(vault_dir):
    before = {n: (vault_dir / n).read_bytes() for n in os.listdir(vault_dir)}
    for attempt in (lambda lv: lv.unlock_with_password(b"nope"), lambda lv: lv.unlock_with_key(OTHER_K)):
        with pytest.raises(WrongSecret):
            attempt(locked(vault_dir))
    assert {n: (vault_dir / n).read_bytes() for n in os.listdir(vault_dir)} == before


def test_key_only_vault(tmp_path):
    make_vault(tmp_path, password=None)
    lv = locked(tmp_path)
    assert not lv.has_password
    with pytest.raises(WrongSecret, match="no password"):
        lv.unlock_with_password(PASSWORD)
    assert lv.unlock_with_key(FIXED_K).keys.master == FIXED_K


def test_mac_is_over_canonical_json_of_all_but_mac(vault_dir):
    import hmac, hashlib, base64
    from e2efs.crypto import hkdf, LABEL_VAULT_MAC
    doc = json.loads((vault_dir / VAULT_FILE).read_bytes())
    tag = base64.b64decode(doc.pop("mac"))
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert body == canonical_json(doc)
    assert hmac.new(hkdf(FIXED_K, LABEL_VAULT_MAC), body, hashlib.sha256).digest() == tag


@pytest.mark.parametrize("field,value", [
    ("block_size", 8192),
    ("block_size", 1 << 20),
    ("key_check", "AAAAAAAAAAAAAAAAAAAAAA=="),
])
@pytest.mark.parametrize("unlock", ["password", "key"])
def test_modified_parameters_are_detected(vault_dir, field, value, unlock):
    edit_vault_json(vault_dir, lambda d: d.__setitem__(field, value))
    lv = locked(vault_dir)
    with pytest.raises((VaultCorrupt, WrongSecret)) as err:
        lv.unlock_with_password(PASSWORD) if unlock == "password" else lv.unlock_with_key(FIXED_K)
    if field == "block_size":
        assert err.type is VaultCorrupt


@pytest.mark.parametrize("param,value", [("memory_kib", 1024), ("time_cost", 2), ("parallelism", 2)])
def test_modified_kdf_cost_is_detected(vault_dir, param, value):
    """A lowered (or raised) KDF cost makes the slot unopenable and fails the MAC:
    it can never take effect."""
    edit_vault_json(vault_dir, lambda d: d["slots"][0].__setitem__(param, value))
    with pytest.raises(WrongSecret):
        locked(vault_dir).unlock_with_password(PASSWORD)
    with pytest.raises(VaultCorrupt, match="fails authentication"):
        locked(vault_dir).unlock_with_key(FIXED_K)


def test_removed_slot_is_detected(vault_dir):
    edit_vault_json(vault_dir, lambda d: d.__setitem__("slots", []))
    with pytest.raises(VaultCorrupt):
        locked(vault_dir).unlock_with_key(FIXED_K)


@pytest.mark.parametrize("version", [0, -1])
def test_older_or_bogus_version_is_corrupt(vault_dir, version):
    edit_vault_json(vault_dir, lambda d: d.__setitem__("version", version))
    with pytest.raises(VaultCorrupt):
        locked(vault_dir)


def test_newer_version_is_refused_clearly(vault_dir):
    edit_vault_json(vault_dir, lambda d: d.__setitem__("version", 2))
    with pytest.raises(VaultTooNew, match="version 2.*upgrade"):
        locked(vault_dir)


@pytest.mark.parametrize("edit", [
    lambda d: d.__setitem__("extra", 1),
    lambda d: d.pop("key_check"),
    lambda d: d.__setitem__("block_size", "4096"),
    lambda d: d.__setitem__("block_size", 3000),
    lambda d: d.__setitem__("mac", "!!"),
    lambda d: d["slots"][0].__setitem__("kdf", "scrypt"),
    lambda d: d["slots"][0].__setitem__("memory_kib", True),
    lambda d: d.__setitem__("format", "gocryptfs"),
    lambda d: d.__setitem__("slots", "abc"),
    lambda d: d.__setitem__("slots", [[1]]),
    lambda d: d.__setitem__("slots", {"type": "password"}),
    lambda d: d.__setitem__("key_check", 5),
])
def test_malformed_fields_are_corrupt(vault_dir, edit):
    edit_vault_json(vault_dir, edit)
    with pytest.raises(VaultCorrupt):
        locked(vault_dir)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[]", b'"e2efs"', b"null"])
def test_corrupt_json(vault_dir, content):
    for name in (VAULT_FILE, VAULT_BACKUP):
        (vault_dir / name).write_bytes(content)
    with pytest.raises(VaultCorrupt):
        locked(vault_dir)


@pytest.mark.parametrize("field,value", [("salt", ""), ("nonce", ""), ("memory_kib", 1), ("parallelism", 99999999),
                                         ("time_cost", 2**40), ("memory_kib", 2**40)])
def test_a_key_slot_out_of_bounds_is_a_damaged_vault_file(vault_dir, field, value):
    """The KDF runs on these before the MAC can be checked: a tampered value is
    refused, not handed to Argon2id (a traceback, or all the machine's memory)."""
    edit_vault_json(vault_dir, lambda d: d["slots"][0].__setitem__(field, value))
    with pytest.raises(VaultCorrupt):
        locked(vault_dir)


def test_missing_vault(tmp_path):
    with pytest.raises(VaultNotFound):
        locked(tmp_path / "nope")
    with pytest.raises(VaultNotFound, match="e2efs init"):
        locked(tmp_path)


@pytest.mark.parametrize("damaged", [VAULT_FILE, VAULT_BACKUP])
@pytest.mark.parametrize("how", ["delete", "garbage", "tamper"])
def test_one_damaged_copy_falls_back_with_a_warning(vault_dir, damaged, how):
    path = vault_dir / damaged
    if how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"\0" * 100)
    else:
        edit_vault_json(vault_dir, lambda d: d.__setitem__("block_size", 8192), names=[damaged])
    for v in (locked(vault_dir).unlock_with_password(PASSWORD), locked(vault_dir).unlock_with_key(FIXED_K)):
        assert v.block_size == 4096
        assert len(v.warnings) == 1
        v.save()            # a save repairs the damaged copy
    assert (vault_dir / VAULT_FILE).read_bytes() == (vault_dir / VAULT_BACKUP).read_bytes()


def test_key_alone_opens_without_vault_files(vault_dir):
    for name in (VAULT_FILE, VAULT_BACKUP):
        (vault_dir / name).unlink()
    v = open_with_key_only(str(vault_dir), FIXED_K)
    assert v.keys.master == FIXED_K and v.warnings


def test_key_alone_reads_a_vault_with_a_non_default_block_size(vault_dir):
    from e2efs.tree import Tree
    tree = Tree(locked(vault_dir).unlock_with_key(FIXED_K))
    sub = tree.subdir(tree.root, tree.mkdir(tree.root, b"d"))
    entry = tree.write_file(sub, b"f", [b"data"])
    for name in (VAULT_FILE, VAULT_BACKUP):
        (vault_dir / name).unlink()
    tree = Tree(open_with_key_only(str(vault_dir), FIXED_K))
    assert tree.read_all(tree.path(sub, entry)) == b"data"


def test_one_copy_claiming_a_newer_version_does_not_lock_the_vault(vault_dir):
    """Only a real upgrade rewrites both copies; a single edited copy is damage."""
    edit_vault_json(vault_dir, lambda d: d.__setitem__("version", 2), names=(VAULT_FILE,))
    vault = LockedVault.read(vault_dir).unlock_with_password(PASSWORD)
    assert any("version 2" in w for w in vault.warnings)
