"""Name encryption, the backing-name grammar, long names and sync-conflict copies."""

import base64
import hashlib
import logging
import os

import pytest
from hypothesis import given, settings, strategies as st

from e2efs.crypto import Keys
from e2efs.errors import CorruptData
from e2efs.names import (
    MAX_BACKING_NAME, ROOT_DIR_ID, Kind, NameCipher, b32decode, b32encode, long_stem_name,
    parse_backing_name, side_record_name,
)

from vaultutil import FIXED_K, make_tree

CIPHER = NameCipher(Keys(FIXED_K).names)
OTHER_DIR = bytes(range(16))
CONFLICTS = [
    " (1)",
    " (conflicted copy 2026-11-21)",
    " (Joe's conflicted copy 2026-11-21)",
    ".sync-conflict-20261121-123456-ABCDEFG",
]

names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1) \
    .map(lambda s: s.encode()).filter(lambda b: len(b) <= 255 and b not in (b".", b".."))


@given(names, st.sampled_from([ROOT_DIR_ID, OTHER_DIR]))
@settings(max_examples=200, deadline=None)
def test_round_trip(name, parent):
    stem = CIPHER.stem(parent, name)
    assert stem == CIPHER.stem(parent, name)          # deterministic
    assert CIPHER.decrypt_stem(parent, stem) == name


@pytest.mark.parametrize("name", [b"a", b"x" * 16, b"x" * 17, "Ünïcødé 名前 😀.txt".encode(),
                                  b"y" * 255, ("é" * 127).encode() + b"z"])
def test_round_trip_edges(name):
    stem = CIPHER.stem(ROOT_DIR_ID, name)
    assert stem.islower() or stem.isdigit()
    assert CIPHER.decrypt_stem(ROOT_DIR_ID, stem) == name


def test_padding_hides_length_within_16_bytes():
    lengths = {len(CIPHER.stem(ROOT_DIR_ID, b"n" * n)) for n in range(1, 17)}
    assert lengths == {52}
    assert len(CIPHER.stem(ROOT_DIR_ID, b"n" * 17)) == 77


def test_names_are_bound_to_their_parent_directory():
    name = b"chat.db"
    a, b = CIPHER.stem(ROOT_DIR_ID, name), CIPHER.stem(OTHER_DIR, name)
    assert a != b
    with pytest.raises(CorruptData):
        CIPHER.decrypt_stem(OTHER_DIR, a)
    with pytest.raises(CorruptData):
        CIPHER.decrypt_stem(ROOT_DIR_ID, b)


@pytest.mark.parametrize("stem", ["a" * 52, "a" * 51, "A" * 52, "1" * 52])
def test_garbage_stems_fail(stem):
    with pytest.raises(CorruptData):
        CIPHER.decrypt_stem(ROOT_DIR_ID, stem)


def test_invalid_plaintext_names_are_refused_even_if_authentic():
    """A name that authenticates but would be an invalid path component is corrupt."""
    for bad in (b"a/b", b"..", b""):
        padded = bad.ljust(16, b"\0")
        stem = b32encode(Keys(FIXED_K).names.encrypt(padded, [ROOT_DIR_ID]))
        with pytest.raises(CorruptData):
            CIPHER.decrypt_stem(ROOT_DIR_ID, stem)


def test_base32_is_lowercase_unpadded_and_strict():
    assert b32encode(b"\xff" * 16) == "7" * 25 + "4"
    for n in range(0, 80):          # every length mod 5, against the standard library
        data = bytes((i * 37 + n) % 256 for i in range(n))
        assert b32encode(data) == base64.b32encode(data).decode().rstrip("=").lower()
        assert n == 0 or b32decode(b32encode(data)) == data
    assert b32decode("7" * 25 + "4") == b"\xff" * 16
    for bad in ("7" * 25 + "Q", "abc=", "ab1", "7" * 26, "abc"):     # "7" * 26: non-zero padding bits
        with pytest.raises(ValueError):
            b32decode(bad)


def test_backing_name_kinds():
    dir_id = bytes(range(100, 116))
    for kind, suffix in [(Kind.FILE, ""), (Kind.SYMLINK, ".l"), (Kind.NODE, ".n"),
                         (Kind.DIR, "." + b32encode(dir_id))]:
        backing, long_stem = CIPHER.backing_name(ROOT_DIR_ID, b"n", kind, dir_id if kind is Kind.DIR else None)
        assert long_stem is None and backing == CIPHER.stem(ROOT_DIR_ID, b"n") + suffix
        parsed = parse_backing_name(backing)
        assert (parsed.kind, parsed.conflict) == (kind, "")
        assert parsed.dir_id == (dir_id if kind is Kind.DIR else None)


def test_long_names_are_hashed_with_a_side_record():
    name = b"L" * 255
    for kind, dir_id in [(Kind.FILE, None), (Kind.DIR, bytes(16))]:
        backing, long_stem = CIPHER.backing_name(ROOT_DIR_ID, name, kind, dir_id)
        assert len(backing) <= MAX_BACKING_NAME
        assert long_stem == CIPHER.stem(ROOT_DIR_ID, name)
        assert backing.split(".")[0] == long_stem_name(long_stem) == "_" + b32encode(
            hashlib.sha256(long_stem.encode()).digest())
        assert parse_backing_name(backing).is_long
    assert parse_backing_name(side_record_name(long_stem_name("a" * 60))) is None


def test_threshold_between_short_and_long():
    """Files keep names up to 112 bytes (stem 205 chars), directories up to 96 (stem 179
    + 27 for the ID); one more padded block goes long."""
    def short(kind, dir_id=None):
        return [n for n in range(1, 256) if CIPHER.backing_name(ROOT_DIR_ID, b"q" * n, kind, dir_id)[1] is None]
    assert short(Kind.FILE) == list(range(1, 113))
    assert short(Kind.DIR, bytes(16)) == list(range(1, 97))


@pytest.mark.parametrize("fname", [
    "e2efs.vault", "e2efs.vault.bak", ".e2efs-tmp-0123456789abcdef", ".e2efs.vault.tmp-abcdef",
    "a" * 51, "A" * 52, "_" + "a" * 51, "desktop.ini", ".DS_Store",
])
def test_non_entries_are_ignored(fname):
    assert parse_backing_name(fname) is None


@pytest.mark.parametrize("conflict", CONFLICTS)
@pytest.mark.parametrize("kind", [Kind.FILE, Kind.DIR, Kind.SYMLINK])
def test_conflict_suffixes_are_kept(conflict, kind):
    dir_id = bytes(range(16)) if kind is Kind.DIR else None
    backing, _ = CIPHER.backing_name(ROOT_DIR_ID, b"msgstore.db", kind, dir_id)
    parsed = parse_backing_name(backing + conflict)
    assert (parsed.kind, parsed.dir_id, parsed.conflict) == (kind, dir_id, conflict)
    assert CIPHER.decrypt_stem(ROOT_DIR_ID, parsed.stem) == b"msgstore.db"


# -- through the tree ---------------------------------------------------------

def test_tree_lists_conflict_copies_under_readable_names(tmp_path):
    tree = make_tree(tmp_path)
    f = tree.write_file(tree.root, b"chat.db", [b"v1"])
    d = tree.mkdir(tree.root, b"Media")
    for conflict in CONFLICTS:
        os.link(tree.path(tree.root, f), os.path.join(tmp_path, f.backing + conflict))
    os.mkdir(os.path.join(tmp_path, d.backing + " (1)"))
    tree.invalidate(tree.root)
    listing = tree.entries(tree.root)
    assert set(listing) == {b"chat.db", b"Media", b"Media (1)"} | {b"chat.db" + c.encode() for c in CONFLICTS}
    assert listing[b"Media (1)"].kind is Kind.DIR and listing[b"Media (1)"].dir_id == d.dir_id
    assert tree.read_all(tree.path(tree.root, listing[b"chat.db (1)"])) == b"v1"


def test_tree_long_names(tmp_path):
    tree = make_tree(tmp_path)
    name = "ж".encode() * 127 + b"x"
    assert len(name) == 255
    tree.write_file(tree.root, name, [b"long"])
    sub = tree.mkdir(tree.root, b"d" * 200)
    side = [f for f in os.listdir(tmp_path) if f.endswith(".name")]
    assert len(side) == 2
    assert tree.read_all(tree.path(tree.root, tree.lookup(tree.root, name))) == b"long"
    assert tree.lookup(tree.root, b"d" * 200) == sub
    assert all(len(f) <= MAX_BACKING_NAME for f in os.listdir(tmp_path))


def test_tree_skips_undecryptable_names_with_a_log_line(tmp_path, caplog):
    tree = make_tree(tmp_path)
    entry = tree.write_file(tree.root, b"good", [b"x"])
    bogus = CIPHER.stem(OTHER_DIR, b"moved here")
    os.link(tree.path(tree.root, entry), os.path.join(tmp_path, bogus))
    tree.invalidate(tree.root)
    with caplog.at_level(logging.WARNING, logger="e2efs"):
        assert set(tree.entries(tree.root)) == {b"good"}
    assert bogus in caplog.text


@pytest.mark.parametrize("conflict", CONFLICTS)
@pytest.mark.parametrize("kind", [Kind.DIR, Kind.SYMLINK, Kind.NODE])
def test_conflict_inserted_before_the_kind_suffix(conflict, kind):
    """Clients that treat ``.l`` or ``.<dirid>`` as an extension put their text before it."""
    dir_id = bytes(range(16)) if kind is Kind.DIR else None
    backing, _ = CIPHER.backing_name(ROOT_DIR_ID, b"link", kind, dir_id)
    stem, suffix = backing.split(".", 1)
    parsed = parse_backing_name(f"{stem}{conflict}.{suffix}")
    assert (parsed.stem, parsed.kind, parsed.dir_id, parsed.conflict) == (stem, kind, dir_id, conflict)


@pytest.mark.parametrize("conflict", CONFLICTS)
def test_conflict_copies_of_side_records_are_not_entries(conflict):
    side = side_record_name(long_stem_name("a" * 60))
    assert parse_backing_name(side + conflict) is None
    assert parse_backing_name(side[:-5] + conflict + ".name") is None
