"""Layout: every size and offset formula of the block format."""

import pytest

from e2efs.blocks import BLOCK_OVERHEAD, HEADER_LEN, Layout


def test_constants():
    assert HEADER_LEN == 24 and BLOCK_OVERHEAD == 28


@pytest.mark.parametrize("bs", [0, 1, 2048, 4095, 4097, 3 * 4096, 2 << 20])
def test_invalid_block_sizes(bs):
    with pytest.raises(ValueError):
        Layout(bs)


@pytest.mark.parametrize("shift", range(12, 21))
def test_valid_block_sizes(shift):
    assert Layout(1 << shift).stride == (1 << shift) + 28


def test_known_sizes():
    lay = Layout(4096)
    assert lay.ciphertext_size(0) == 24 + 28
    assert lay.ciphertext_size(1) == 24 + 1 + 28
    assert lay.ciphertext_size(4096) == 24 + 4096 + 28
    assert lay.ciphertext_size(4097) == 24 + 4097 + 2 * 28
    assert lay.block_count(0) == 1 and lay.block_count(4096) == 1 and lay.block_count(4097) == 2
    assert lay.block_offset(0) == 24 and lay.block_offset(2) == 24 + 2 * 4124


def test_plaintext_size_rejects_impossible_sizes():
    lay = Layout(4096)
    for bad in [0, 23, 24, 51, 24 + 4124 + 1, 24 + 4124 + 27, 24 + 4124 + 28]:
        assert lay.plaintext_size(bad) is None, bad
    assert lay.plaintext_size(52) == 0
    assert lay.plaintext_size(24 + 4124) == 4096    # one full final block
    assert lay.plaintext_size(24 + 4124 + 29) == 4097


def test_exhaustive_small_sizes():
    """Every plaintext size up to four blocks maps to exactly one ciphertext size and back,
    and every other ciphertext size is rejected."""
    lay = Layout(4096)
    limit = 4 * 4096 + 1
    valid = {}
    for p in range(limit):
        c = lay.ciphertext_size(p)
        assert c not in valid
        valid[c] = p
        assert sum(lay.block_len(i, p) for i in range(lay.block_count(p))) == p
        assert lay.block_len(lay.block_count(p), p) == 0
        assert c == lay.block_offset(lay.block_count(p) - 1) + lay.block_len(lay.block_count(p) - 1, p) + 28
    for c in range(lay.ciphertext_size(limit - 1) + 1):
        assert lay.plaintext_size(c) == valid.get(c)


def test_full_files_end_with_a_full_final_block():
    """A file of exactly k full blocks ends with a full final block, never an empty one."""
    lay = Layout(4096)
    for k in range(1, 5):
        assert lay.block_count(k * 4096) == k
        assert lay.block_len(k - 1, k * 4096) == 4096


def test_blocks_touched():
    lay = Layout(4096)
    assert list(lay.blocks_touched(0, 0)) == []
    assert list(lay.blocks_touched(0, 1)) == [0]
    assert list(lay.blocks_touched(4095, 2)) == [0, 1]
    assert list(lay.blocks_touched(4096, 4096)) == [1]
    assert list(lay.blocks_touched(1, 3 * 4096)) == [0, 1, 2, 3]


def test_stored_blocks():
    lay = Layout(4096)                  # stride 4124
    assert list(lay.stored_blocks(24, 4124)) == [0]
    assert list(lay.stored_blocks(24, 4125)) == [0, 1]
    assert list(lay.stored_blocks(24 + 4124, 10)) == [1]
    assert list(lay.stored_blocks(24 + 4123, 2)) == [0, 1]
    assert list(lay.stored_blocks(24, 0)) == []
    assert lay.stored_blocks(24, lay.ciphertext_size(3 * 4096 + 5) - 24).stop == 4
