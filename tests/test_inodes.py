"""The inode table without FUSE (fs/inodes.py): which nodes the kernel is asked to drop."""

import pyfuse3

from e2efs.fs import inodes
from e2efs.fs.inodes import InodeTable
from e2efs.names import Kind

from vaultutil import make_tree


def test_past_the_limit_the_least_recently_looked_up_files_go_first(tmp_path, monkeypatch):
    monkeypatch.setattr(inodes, "MAX_FILE_NODES", 10)
    monkeypatch.setattr(inodes, "FORGET_BATCH", 4)
    table = InodeTable(make_tree(tmp_path / "vault"))
    folder = table.new(Kind.DIR, bytes(16))
    table.add_link(folder, (pyfuse3.ROOT_INODE, b"chats"), "backing-of-chats")
    table.looked_up(folder)
    files = []
    for i in range(10):
        node = table.new(Kind.FILE)
        table.add_link(node, (folder.ino, b"f%d" % i), f"backing-{i}")
        table.looked_up(node)
        files.append(node)
    assert table.to_forget(open_files={}) == []              # at the limit, not past it
    table.looked_up(files[0])                                # used again: now the newest
    extra = table.new(Kind.FILE)
    table.add_link(extra, (folder.ino, b"extra"), "backing-extra")
    table.looked_up(extra)
    dropped = table.to_forget(open_files={files[2].ino: object()})
    assert dropped == [(folder.ino, b"f1"), (folder.ino, b"f3"), (folder.ino, b"f4"), (folder.ino, b"f5")]
    assert next(reversed(table._recent)) == files[2].ino    # the open one waits at the back, not forgotten
    assert table.to_forget(open_files={}) == []              # asked once; the FORGETs free them
    table.forget(files[1].ino, 1, is_open=False)
    assert files[1].ino not in table.nodes
