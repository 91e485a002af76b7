#!/usr/bin/env python3
"""Print the test vectors of docs/FORMAT.md, computed by the e2efs code itself.

    python scripts/make_vectors.py                     # print the markdown blocks
    python scripts/make_vectors.py --update docs/FORMAT.md

All randomness (file ID, nonces, salt, directory ID) is fixed here, so the output
is stable; tests/test_format_vectors.py checks it against FORMAT.md and against
an independent implementation of the spec.
"""

import base64
import hashlib
import sys
from contextlib import contextmanager
from unittest import mock

from e2efs.content import FileCipher, Header
from e2efs.crypto import LABEL_FILE, LABEL_NAMES, Keys, argon2id, format_recovery_key, hkdf
from e2efs.names import ROOT_DIR_ID, Kind, NameCipher, side_record_name
from e2efs.vault import FORMAT_VERSION, KdfParams, PasswordSlot, VaultFile, canonical_json, key_check

BEGIN, END = "<!-- BEGIN VECTORS (scripts/make_vectors.py) -->", "<!-- END VECTORS -->"

MASTER = bytes(range(32))
FILE_ID = bytes(range(0xF0, 0x100))
DIR_ID = bytes(range(0x10, 0x20))
SALT = bytes(range(0x20, 0x30))
SLOT_NONCE = bytes(range(0x30, 0x3C))
PASSWORD = b"correct horse battery staple"
KDF = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)
BLOCK_SIZE = 4096


def nonce(i: int) -> bytes:
    """The fixed nonce of block ``i`` in the content vectors: 12 bytes of 0xa0 + i."""
    return bytes([0xA0 + i]) * 12


@contextmanager
def fixed_random(*chunks: bytes):
    """Make os.urandom return ``chunks`` in order (sizes must match the calls)."""
    queue = list(chunks)

    def urandom(n):
        chunk = queue.pop(0)
        assert len(chunk) == n, (len(chunk), n)
        return chunk
    with mock.patch("os.urandom", urandom):
        yield
    assert not queue, "unused random chunks"


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def block(name: str, fields: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"{k} = {v}".rstrip() for k, v in fields)
    return f"```vector {name}\n{lines}\n```\n"


def keys_vector(keys: Keys) -> str:
    return block("keys", [
        ("master", MASTER.hex()),
        ("recovery_key", format_recovery_key(MASTER)),
        ("names_key", hkdf(MASTER, LABEL_NAMES, 64).hex()),
        ("vault_mac_key", keys.vault_mac_key.hex()),
        ("key_check", key_check(MASTER).hex()),
        ("file_id", FILE_ID.hex()),
        ("file_key", hkdf(MASTER, LABEL_FILE + FILE_ID).hex()),
    ])


def name_vectors(keys: Keys) -> list[str]:
    names = NameCipher(keys.names)
    out = []
    for label, parent, name, kind, dir_id in [
        ("name-file-in-root", ROOT_DIR_ID, "msgstore.db", Kind.FILE, None),
        ("name-unicode-in-subdir", DIR_ID, "Fotos 2026 – Ünïcødé 😀.jpg", Kind.FILE, None),
        ("name-dir", ROOT_DIR_ID, "Media", Kind.DIR, DIR_ID),
        ("name-symlink", DIR_ID, "latest", Kind.SYMLINK, None),
        ("name-long", DIR_ID, "x" * 200, Kind.FILE, None),
    ]:
        raw = name.encode()
        backing, long_stem = names.backing_name(parent, raw, kind, dir_id)
        fields = [("parent_id", parent.hex()), ("name_utf8", raw.hex()), ("kind", kind.name.lower())]
        if dir_id is not None:
            fields.append(("dir_id", dir_id.hex()))
        fields.append(("stem", names.stem(parent, raw)))
        fields.append(("backing_name", backing))
        if long_stem is not None:
            fields.append(("side_record_name", side_record_name(backing)))
            fields.append(("side_record_content", long_stem))
        out.append(block(label, fields))
    return out


def content_vectors(keys: Keys) -> list[str]:
    out = []
    for label, plain in [("content-empty", b""), ("content-small", b"hello, e2efs\n"),
                         ("content-two-blocks", pattern(BLOCK_SIZE + 4))]:
        header = Header(FILE_ID, BLOCK_SIZE)
        cipher = FileCipher(keys, header)
        count = header.layout.block_count(len(plain))
        sealed = []
        for i in range(count):
            with fixed_random(nonce(i)):
                sealed.append(cipher.seal(i, plain[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE], i == count - 1))
        data = header.raw + b"".join(sealed)
        fields = [("block_size", str(BLOCK_SIZE)), ("file_id", FILE_ID.hex())]
        fields += [("plaintext", plain.hex())] if len(plain) < 64 else \
            [("plaintext_pattern", f"byte i = i mod 251, {len(plain)} bytes")]
        fields += [("header", header.raw.hex())]
        fields += [(f"nonce_{i}", nonce(i).hex()) for i in range(count)]
        fields += [(f"tag_{i}", s[-16:].hex()) for i, s in enumerate(sealed)]
        if len(data) < 200:
            fields.append(("ciphertext", data.hex()))
        else:
            fields.append((f"block_{count - 1}", sealed[-1].hex()))
            fields.append(("ciphertext_sha256", hashlib.sha256(data).hexdigest()))
        fields.append(("ciphertext_size", str(len(data))))
        out.append(block(label, fields))
    return out


def undo_vector(keys: Keys) -> str:
    """The record the real UndoLog writes before block 0 of content-small is overwritten."""
    import os
    import tempfile
    from e2efs import undo
    from e2efs.undo import RecordFiles, UndoLog
    names = NameCipher(keys.names)         # the file of name-unicode-in-subdir, in name-dir
    target_rel = (names.backing_name(ROOT_DIR_ID, b"Media", Kind.DIR, DIR_ID)[0] + "/"
                  + names.backing_name(DIR_ID, "Fotos 2026 – Ünïcødé 😀.jpg".encode(), Kind.FILE, None)[0])
    header = Header(FILE_ID, BLOCK_SIZE)
    plain = b"hello, e2efs\n"
    with fixed_random(nonce(0)):
        data = header.raw + FileCipher(keys, header).seal(0, plain, True)
    with tempfile.TemporaryDirectory() as root:
        target = os.path.join(root, target_rel)
        os.makedirs(os.path.dirname(target))
        with open(target, "wb") as f:
            f.write(data)
        fd = os.open(target, os.O_RDWR)
        log = UndoLog(RecordFiles(root), fd, FILE_ID, header.layout, lambda: target)
        log.save(header.layout.block_offset(0), len(data) - 24, len(data))
        with open(log.path, "rb") as f:
            record = f.read()
        log.close()
        log.records.close()
        os.close(fd)
    fields = [("target", target_rel), ("file_id", FILE_ID.hex()), ("target_ciphertext", data.hex())]
    # version 1, which earlier builds wrote and recovery still applies: no end field, ranges to the file end
    head_v2 = undo._HEAD.size + len(target_rel)
    v1 = undo._HEAD_V1.pack(undo.MAGIC, 1, bytes(3), FILE_ID, len(data), 0, len(target_rel)) \
        + target_rel.encode() + record[head_v2:]
    return block("undo-record", fields + [("record", record.hex())]) + "\n" + \
        block("undo-record-v1", fields + [("record", v1.hex())])



def vault_vector(keys: Keys) -> str:
    with fixed_random(SALT, SLOT_NONCE):
        slot = PasswordSlot.wrap(MASTER, PASSWORD, KDF)
    vf = VaultFile(FORMAT_VERSION, 65536, key_check(MASTER), [slot])
    vf.serialize(keys)
    return block("vault", [
        ("password", PASSWORD.decode()),
        ("memory_kib", str(KDF.memory_kib)), ("time_cost", str(KDF.time_cost)),
        ("parallelism", str(KDF.parallelism)),
        ("salt", SALT.hex()), ("slot_nonce", SLOT_NONCE.hex()),
        ("kek", argon2id(PASSWORD, SALT, KDF.memory_kib, KDF.time_cost, KDF.parallelism).hex()),
        ("wrapped_key", slot.wrapped.hex()),
        ("canonical_body", canonical_json(vf.body()).decode()),
        ("mac", base64.b64encode(vf.mac).decode()),
    ])


def render() -> str:
    keys = Keys(MASTER)
    parts = [keys_vector(keys), *name_vectors(keys), *content_vectors(keys), undo_vector(keys),
             vault_vector(keys)]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if len(argv) == 2 and argv[0] == "--update":
        with open(argv[1], encoding="utf-8") as f:
            doc = f.read()
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
    elif argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
