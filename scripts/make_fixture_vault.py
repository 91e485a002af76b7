"""Write tests/fixtures/vault-v<N>: a small vault of the current format, committed once
per released format version so that every later e2efs is tested against it.

Never regenerate an existing fixture: it stands for vaults already on users' disks.
"""

import hashlib
import json
import os
import sys

from e2efs import crypto
from e2efs.names import Kind
from e2efs.transfer import import_tree
from e2efs.tree import Tree
from e2efs.vault import FORMAT_VERSION, KdfParams, Vault

PASSWORD = b"fixture vault password, not secret"
MASTER = bytes(range(32))


def build_source(src: str) -> None:
    os.makedirs(os.path.join(src, "Media", "WhatsApp Images"))
    os.makedirs(os.path.join(src, "Médias ✓"))
    with open(os.path.join(src, "msgstore.db"), "wb") as f:
        f.write(b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(700)))   # 22400 B, 6 blocks
    with open(os.path.join(src, "Media", "WhatsApp Images", "IMG-0001.jpg"), "wb") as f:
        f.write(bytes(range(256)) * 16)                                                     # exactly one block
    with open(os.path.join(src, "Médias ✓", "x" * 200), "wb") as f:
        f.write(b"a long name\n")
    open(os.path.join(src, "empty"), "wb").close()
    os.symlink("Media/WhatsApp Images/IMG-0001.jpg", os.path.join(src, "latest.jpg"))


def manifest(tree: Tree) -> dict:
    out = {}
    for rel, d, entry in tree.walk():
        key = os.fsdecode(rel)
        if entry.kind is Kind.FILE:
            out[key] = "sha256:" + hashlib.sha256(tree.read_all(tree.path(d, entry))).hexdigest()
        elif entry.kind is Kind.SYMLINK:
            out[key] = "link:" + os.fsdecode(tree.readlink(d, entry))
        else:
            out[key] = entry.kind.name.lower()
    return out


def main() -> None:
    dest = os.path.join("tests", "fixtures", f"vault-v{FORMAT_VERSION}")
    if os.path.exists(dest):
        sys.exit(f"{dest} exists; fixtures of released versions are never regenerated")
    src = dest + "-source"
    build_source(src)
    os.makedirs(dest)
    vault = Vault.create(dest, MASTER, PASSWORD, block_size=4096, kdf=KdfParams(8 * 1024, 1, 1))
    tree = Tree(vault)
    import_tree(tree, src)
    with open(dest + ".json", "w") as f:
        json.dump({"password": PASSWORD.decode(), "key": crypto.format_recovery_key(MASTER),
                   "files": manifest(tree)}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    import shutil
    shutil.rmtree(src)


if __name__ == "__main__":
    main()
