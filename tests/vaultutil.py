"""Shared helpers for the offline-layer tests: cheap vaults and ciphertext files.

Argon2 runs with 8 MiB and one pass so a whole test file unlocks in milliseconds.
"""

import os

from e2efs.crypto import Keys
from e2efs.content import ContentFile
from e2efs.tree import Tree
from e2efs.vault import KdfParams, Vault

FAST_KDF = KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
FIXED_K = bytes(range(32))
PASSWORD = b"correct horse battery staple"
SMALL_BLOCK = 4096


def make_vault(root, password: bytes | None = PASSWORD, block_size: int = SMALL_BLOCK,
               master: bytes = FIXED_K) -> Vault:
    os.makedirs(root, exist_ok=True)
    return Vault.create(str(root), master, password, block_size, FAST_KDF)


def make_tree(root, **kw) -> Tree:
    return Tree(make_vault(root, **kw))


def new_content(path, keys: Keys, block_size: int = SMALL_BLOCK) -> ContentFile:
    """A fresh ciphertext file at ``path``, open read-write (caller closes ``.fd``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    return ContentFile.create(fd, keys, block_size, str(path))


def open_content(path, keys: Keys) -> ContentFile:
    return ContentFile.open(os.open(path, os.O_RDWR), keys, str(path))


def read_file(path, keys: Keys) -> bytes:
    """Open and decrypt a whole ciphertext file, closing it afterwards."""
    f = ContentFile.open(os.open(path, os.O_RDONLY), keys, str(path))
    try:
        return f.read(0, f.size)
    finally:
        os.close(f.fd)


def edit_vault_json(root, edit, names=("e2efs.vault", "e2efs.vault.bak")) -> None:
    """Apply ``edit(doc)`` to the JSON of the named vault file copies, keeping the old MAC."""
    import json
    for name in names:
        path = os.path.join(root, name)
        with open(path) as f:
            doc = json.load(f)
        edit(doc)
        with open(path, "w") as f:
            json.dump(doc, f)
