"""All block and offset arithmetic of the content format, in one place.

A ciphertext file is ``HEADER_LEN`` bytes of header followed by blocks; block i
holds ``min(B, P - i*B)`` plaintext bytes, there are ``max(1, ceil(P/B))`` of
them (the empty file has one empty block), and each costs ``BLOCK_OVERHEAD``
bytes of nonce and tag.  The plaintext size P follows from the ciphertext size
alone, so ``stat`` never reads a file.
"""

HEADER_LEN = 24
NONCE_LEN = 12
TAG_LEN = 16
BLOCK_OVERHEAD = NONCE_LEN + TAG_LEN
MIN_BLOCK_SHIFT = 12     # 4 KiB
MAX_BLOCK_SHIFT = 20     # 1 MiB


class Layout:
    __slots__ = ("block_size", "stride")

    def __init__(self, block_size: int):
        if block_size & (block_size - 1) or not (1 << MIN_BLOCK_SHIFT) <= block_size <= (1 << MAX_BLOCK_SHIFT):
            raise ValueError(f"block size must be a power of two from 4 KiB to 1 MiB, not {block_size}")
        self.block_size = block_size
        self.stride = block_size + BLOCK_OVERHEAD

    def block_count(self, plain_size: int) -> int:
        return max(1, -(-plain_size // self.block_size))

    def block_len(self, index: int, plain_size: int) -> int:
        """Plaintext bytes in block ``index`` of a file of ``plain_size`` bytes."""
        return max(0, min(self.block_size, plain_size - index * self.block_size))

    def block_offset(self, index: int) -> int:
        return HEADER_LEN + index * self.stride

    def blocks_touched(self, offset: int, length: int) -> range:
        """Indices of the blocks that bytes [offset, offset+length) fall in."""
        if length <= 0:
            return range(0)
        return range(offset // self.block_size, (offset + length - 1) // self.block_size + 1)

    def stored_blocks(self, offset: int, length: int) -> range:
        """Indices of the blocks that ciphertext bytes [offset, offset+length) fall
        in (``offset`` past the header)."""
        return range((offset - HEADER_LEN) // self.stride, -(-(offset + length - HEADER_LEN) // self.stride))

    def ciphertext_size(self, plain_size: int) -> int:
        return HEADER_LEN + plain_size + self.block_count(plain_size) * BLOCK_OVERHEAD

    def plaintext_size(self, cipher_size: int) -> int | None:
        """The plaintext size, or None if no file of this format has that size."""
        payload = cipher_size - HEADER_LEN
        if payload < BLOCK_OVERHEAD:
            return None
        full, rest = divmod(payload, self.stride)
        plain = full * self.block_size + max(0, rest - BLOCK_OVERHEAD)
        return plain if self.ciphertext_size(plain) == cipher_size else None
