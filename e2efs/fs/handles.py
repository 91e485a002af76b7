"""Open files: one ContentFile per inode, shared by every handle on it.

Sharing one object means two processes on one file see one size, one set of
buffered blocks, and each block is encrypted once.  The file handle FUSE gets
is the inode number.  A file that is new or was opened with O_TRUNC lives in a
temporary file until ``commit`` renames it into place (close, fsync,
rename, link), so a crash mid-write leaves the previous version intact; once
in place, its changes are covered by an undo log until each flush.
"""

import errno
import logging
import os
from dataclasses import dataclass

from ..content import ContentFile
from ..tree import Tree
from ..undo import RecordFiles, UndoLog
from .inodes import InodeTable, Node, backing_signature

log = logging.getLogger("e2efs")


def _reason(exc: BaseException) -> str:
    """Why, for a log line: the OS's words where there are some."""
    return getattr(exc, "strerror", None) or str(exc)


class ChangeLost(Exception):
    """The last changes to a file could not be saved (disk full, vault gone) and
    the vault holds its previous version (or no file): the kernel's size and
    pages for the inode are not what the vault holds.  ``__cause__`` says why."""


@dataclass(eq=False)
class OpenFile:
    node: Node
    content: ContentFile
    refs: int = 1
    writable: bool = True       # the backing descriptor; see OpenFiles.open
    # times set explicitly (utimens): kept here and set on the backing file after
    # each flush, which would move them to "now"; a write since makes the mtime
    # None (the backing file's own, the time of its last change)
    times: tuple[int, int | None] | None = None
    times_set: tuple | None = None      # (times, content.disk_writes) when last set on the backing file

    @property
    def fd(self) -> int:
        return self.content.fd


class OpenFiles:
    def __init__(self, tree: Tree, inodes: InodeTable, read_only: bool):
        self.tree = tree
        self.inodes = inodes
        self.read_only = read_only
        self.files: dict[int, OpenFile] = {}
        self.records = RecordFiles(tree.root.path)
        self._needs_recovery: set[int] = set()     # backing inodes whose undo record could not be applied

    def get(self, ino: int) -> OpenFile:
        return self.files[ino]

    def open(self, node: Node, write: bool) -> OpenFile:
        """The backing file is opened read-write even for O_WRONLY/O_RDONLY (the
        writeback cache reads partial pages of write-only files), unless its
        mode (the file's own) refuses the daemon writing and the caller only
        reads: a daemon without root's override meets a 0444 file so."""
        of = self.files.get(node.ino)
        if of is not None:
            if write and not self.read_only:
                self.make_writable(of)
            of.refs += 1
            return of
        if node.backing_ino in self._needs_recovery:
            # changed in place now, it would be rolled back over by the record at the next mount
            raise OSError(errno.EIO, "an interrupted write waits for the next mount to roll it back")
        path = self.inodes.path(node)
        writable = not self.read_only
        try:
            content = self.tree.open_content(path, writable)
        except PermissionError:
            if write or not writable:
                raise
            content, writable = self.tree.open_content(path), False
        of = self.files[node.ino] = self._opened(node, content)
        of.writable = writable
        return of

    def make_writable(self, of: OpenFile) -> None:
        """A file opened read-only whose mode has let writing in since."""
        if not of.writable:
            self.tree.reopen_writable(of.fd)
            of.writable = True

    def open_new(self, node: Node, parent: int, mode: int, owner: tuple[int, int] | None) -> OpenFile:
        """Start ``node``'s content afresh in a new temp file in ``parent``."""
        d = self.inodes.dir(parent)
        temp, fd = self.tree.temp_file(d, mode)
        try:
            st = os.fstat(fd)
            if owner is not None and (st.st_uid, st.st_gid) != owner:
                os.chown(fd, *owner)
            content = ContentFile.create(fd, self.tree.keys, self.tree.layout.block_size, temp)
        except BaseException:
            os.close(fd)
            self.tree.discard_temp(d, temp)
            raise
        node.temp = (parent, os.path.basename(temp))
        self.inodes.set_backing(node, st.st_ino)
        of = self.files[node.ino] = self._opened(node, content)
        return of

    def _opened(self, node: Node, content: ContentFile) -> OpenFile:
        if not self.read_only:
            content.undo = UndoLog(self.records, content.fd, content.header.file_id,
                                   content.layout, lambda: self._in_place_path(node))
        return OpenFile(node, content)

    def _in_place_path(self, node: Node) -> str | None:
        """Where an undo record finds the file: None while it is a temp file (the
        rename commits it whole) or once it has no name left."""
        if node.temp is not None or not any(node.links.values()):
            return None
        return self.inodes.path(node)

    def settle(self, node: Node | None = None) -> None:
        """Flush every file (or ``node``) that has an undo round open: a record names
        its file by path, so none may span a rename of the file or of a folder
        above it, nor the unlink of the name it uses (the file may live on under
        another hard link)."""
        for of in self.files.values() if node is None else filter(None, [self.files.get(node.ino)]):
            if of.content.undo is not None and of.content.undo.active:
                self.flush(of)

    def flush(self, of: OpenFile) -> None:
        of.content.flush()
        if of.times is not None and of.times_set != (of.times, of.content.disk_writes):
            atime, mtime = of.times         # not set again at release when nothing has moved them since
            os.utime(of.fd, ns=(atime, os.fstat(of.fd).st_mtime_ns if mtime is None else mtime))
            of.times_set = (of.times, of.content.disk_writes)

    def commit(self, of: OpenFile) -> None:
        """Flush, and rename a temp file into place under the node's name
        (or delete it if every name of the node was unlinked meanwhile)."""
        self.flush(of)
        node = of.node
        if node.temp is None:
            return
        if of.content.refused_writes:       # known to be incomplete: it never replaces the previous version
            raise OSError(errno.ENOSPC, "some writes to the new version were refused")
        if not node.links:
            self.orphan(node)
            return
        parent, name = link = node.link
        d = self.inodes.dir(parent)
        entry = self.tree.commit(d, self.inodes.path(node), name, node.kind)
        node.temp = None        # only now: a failed rename leaves the temp file for release to drop
        self.inodes.add_link(node, link, entry.backing)
        of.content.label = self.tree.path(d, entry)

    def orphan(self, node: Node) -> None:
        """Every name of a file still being written is gone: its temp file goes
        now, not at release (the open descriptor keeps the content), so the
        folder it sat in can be removed meanwhile."""
        self.tree.discard_temp(self.inodes.dir(node.temp[0]), self.inodes.path(node))
        node.temp = None

    def release(self, ino: int) -> None:
        of = self.files[ino]
        of.refs -= 1
        if of.refs:
            return
        keep_record = True
        try:
            self.commit(of)
            of.node.cache_sig = backing_signature(os.fstat(of.fd))
            keep_record = False
        except Exception as exc:
            if of.node.temp is not None:
                self._abandon(of.node, exc)
                raise ChangeLost() from exc
            keep_record, lost = self._undo_failed_flush(of, exc)
            if lost:
                raise ChangeLost() from exc
            raise
        finally:
            del self.files[ino]
            if of.content.undo is not None:
                of.content.undo.close(keep=keep_record)     # the next mount rolls it back
            os.close(of.fd)
        if of.content.refused_writes:       # the kernel holds their pages and counts them in its size
            log.error("%d writes to %s were refused (earlier ones could not be stored): the file is what "
                      "was saved without them", of.content.refused_writes, of.content.label)
            raise ChangeLost() from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _undo_failed_flush(self, of: OpenFile, why: Exception) -> tuple[bool, bool]:
        """A file in place whose last flush failed (disk full) goes back to that
        flush now, with its undo record, not at the next mount: until then this
        mount would show a file that fails authentication.  Returns (keep the
        record for the next mount, the changes are lost)."""
        label, reason = of.content.label, _reason(why)
        undo = of.content.undo
        if undo is None or not undo.active:      # nothing was overwritten
            if not of.content.unflushed:
                return False, False
            log.error("a change to %s could not be saved (%s): the file is as at its last flush", label, reason)
            return False, True
        try:
            reverted = undo.roll_back()
        except Exception as exc:
            if of.node.backing_ino is not None:
                self._needs_recovery.add(of.node.backing_ino)
            log.error("a change to %s could not be saved (%s), nor undone (%s): the file cannot be opened "
                      "until the next mount rolls it back", label, reason, _reason(exc))
            return True, True
        if reverted:
            log.error("a change to %s could not be saved (%s): the file is back at its last flush", label, reason)
        return False, reverted

    def _abandon(self, node: Node, why: BaseException) -> None:
        """A new version that could not be committed (disk full, vault gone): drop
        its temp file so the previous version (or no file) is what the mount shows."""
        temp = f"inode {node.ino}"
        try:
            temp = self.inodes.path(node)
            self.tree.discard_temp(self.inodes.dir(node.temp[0]), temp)
        except OSError:
            pass
        node.temp = None
        node.cache_sig = None           # the kernel's pages hold the lost version: drop them on next open
        for link, backing in list(node.links.items()):
            if backing is None:
                self.inodes.drop_link(node, link)
        if node.links:
            try:
                self.inodes.set_backing(node, os.lstat(self.inodes.path(node)).st_ino)
            except OSError:
                pass
        log.error("a new version of %s could not be saved (%s): %s", temp, _reason(why),
                  "the previous version is kept" if node.links else "it was a new file, now lost")

    def close_all(self) -> None:
        """At unmount: every file still open reaches the vault; one that cannot
        (disk full) does not keep the others from it."""
        self.tree.one_step()        # after the last request: listings it validated are checked again
        try:
            for ino in list(self.files):
                self.files[ino].refs = 1
                try:
                    self.release(ino)
                except ChangeLost:
                    pass                    # logged, and the vault holds the previous version
                except Exception as exc:
                    log.error("inode %d could not be saved at unmount: %s", ino, _reason(exc))
        finally:
            self.records.close()
