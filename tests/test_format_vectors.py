"""The test vectors of docs/FORMAT.md, checked against the code and against an
independent implementation of the spec written here from FORMAT.md alone
(stdlib + ``cryptography`` primitives, no e2efs import)."""

import base64
import hashlib
import importlib.util
import json
import os
import re
import struct
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from e2efs.content import ContentFile, FileCipher, Header
from e2efs.crypto import Keys, format_recovery_key, parse_recovery_key
from e2efs.names import Kind, NameCipher, parse_backing_name
from e2efs.vault import PasswordSlot, VaultFile, canonical_json, key_check

ROOT = Path(__file__).resolve().parent.parent
FORMAT_MD = (ROOT / "docs" / "FORMAT.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"^```vector (\S+)\n(.*?)\n```$", re.M | re.S)


def parse_vectors(text: str) -> dict[str, dict[str, str]]:
    vectors = {}
    for name, body in _BLOCK.findall(text):
        fields = {}
        for line in body.splitlines():
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
        vectors[name] = fields
    return vectors


V = parse_vectors(FORMAT_MD)


def h(name: str, field: str) -> bytes:
    return bytes.fromhex(V[name][field])


# -- the spec, re-implemented -------------------------------------------------

def spec_hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def spec_b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def spec_stem(k: bytes, parent: bytes, name: bytes) -> str:
    padded = name + b"\0" * ((16 - len(name) % 16) % 16)
    return spec_b32(AESSIV(spec_hkdf(k, b"e2efs v1 names", 64)).encrypt(padded, [parent]))


def spec_backing_name(k: bytes, parent: bytes, name: bytes, kind: str, dir_id: bytes | None):
    """(backing name, side record content or None)."""
    stem = spec_stem(k, parent, name)
    suffix = "." + spec_b32(dir_id) if kind == "dir" else {"file": "", "symlink": ".l", "node": ".n"}[kind]
    if len(stem) + len(suffix) <= 220:
        return stem + suffix, None
    return "_" + spec_b32(hashlib.sha256(stem.encode("ascii")).digest()) + suffix, stem


def spec_content(k: bytes, file_id: bytes, block_size: int, plain: bytes, nonces) -> bytes:
    header = b"E2EF" + bytes([1, block_size.bit_length() - 1]) + b"\0\0" + file_id
    gcm = AESGCM(spec_hkdf(k, b"e2efs v1 file " + file_id, 32))
    n = max(1, -(-len(plain) // block_size))
    out = header
    for i in range(n):
        aad = header + i.to_bytes(8, "big") + bytes([i == n - 1])
        out += nonces[i] + gcm.encrypt(nonces[i], plain[i * block_size:(i + 1) * block_size], aad)
    return out


def spec_plaintext_size(c: int, block_size: int) -> int | None:
    q = c - 24
    if q < 28:
        return None
    full, rest = divmod(q, block_size + 28)
    p = full * block_size + max(0, rest - 28)
    return p if 24 + p + 28 * max(1, -(-p // block_size)) == c else None


def spec_decrypt(k: bytes, data: bytes, vault_block_size: int) -> bytes:
    magic, version, shift, reserved, file_id = struct.unpack(">4sBBH16s", data[:24])
    assert (magic, version, reserved) == (b"E2EF", 1, 0) and 1 << shift == vault_block_size
    bs = 1 << shift
    p = spec_plaintext_size(len(data), bs)
    assert p is not None
    gcm = AESGCM(spec_hkdf(k, b"e2efs v1 file " + file_id, 32))
    n = max(1, -(-p // bs))
    out = b""
    for i in range(n):
        blk = data[24 + i * (bs + 28):24 + (i + 1) * (bs + 28)]
        out += gcm.decrypt(blk[:12], blk[12:], data[:24] + struct.pack(">QB", i, i == n - 1))
    return out


def content_plaintext(v: dict) -> bytes:
    if "plaintext" in v:
        return bytes.fromhex(v["plaintext"])
    size = int(re.search(r"(\d+) bytes", v["plaintext_pattern"])[1])
    return bytes(i % 251 for i in range(size))


# -- the checks -----------------------------------------------------------------

def test_every_kind_of_vector_is_present():
    assert {"keys", "vault", "content-empty", "content-small", "content-two-blocks", "undo-record", "undo-record-v1",
            "name-long", "name-dir"} <= set(V)


def test_vectors_match_the_generator():
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert parse_vectors(module.render()) == V


def test_keys():
    v, k = V["keys"], h("keys", "master")
    assert format_recovery_key(k) == v["recovery_key"]
    assert parse_recovery_key(v["recovery_key"]) == k
    assert v["recovery_key"].replace(" ", "") == k.hex()
    assert spec_hkdf(k, b"e2efs v1 names", 64) == h("keys", "names_key")
    assert spec_hkdf(k, b"e2efs v1 vault mac", 32) == h("keys", "vault_mac_key") == Keys(k).vault_mac_key
    assert spec_hkdf(k, b"e2efs v1 key check", 16) == h("keys", "key_check") == key_check(k)
    file_id = h("keys", "file_id")
    assert spec_hkdf(k, b"e2efs v1 file " + file_id, 32) == h("keys", "file_key")
    nonce = bytes(12)
    assert Keys(k).file_aead(file_id).encrypt(nonce, b"", b"") == AESGCM(h("keys", "file_key")).encrypt(nonce, b"", b"")


NAME_VECTORS = sorted(n for n in V if n.startswith("name-"))


@pytest.mark.parametrize("label", NAME_VECTORS)
def test_names(label):
    v, k = V[label], h("keys", "master")
    parent, name = h(label, "parent_id"), h(label, "name_utf8")
    dir_id = bytes.fromhex(v["dir_id"]) if "dir_id" in v else None
    # the spec
    assert spec_stem(k, parent, name) == v["stem"]
    backing, side = spec_backing_name(k, parent, name, v["kind"], dir_id)
    assert backing == v["backing_name"]
    assert side == v.get("side_record_content")
    if side is not None:
        assert v["side_record_name"] == backing.split(".")[0] + ".name"
    # the code
    names = NameCipher(Keys(k).names)
    kind = Kind[v["kind"].upper()]
    assert names.backing_name(parent, name, kind, dir_id) == (v["backing_name"], v.get("side_record_content"))
    parsed = parse_backing_name(v["backing_name"])
    assert (parsed.kind, parsed.dir_id, parsed.conflict) == (kind, dir_id, "")
    assert names.decrypt_stem(parent, v.get("side_record_content", v["stem"])) == name


CONTENT_VECTORS = sorted(n for n in V if n.startswith("content-"))


@pytest.mark.parametrize("label", CONTENT_VECTORS)
def test_content(label, tmp_path):
    v, k = V[label], h("keys", "master")
    bs, file_id, plain = int(v["block_size"]), h(label, "file_id"), content_plaintext(v)
    nonces = [bytes.fromhex(v[f]) for f in sorted(f for f in v if f.startswith("nonce_"))]
    data = spec_content(k, file_id, bs, plain, nonces)
    # the spec reproduces the published bytes
    assert data[:24] == h(label, "header")
    assert len(data) == int(v["ciphertext_size"])
    for i in range(len(nonces)):
        blk = data[24 + i * (bs + 28):24 + (i + 1) * (bs + 28)]
        assert blk[:12] == nonces[i] and blk[-16:] == h(label, f"tag_{i}")
    if "ciphertext" in v:
        assert data == h(label, "ciphertext")
    else:
        assert hashlib.sha256(data).hexdigest() == v["ciphertext_sha256"]
        last = len(nonces) - 1
        assert data[24 + last * (bs + 28):] == h(label, f"block_{last}")
    assert spec_decrypt(k, data, bs) == plain
    # the code reads it ...
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        f = ContentFile.open(fd, Keys(k), "f")
        assert f.read(0, len(plain) + 1) == plain
    finally:
        os.close(fd)
    # ... and, given the same nonces, writes the same bytes
    header = Header(file_id, bs)
    assert header.raw == data[:24]
    cipher = FileCipher(Keys(k), header)
    blocks = []
    for i, nonce in enumerate(nonces):
        with mock.patch("os.urandom", lambda n, nonce=nonce: nonce):
            blocks.append(cipher.seal(i, plain[i * bs:(i + 1) * bs], i == len(nonces) - 1))
    assert header.raw + b"".join(blocks) == data


def test_vault():
    v, k = V["vault"], h("keys", "master")
    password = v["password"].encode()
    m, t, p = (int(v[f]) for f in ("memory_kib", "time_cost", "parallelism"))
    salt, nonce = h("vault", "salt"), h("vault", "slot_nonce")
    # the spec
    kek = Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(password)
    assert kek == h("vault", "kek")
    wrapped = AESGCM(kek).encrypt(nonce, k, b"e2efs v1 password slot")
    assert wrapped == h("vault", "wrapped_key")
    body = json.loads(v["canonical_body"])
    assert body == {
        "block_size": 65536, "format": "e2efs", "version": 1,
        "key_check": base64.b64encode(spec_hkdf(k, b"e2efs v1 key check", 16)).decode(),
        "slots": [{"type": "password", "kdf": "argon2id", "memory_kib": m, "time_cost": t, "parallelism": p,
                   "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode(),
                   "wrapped_key": base64.b64encode(wrapped).decode()}],
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical == v["canonical_body"]
    mac = hmac.HMAC(spec_hkdf(k, b"e2efs v1 vault mac", 32), hashes.SHA256())
    mac.update(canonical.encode())
    assert base64.b64encode(mac.finalize()).decode() == v["mac"]
    # the code
    doc = dict(body, mac=v["mac"])
    vf = VaultFile.parse(json.dumps(doc, indent=3).encode(), "vector")
    assert canonical_json(vf.body()).decode() == canonical
    assert vf.authentic(Keys(k))
    assert vf.slots[0].unwrap(password) == k
    assert isinstance(vf.slots[0], PasswordSlot)
    assert not VaultFile.parse(json.dumps(dict(doc, block_size=4096)).encode(), "x").authentic(Keys(k))


def spec_apply_undo(record: bytes, file: bytearray, file_id: bytes) -> bool:
    """Apply an undo record to ``file`` as FORMAT.md says; False if it must be ignored."""
    if record[:5] == b"E2EU\x02":
        if len(record) < 50:
            return False
        magic, version, reserved, fid, base, done, end, plen = struct.unpack(">4sB3s16sQQQH", record[:50])
        head = 50
        if end == 0:
            return False                        # empty: nothing to apply
        if not head + plen <= end <= len(record):
            return False
    else:
        if len(record) < 42:
            return False
        magic, version, reserved, fid, base, done, plen = struct.unpack(">4sB3s16sQQH", record[:42])
        head, end = 42, len(record)
        if version != 1:
            return False
    if len(record) < head + plen or magic != b"E2EU" or reserved != bytes(3) \
            or base < 24 or (done and done < 24):
        return False
    if fid != file_id or bytes(file[8:24]) != fid:
        return False
    ranges, at = [], head + plen
    while at + 12 <= end:
        offset, length = struct.unpack(">QI", record[at:at + 12])
        data = record[at + 12:min(at + 12 + length, end)]
        if len(data) < length:
            break
        if offset < 24 or offset + length > base:
            return False
        ranges.append((offset, data))
        at += 12 + length
    if done:
        del file[done:]
        return True
    for offset, data in ranges:
        file[offset:offset + len(data)] = data
    del file[base:]
    return True


@pytest.mark.parametrize("name", ["undo-record", "undo-record-v1"])
def test_undo_record(tmp_path, name):
    v = V[name]
    original, record = h(name, "target_ciphertext"), h(name, "record")
    assert original == h("content-small", "ciphertext")
    damaged = bytearray(original)
    damaged[30:40] = b"\xff" * 10                # the interrupted rewrite of block 0...
    damaged += b"\x00" * 5000                    # ...and of the blocks it appended
    spec = bytearray(damaged)
    assert spec_apply_undo(record, spec, h(name, "file_id")) and spec == original
    # a range cut off by the crash (version 1), or left by an earlier round past ``end``: skipped
    record += struct.pack(">QI", 24, 41) + b"torn"
    spec = bytearray(damaged)
    assert spec_apply_undo(record, spec, h(name, "file_id")) and spec == original
    # e2efs applies the documented record the same way
    from e2efs import undo
    target = tmp_path / v["target"]
    target.parent.mkdir(parents=True)
    target.write_bytes(damaged)
    (tmp_path / undo.UNDO_DIR).mkdir()
    (tmp_path / undo.UNDO_DIR / "0123456789abcdef").write_bytes(record)
    assert len(undo.recover(str(tmp_path))) == 1
    assert target.read_bytes() == original
    assert os.listdir(tmp_path / undo.UNDO_DIR) == []
