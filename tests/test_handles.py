"""Open files without FUSE (fs/handles.py): what release does when a file's last
flush fails and even its undo record cannot be applied, a commit whose clean-up
fails, and kept times that only a change on disk (no request) moves."""

import errno
import logging
import os

import pyfuse3
import pytest

from e2efs.fs.handles import ChangeLost, OpenFiles
from e2efs.fs.inodes import InodeTable
from e2efs.names import Kind
from e2efs.undo import UndoLog, left_behind

from vaultutil import make_tree


def _new_file(tree, name: bytes, data: bytes):
    """(open files, its inode table, the node, the open file) of a new file ``name``
    in the root folder holding ``data``, not yet committed."""
    inodes = InodeTable(tree)
    files = OpenFiles(tree, inodes, read_only=False)
    node = inodes.new(Kind.FILE)
    of = files.open_new(node, pyfuse3.ROOT_INODE, 0o600, None)
    inodes.add_link(node, (pyfuse3.ROOT_INODE, name), None)
    of.content.write(0, data)
    return files, inodes, node, of


def test_a_file_whose_record_could_not_be_applied_is_not_opened_again(tmp_path, monkeypatch):
    """Changed in place and flushed now, it would be rolled back over by the kept
    record at the next mount: refused (EIO) until then."""
    tree = make_tree(tmp_path / "vault")
    files, inodes, node, of = _new_file(tree, b"chat.db", os.urandom(3 * 4096))
    files.commit(of)                                 # in place from here on
    of.content.write(4096 + 10, os.urandom(100))       # pending until the flush
    real_pwrite = os.pwrite

    def full_disk(fd, data, offset):
        if fd == of.fd:
            real_pwrite(fd, bytes(data)[:100], offset)      # torn
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", full_disk)

    def unreadable(self):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(UndoLog, "roll_back", unreadable)
    with pytest.raises(ChangeLost):
        files.release(node.ino)
    monkeypatch.undo()
    assert len(left_behind(tree.root.path)) == 1     # kept for the next mount
    with pytest.raises(OSError) as e:
        files.open(node, write=False)
    assert e.value.errno == errno.EIO


def test_kept_times_are_set_again_after_a_truncate_moved_them(tmp_path):
    """An O_TRUNC open of a file already open truncates it in place (an ftruncate
    on the backing file, which moves its mtime) while the times set on it stay:
    the next flush must put them back, though the times themselves are unchanged."""
    tree = make_tree(tmp_path / "vault")
    files, inodes, node, of = _new_file(tree, b"photo.jpg", os.urandom(3 * 4096))
    of.times = (1_500_000_000_000_000_000, 1_600_000_000_000_000_000)
    files.commit(of)
    assert os.stat(of.fd).st_mtime_ns == of.times[1]
    of.content.truncate(0)
    assert os.stat(of.fd).st_mtime_ns != of.times[1]
    files.flush(of)
    assert os.stat(of.fd).st_mtime_ns == of.times[1]
    files.release(node.ino)


def test_a_commit_whose_replaced_entry_cannot_be_removed_is_still_a_commit(tmp_path, monkeypatch, caplog):
    """The new version is in place once the rename is done: failing to remove the
    old entry of another kind it replaced leaves a duplicate, not a lost file."""
    tree = make_tree(tmp_path / "vault")
    old = tree.symlink(tree.root, b"avatar.jpg", b"elsewhere")
    files, inodes, node, of = _new_file(tree, b"avatar.jpg", b"new picture")
    old_path, real_unlink = tree.path(tree.root, old), os.unlink

    def failing(path, *args, **kw):
        if path == old_path:
            raise OSError(errno.EIO, "Input/output error")
        return real_unlink(path, *args, **kw)
    monkeypatch.setattr(os, "unlink", failing)
    with caplog.at_level(logging.WARNING, logger="e2efs"):
        files.release(node.ino)
    monkeypatch.undo()
    assert "could not be removed" in caplog.text and "lost" not in caplog.text
    assert node.temp is None and node.links
    assert tree.read_all(inodes.path(node)) == b"new picture"
    tree.invalidate(tree.root)
    listing = tree.entries(tree.root)
    shown = {n: e.kind for n, e in listing.items() if n.startswith(b"avatar.jpg")}
    assert len(shown) == 2 and set(shown.values()) == {Kind.FILE, Kind.SYMLINK} and b"avatar.jpg" in shown
