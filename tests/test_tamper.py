"""DESIGN.md §2 against files e2efs itself wrote: every tampering is detected.

Each test writes through Tree, edits the backing files the way a hostile cloud
could, then reads through a fresh Tree: the result must be CorruptData (a block
or a header) or a skipped entry with a log line (a name) — never data.
"""

import logging
import os
import random

import pytest

from e2efs.blocks import Layout
from e2efs.errors import CorruptData, VaultCorrupt
from e2efs.names import Kind
from e2efs.tree import Tree
from e2efs.vault import Vault

from vaultutil import FIXED_K, SMALL_BLOCK, edit_vault_json, make_vault

LAY = Layout(SMALL_BLOCK)
SIZE = 3 * SMALL_BLOCK + 1000        # four blocks, the last one partial
DATA_A = random.Random(1).randbytes(SIZE)
DATA_B = random.Random(2).randbytes(SIZE)


class Fixture:
    """A vault holding files ``a`` and ``b`` (4 blocks each) in a subdirectory."""

    def __init__(self, root):
        self.root = root
        tree = Tree(make_vault(root))
        self.dir = tree.subdir(tree.root, tree.mkdir(tree.root, b"chats"))
        self.a = tree.path(self.dir, tree.write_file(self.dir, b"a", [DATA_A]))
        self.b = tree.path(self.dir, tree.write_file(self.dir, b"b", [DATA_B]))
        self.empty = tree.path(self.dir, tree.write_file(self.dir, b"empty", []))
        self.full = tree.path(self.dir, tree.write_file(self.dir, b"full", [DATA_A[:SMALL_BLOCK]]))
        self.link = tree.path(self.dir, tree.symlink(self.dir, b"link", b"../secret/target"))

    def tree(self) -> Tree:
        """A tree with no cached state, as a later mount or export would see it."""
        return Tree(Vault.locked(str(self.root)).unlock_with_key(FIXED_K))

    def read(self, path) -> bytes:
        return self.tree().read_all(path)

    def assert_corrupt(self, path):
        with pytest.raises(CorruptData):
            self.read(path)


@pytest.fixture
def fx(tmp_path):
    return Fixture(tmp_path)


def load(path) -> bytearray:
    with open(path, "rb") as f:
        return bytearray(f.read())


def store(path, data) -> None:
    with open(path, "wb") as f:
        f.write(data)


def block(raw, i) -> bytes:
    return bytes(raw[LAY.block_offset(i):LAY.block_offset(i + 1)])


def put_block(raw, i, data) -> None:
    raw[LAY.block_offset(i):LAY.block_offset(i) + len(data)] = data


def test_untouched_files_read_back(fx):
    assert fx.read(fx.a) == DATA_A and fx.read(fx.b) == DATA_B
    assert fx.read(fx.empty) == b"" and fx.read(fx.full) == DATA_A[:SMALL_BLOCK]


@pytest.mark.parametrize("where", ["header", "nonce0", "ct1", "tag2", "last_byte"])
def test_flipped_bit(fx, where):
    raw = load(fx.a)
    offset = {"header": 10, "nonce0": 24, "ct1": LAY.block_offset(1) + 100,
              "tag2": LAY.block_offset(3) - 1, "last_byte": len(raw) - 1}[where]
    raw[offset] ^= 0x04
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


@pytest.mark.parametrize("path", ["empty", "full", "link"])
def test_flipped_bit_in_single_block_files(fx, path):
    path = getattr(fx, path)
    raw = load(path)
    raw[30] ^= 1
    store(path, raw)
    fx.assert_corrupt(path)


@pytest.mark.parametrize("i,j", [(0, 1), (1, 2), (0, 2)])
def test_swapped_blocks(fx, i, j):
    raw = load(fx.a)
    bi, bj = block(raw, i), block(raw, j)
    put_block(raw, i, bj)
    put_block(raw, j, bi)
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


@pytest.mark.parametrize("i", [0, 1, 3])
def test_block_swapped_in_from_another_file(fx, i):
    raw = load(fx.a)
    put_block(raw, i, block(load(fx.b), i))
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


def test_header_swapped_in_from_another_file(fx):
    raw = load(fx.a)
    raw[:24] = load(fx.b)[:24]
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


@pytest.mark.parametrize("blocks_left", [1, 2, 3])
def test_truncated_at_a_block_boundary(fx, blocks_left):
    store(fx.a, load(fx.a)[:LAY.block_offset(blocks_left)])
    fx.assert_corrupt(fx.a)


def test_full_file_truncated_to_its_header_plus_an_empty_block_shape(fx):
    """52 bytes is the size of an empty file: the block there is not an empty final block."""
    store(fx.full, load(fx.full)[:52])
    fx.assert_corrupt(fx.full)


@pytest.mark.parametrize("cut", [1, 27, 28, 29, 500])
def test_truncated_mid_block(fx, cut):
    raw = load(fx.a)
    store(fx.a, raw[:len(raw) - cut])
    fx.assert_corrupt(fx.a)


@pytest.mark.parametrize("path", ["empty", "a"])
def test_truncated_to_the_header(fx, path):
    path = getattr(fx, path)
    store(path, load(path)[:24])
    fx.assert_corrupt(path)


@pytest.mark.parametrize("extra", ["copy_of_block0", "copy_of_last", "other_files_last", "zeros", "one_byte"])
def test_appended_data(fx, extra):
    for path in (fx.a, fx.full):
        raw = load(path)
        last = LAY.block_count(SIZE if path == fx.a else SMALL_BLOCK) - 1
        tail = {"copy_of_block0": block(raw, 0), "copy_of_last": block(raw, last),
                "other_files_last": block(load(fx.b), 3), "zeros": bytes(LAY.stride),
                "one_byte": b"\0"}[extra]
        store(path, raw + tail)
        fx.assert_corrupt(path)


@pytest.mark.parametrize("i", [0, 2, 3])
def test_zeroed_block(fx, i):
    """An all-zero block is not a hole: it fails authentication like any other."""
    raw = load(fx.a)
    put_block(raw, i, bytes(len(block(raw, i))))
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


def test_zeroed_file(fx):
    store(fx.a, bytes(len(load(fx.a))))
    fx.assert_corrupt(fx.a)


@pytest.mark.parametrize("offset,value", [(0, ord("X")), (4, 2), (5, 13), (5, 11), (5, 21), (7, 1), (8, 0), (23, 0xFF)])
def test_header_fields_replaced(fx, offset, value):
    """Magic, version, block-size shift (also to another valid size), reserved, file ID."""
    raw = load(fx.a)
    if offset >= 8 and raw[offset] == value:     # file ID bytes are random: 1 in 256 already match
        value ^= 0x01
    assert raw[offset] != value
    raw[offset] = value
    store(fx.a, raw)
    fx.assert_corrupt(fx.a)


def test_block_size_shift_changed_on_a_file_of_the_new_stride(fx):
    """Even if the size fits the forged block size, the header is in every block's AAD."""
    raw = load(fx.empty)
    raw[5] = 13
    store(fx.empty, raw)
    fx.assert_corrupt(fx.empty)


def test_symlink_target_tampered(fx):
    raw = load(fx.link)
    raw[-20] ^= 0x80
    store(fx.link, raw)
    tree = fx.tree()
    entry = tree.lookup(fx.dir, b"link")
    assert entry.kind is Kind.SYMLINK
    with pytest.raises(CorruptData):
        tree.readlink(fx.dir, entry)


# -- names ----------------------------------------------------------------------

def listing(fx, caplog) -> set[bytes]:
    with caplog.at_level(logging.WARNING, logger="e2efs"):
        return set(fx.tree().entries(fx.dir))


def test_tampered_name_is_skipped_with_a_log_line(fx, caplog):
    backing = os.path.basename(fx.a)
    forged = backing[:10] + ("a" if backing[10] != "a" else "b") + backing[11:]
    os.rename(fx.a, os.path.join(os.path.dirname(fx.a), forged))
    assert listing(fx, caplog) == {b"b", b"empty", b"full", b"link"}
    assert forged in caplog.text and "failed authentication" in caplog.text


def test_entry_moved_to_another_directory_is_skipped(fx, caplog):
    """Names are bound to their parent's ID: a moved entry does not decrypt."""
    os.rename(fx.a, os.path.join(fx.root, os.path.basename(fx.a)))
    with caplog.at_level(logging.WARNING, logger="e2efs"):
        assert set(fx.tree().entries(fx.tree().root)) == {b"chats"}
    assert os.path.basename(fx.a) in caplog.text


def test_directory_id_changed_hides_children(fx, caplog):
    """A directory renamed to another ID: its children no longer authenticate."""
    old = fx.dir.path
    # the first ID character carries 5 full bits (the last one also padding bits)
    head, dir_id = old.rsplit(".", 1)
    new = f"{head}.{'a' if dir_id[0] != 'a' else 'b'}{dir_id[1:]}"
    os.rename(old, new)
    tree = fx.tree()
    d = tree.subdir(tree.root, tree.lookup(tree.root, b"chats"))
    with caplog.at_level(logging.WARNING, logger="e2efs"):
        assert tree.entries(d) == {}
    assert "failed authentication" in caplog.text


def test_swapped_long_name_side_records(fx, caplog):
    tree = fx.tree()
    long1, long2 = b"1" * 200, b"2" * 200
    tree.write_file(fx.dir, long1, [b"one"])
    tree.write_file(fx.dir, long2, [b"two"])
    sides = sorted(f for f in os.listdir(fx.dir.path) if f.endswith(".name"))
    assert len(sides) == 2
    p1, p2 = (os.path.join(fx.dir.path, s) for s in sides)
    c1, c2 = load(p1), load(p2)
    store(p1, c2)
    store(p2, c1)
    names = listing(fx, caplog)
    assert long1 not in names and long2 not in names
    assert caplog.text.count("side record does not match") == 2


def test_missing_side_record(fx, caplog):
    tree = fx.tree()
    tree.write_file(fx.dir, b"3" * 200, [b"x"])
    side = next(f for f in os.listdir(fx.dir.path) if f.endswith(".name"))
    os.unlink(os.path.join(fx.dir.path, side))
    assert b"3" * 200 not in listing(fx, caplog)
    assert "side record is missing" in caplog.text


# -- the vault file ------------------------------------------------------------

@pytest.mark.parametrize("edit", [
    lambda d: d.__setitem__("block_size", 8192),
    lambda d: d["slots"][0].__setitem__("memory_kib", 8),
    lambda d: d["slots"][0].__setitem__("time_cost", 10),
    lambda d: d.__setitem__("slots", []),
    lambda d: d.__setitem__("mac", d["key_check"] * 2),
])
def test_vault_params_edited_in_both_copies(fx, edit):
    edit_vault_json(fx.root, edit)
    with pytest.raises(VaultCorrupt):
        Vault.locked(str(fx.root)).unlock_with_key(FIXED_K)


# -- honest limits (THREAT_MODEL.md "What leaks") ------------------------------

def test_known_limit_whole_file_swap_between_names_is_not_detected(fx):
    """A file's key is bound to its random ID, not its path."""
    a, b = load(fx.a), load(fx.b)
    store(fx.a, b)
    store(fx.b, a)
    assert fx.read(fx.a) == DATA_B


def test_known_limit_rollback_of_one_block_to_an_older_version_is_not_detected(fx):
    """Each block is authenticated on its own: an older version of the same block of the
    same file passes. Whole-file rollback is the same limit (documented)."""
    old = load(fx.a)
    tree = fx.tree()
    f = tree.open_content(fx.a, writable=True)
    f.write(SMALL_BLOCK, b"new")
    f.flush()
    os.close(f.fd)
    raw = load(fx.a)
    put_block(raw, 1, block(old, 1))
    store(fx.a, raw)
    assert fx.read(fx.a) == DATA_A
