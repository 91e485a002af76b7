"""ContentFile against a bytearray model: random writes, truncates, flushes, reopens."""

import os
import random
import tempfile
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from e2efs import content
from e2efs.blocks import Layout
from e2efs.content import ContentFile, Header
from e2efs.crypto import Keys
from e2efs.errors import CorruptData

from vaultutil import FIXED_K, SMALL_BLOCK, new_content, open_content, read_file

KEYS = Keys(FIXED_K)
BS = SMALL_BLOCK
MAX_OFFSET = 5 * BS + 100

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, MAX_OFFSET), st.integers(0, 3 * BS + 7), st.integers(0, 2**32)),
    st.tuples(st.just("write"), st.integers(0, 6).map(lambda k: k * BS), st.sampled_from([BS, 2 * BS]), st.integers(0, 2**32)),
    st.tuples(st.just("truncate"), st.integers(0, MAX_OFFSET)),
    st.tuples(st.just("truncate"), st.integers(0, 6).map(lambda k: k * BS)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("peek")),
), max_size=25)


def blocks_of(data: bytes) -> list[bytes]:
    return [data[i:i + BS] for i in range(0, max(len(data), 1), BS)]


def check_against_model(op_list):
    """Apply ``op_list`` to a ContentFile and a bytearray; they must agree throughout.

    ``peek`` opens the ciphertext as another reader would, between flushes: it must
    either fail authentication or return, block by block, content that block held in
    some state the writer passed through (never garbage, never another offset's data).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f")
        f = new_content(path, KEYS)
        model = bytearray()
        seen = [{b""}]
        try:
            for op in op_list:
                if op[0] == "write":
                    _, offset, length, seed = op
                    data = random.Random(seed).randbytes(length)
                    assert f.write(offset, data) == length
                    if length:
                        model.extend(bytes(max(0, offset + length - len(model))))
                        model[offset:offset + length] = data
                elif op[0] == "truncate":
                    f.truncate(op[1])
                    del model[op[1]:]
                    model.extend(bytes(op[1] - len(model)))
                elif op[0] == "flush":
                    f.flush()
                    assert os.path.getsize(path) == f.layout.ciphertext_size(len(model))
                elif op[0] == "reopen":
                    f.flush()
                    os.close(f.fd)
                    f = open_content(path, KEYS)
                else:
                    try:
                        torn = read_file(path, KEYS)
                    except CorruptData:
                        pass
                    else:
                        for i, block in enumerate(blocks_of(torn)):
                            assert block in seen[i], f"block {i} never held these bytes"
                for i, block in enumerate(blocks_of(bytes(model))):
                    if i == len(seen):
                        seen.append(set())
                    seen[i].add(block)
                assert f.size == len(model)
                probe = random.Random(len(model)).randrange(0, len(model) + 1)
                assert f.read(probe, BS + 3) == bytes(model[probe:probe + BS + 3])
            assert f.read(0, len(model) + 10) == bytes(model)
            f.flush()
        finally:
            os.close(f.fd)
        assert read_file(path, KEYS) == bytes(model)


@pytest.mark.parametrize("dirty_limit,clean_blocks", [(content.DIRTY_LIMIT_BYTES, content.CLEAN_CACHE_BLOCKS),
                                                      (BS, 1), (2 * BS, 2)])
@settings(max_examples=150, deadline=None)
@given(op_list=ops)
def test_content_file_matches_a_bytearray(dirty_limit, clean_blocks, op_list):
    with mock.patch.object(content, "DIRTY_LIMIT_BYTES", dirty_limit), \
            mock.patch.object(content, "CLEAN_CACHE_BLOCKS", clean_blocks):
        check_against_model(op_list)


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 3 * BS, 3 * BS + 5])
def test_sequential_write_sizes(tmp_path, size):
    data = random.Random(size).randbytes(size)
    f = new_content(tmp_path / "f", KEYS)
    for i in range(0, size, 1000):
        f.write(i, data[i:i + 1000])
    f.fsync()
    os.close(f.fd)
    assert os.path.getsize(tmp_path / "f") == Layout(BS).ciphertext_size(size)
    assert read_file(tmp_path / "f", KEYS) == data


def test_rewriting_one_block_changes_only_that_block(tmp_path):
    """Delta-uploading sync clients then send one block, not the file."""
    f = new_content(tmp_path / "f", KEYS)
    f.write(0, bytes(5 * BS))
    f.flush()
    before = (tmp_path / "f").read_bytes()
    f.write(2 * BS + 10, b"changed")
    f.flush()
    os.close(f.fd)
    after = (tmp_path / "f").read_bytes()
    lay = Layout(BS)
    changed = {i for i in range(5) if before[lay.block_offset(i):lay.block_offset(i + 1)]
               != after[lay.block_offset(i):lay.block_offset(i + 1)]}
    assert changed == {2} and before[:24] == after[:24]


def test_header_layout(tmp_path):
    f = new_content(tmp_path / "f", KEYS, block_size=1 << 16)
    assert (tmp_path / "f").read_bytes() == b"E2EF\x01\x10\x00\x00" + f.header.file_id   # sealed by flush
    f.flush()
    os.close(f.fd)
    raw = (tmp_path / "f").read_bytes()
    assert raw[:8] == b"E2EF\x01\x10\x00\x00" and raw[8:24] == f.header.file_id
    assert len(raw) == 24 + 28


def test_new_files_get_distinct_ids_and_nonces(tmp_path):
    a, b = new_content(tmp_path / "a", KEYS), new_content(tmp_path / "b", KEYS)
    for f in (a, b):
        f.write(0, b"same")
        f.flush()
        os.close(f.fd)
    ra, rb = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    assert ra[8:24] != rb[8:24] and ra[24:36] != rb[24:36]


@pytest.mark.parametrize("raw", [b"", b"E2EF", b"XXXX\x01\x0c\x00\x00" + bytes(16),
                                 b"E2EF\x02\x0c\x00\x00" + bytes(16), b"E2EF\x01\x0b\x00\x00" + bytes(16),
                                 b"E2EF\x01\x15\x00\x00" + bytes(16), b"E2EF\x01\x0c\x00\x01" + bytes(16)])
def test_header_parse_rejects(raw):
    with pytest.raises(CorruptData):
        Header.parse(raw, "x")
