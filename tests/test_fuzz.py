"""Fuzzing every parser of untrusted input (issue 5, item 6).

Everything read from the vault folder is attacker-controlled: the vault file
JSON, content headers, block streams, backing names and long-name side
records.  Whatever bytes arrive, the only exceptions allowed out are the
documented ones of e2efs/errors.py (VaultCorrupt, VaultTooNew, CorruptData,
VaultNotFound, IOFailure); a parser that answers "not mine" returns None.
"""

import base64
import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from e2efs.blocks import HEADER_LEN, Layout
from e2efs.content import ContentFile, Header
from e2efs.crypto import Keys
from e2efs.errors import CorruptData, E2efsError, VaultCorrupt, VaultTooNew
from e2efs.names import (ROOT_DIR_ID, BackingName, Kind, NameCipher, long_stem_name, parse_backing_name,
                         side_record_name)
from e2efs.tree import Dir, Tree
from e2efs.vault import LockedVault, VaultFile, canonical_json

from vaultutil import FIXED_K, make_vault

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
KEYS = Keys(FIXED_K)
NAMES = NameCipher(KEYS.names)

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)


def _valid_vault_doc() -> dict:
    import tempfile
    with tempfile.TemporaryDirectory() as root:
        make_vault(root)
        with open(os.path.join(root, "e2efs.vault")) as f:
            return json.load(f)


VALID_DOC = _valid_vault_doc()
FIELDS = sorted(VALID_DOC)
SLOT_FIELDS = sorted(VALID_DOC["slots"][0])


def _parse_vault(raw: bytes):
    try:
        return VaultFile.parse(raw, "fuzz")
    except (VaultCorrupt, VaultTooNew):
        return None


# -- vault file -------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=600))
def test_vault_file_random_bytes(raw):
    _parse_vault(raw)


@FUZZ
@given(json_values)
def test_vault_file_random_json(doc):
    _parse_vault(json.dumps(doc).encode())


@FUZZ
@given(st.sampled_from(FIELDS), json_values)
def test_vault_file_one_field_replaced(field, value):
    doc = dict(VALID_DOC, **{field: value})
    _parse_vault(json.dumps(doc).encode())


@FUZZ
@given(st.sampled_from(SLOT_FIELDS), json_values)
def test_vault_file_one_slot_field_replaced(field, value):
    doc = json.loads(json.dumps(VALID_DOC))
    doc["slots"][0][field] = value
    vf = _parse_vault(json.dumps(doc).encode())
    if vf is not None:            # parsed: it must still fail authentication, not crash
        assert not vf.authentic(KEYS) or canonical_json(vf.body()) == canonical_json(
            {k: v for k, v in VALID_DOC.items() if k != "mac"})


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_vault_file_bytes_flipped(noise, where):
    raw = bytearray(json.dumps(VALID_DOC).encode())
    for i, b in enumerate(noise):
        raw[(where + i) % len(raw)] ^= b
    _parse_vault(bytes(raw))


def test_vault_file_deeply_nested_json():
    for raw in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        assert _parse_vault(raw) is None


@FUZZ
@given(st.binary(max_size=400), st.binary(max_size=400) | st.none())
def test_locked_vault_read_random_files(tmp_path_factory, first, second):
    root = tmp_path_factory.mktemp("v")
    with open(root / "e2efs.vault", "wb") as f:
        f.write(first)
    if second is not None:
        with open(root / "e2efs.vault.bak", "wb") as f:
            f.write(second)
    try:
        locked = LockedVault.read(str(root))
    except E2efsError:
        return
    try:
        locked.unlock_with_key(FIXED_K)
    except E2efsError:
        pass


# -- content header and block stream ---------------------------------------------

@FUZZ
@given(st.binary(max_size=64))
def test_header_parse(raw):
    try:
        h = Header.parse(raw, "fuzz")
    except CorruptData:
        return
    assert h.layout.block_size >= 4096 and len(h.raw) == HEADER_LEN


def _open_random(tmp_path, data: bytes):
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            content = ContentFile.open(fd, KEYS, "fuzz")
            content.read(0, content.size + 10)
            content.authenticate()
        except CorruptData:
            return False
        return True
    finally:
        os.close(fd)


@FUZZ
@given(st.binary(max_size=3 * 4124))
def test_block_stream_random_bytes(tmp_path_factory, data):
    assert not _open_random(tmp_path_factory.mktemp("c"), data) or len(data) == 0


@FUZZ
@given(st.integers(0, 12), st.binary(max_size=9000), st.sampled_from([12, 16, 20]))
def test_block_stream_valid_header_random_body(version_shift, body, shift):
    """A correct-looking header followed by random blocks: never data."""
    header = Header(os.urandom(16), 1 << shift).raw
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        assert not _open_random(__import__("pathlib").Path(d), header + body)


@FUZZ
@given(st.binary(min_size=1, max_size=40), st.integers(0, 20000))
def test_block_stream_real_file_damaged(noise, where):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "good"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        c = ContentFile.create(fd, KEYS, 4096, "good")
        c.write(0, os.urandom(10_000))
        c.flush()
        os.close(fd)
        raw = bytearray(path.read_bytes())
        pos = where % (len(raw) + 1)
        changed = bytes(raw[:pos]) + noise + bytes(raw[pos + len(noise):])
        if changed == bytes(raw):
            return
        assert not _open_random(Path(d), changed)


# -- names -------------------------------------------------------------------------

b32_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=0, max_size=120)
name_like = st.one_of(
    st.text(max_size=300),
    st.builds(lambda s, tail: s + tail, b32_text, st.text(max_size=40)),
    st.builds(lambda s, d, tail: s + "." + d + tail, b32_text, b32_text, st.text(max_size=40)),
)


@FUZZ
@given(name_like, st.binary(min_size=16, max_size=16))
def test_backing_names_parse_and_decrypt(fname, parent):
    parsed = parse_backing_name(fname)
    if parsed is None:
        return
    assert isinstance(parsed, BackingName)
    if parsed.kind is Kind.DIR:
        assert len(parsed.dir_id) == 16
    if not parsed.is_long:
        try:
            name = NAMES.decrypt_stem(parent, parsed.stem)
        except CorruptData:
            return
        assert name and b"/" not in name


@FUZZ
@given(st.binary(min_size=1, max_size=255).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")),
       st.text(max_size=40), st.sampled_from(list(Kind)))
def test_real_names_with_appended_conflict_text(name, tail, kind):
    """Whatever a sync client appends, the original name is still found or the entry is skipped."""
    dir_id = os.urandom(16) if kind is Kind.DIR else None
    backing, long_stem = NAMES.backing_name(ROOT_DIR_ID, name, kind, dir_id)
    parsed = parse_backing_name(backing + tail)
    if parsed is not None and not parsed.is_long:
        try:
            NAMES.decrypt_stem(ROOT_DIR_ID, parsed.stem)
        except CorruptData:
            pass


@FUZZ
@given(st.binary(max_size=1200))
def test_long_name_side_record_random_content(tmp_path_factory, record):
    root = tmp_path_factory.mktemp("t")
    tree = Tree(make_vault(root, password=None))
    name = b"x" * 200
    entry = tree.write_file(tree.root, name, [b"data"])
    stem = parse_backing_name(entry.backing).stem
    with open(os.path.join(tree.root.path, side_record_name(stem)), "wb") as f:
        f.write(record)
    fresh = Tree(tree.vault)
    try:
        got = fresh.decrypt_name(fresh.root, parse_backing_name(entry.backing))
    except CorruptData:
        got = None
    assert got in (None, name)
    assert name in fresh.entries(fresh.root) or got is None        # the listing never crashes


@FUZZ
@given(st.lists(name_like, max_size=8))
def test_directory_listing_of_random_names(tmp_path_factory, fnames):
    """A folder full of foreign or garbled names lists without an exception."""
    root = tmp_path_factory.mktemp("l")
    tree = Tree(make_vault(root, password=None))
    for fname in fnames:
        if not fname or "/" in fname or "\0" in fname or fname in (".", "..") or len(fname.encode()) > 255:
            continue
        try:
            with open(os.path.join(root, fname), "wb") as f:
                f.write(b"junk")
        except OSError:
            continue
    tree.entries(tree.root)


# -- undo records -------------------------------------------------------------------

def _undo_target(root) -> tuple[str, bytes]:
    from vaultutil import new_content
    path = os.path.join(root, "target")
    f = new_content(path, KEYS)
    f.write(0, b"t" * 9000)
    f.flush()
    os.close(f.fd)
    with open(path, "rb") as t:
        return path, t.read()


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_undo_record_random_bytes(tmp_path_factory, raw, valid_head):
    """A record is applied only if it parses whole and names a file of the vault with
    its file ID; nothing else is written, and recover never raises."""
    from e2efs import undo
    root = str(tmp_path_factory.mktemp("undo"))
    path, before = _undo_target(root)
    if valid_head:      # a well-formed header naming the real file: then random records
        rel = b"target"
        end = undo._HEAD.size + len(rel) + len(raw)
        raw = undo._HEAD.pack(undo.MAGIC, undo.VERSION, bytes(3), before[8:24], len(before), 0, end, len(rel)) + rel + raw
    os.makedirs(os.path.join(root, undo.UNDO_DIR))
    with open(os.path.join(root, undo.UNDO_DIR, "00112233445566ff"), "wb") as f:
        f.write(raw)
    undo.recover(root)
    assert os.listdir(os.path.join(root, undo.UNDO_DIR)) == []
    with open(path, "rb") as t:
        after = t.read()
    assert len(after) <= len(before)       # never grown, never written past its recorded size
