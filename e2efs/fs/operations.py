"""The pyfuse3 handlers: thin glue from FUSE requests to the tree and open files.

Every handler runs inside ``_guarded``: pyfuse3 ends the whole session on any
exception that is not a FUSEError, so OSErrors become their errno, corrupt
ciphertext becomes EIO with one log line naming the ciphertext path, and
anything unexpected becomes EIO with a traceback in the log.
"""

import errno
import functools
import logging
import os
import stat
import time

import pyfuse3
from pyfuse3 import FUSEError

from .. import undo
from ..errors import CorruptData
from ..names import Kind, check_name
from ..tree import TEMP_PREFIX, Tree
from ..vault import fsync_dir
from . import permissions
from .handles import ChangeLost, OpenFiles
from .inodes import InodeTable, Node, backing_signature
from .mountpoint import vault_read_only
from .notify import EntryInvalidator
from .permissions import EXEC, READ, WRITE, Caller

log = logging.getLogger("e2efs")

TIMEOUT = 1.0            # the mount is the only writer: let the kernel cache
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FMODE_EXEC = 0x20        # in the flags of the OPEN that execve(2) sends
_TYPE_OF_KIND = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}


def _guarded(fn):
    @functools.wraps(fn)
    async def handler(self, *args):
        self.last_access = time.monotonic()
        self.tree.one_step()
        try:
            return fn(self, *args)
        except FUSEError:
            raise
        except CorruptData as exc:
            _report_corrupt(fn.__name__, exc)
            raise FUSEError(errno.EIO) from None
        except OSError as exc:
            if exc.errno is None:
                log.exception("%s failed", fn.__name__)
            if exc.errno == errno.ENOENT and self.vault_gone():
                raise FUSEError(errno.EIO) from None
            raise FUSEError(exc.errno or errno.EIO) from None
        except OverflowError:           # names > 255 bytes, symlink targets > 4095
            raise FUSEError(errno.ENAMETOOLONG) from None
        except ValueError:              # invalid name
            raise FUSEError(errno.EINVAL) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise FUSEError(errno.EIO) from None
    return handler


_REPORTED: dict[str, float] = {}
REPORT_AGAIN_SECONDS = 600


def _report_corrupt(op: str, exc: CorruptData) -> None:
    """One log line per damaged file, not one per kernel retry or read-ahead request."""
    text = str(exc)
    now = time.monotonic()
    if now - _REPORTED.get(text, -REPORT_AGAIN_SECONDS) >= REPORT_AGAIN_SECONDS:
        if len(_REPORTED) > 10000:
            _REPORTED.clear()
        _REPORTED[text] = now
        log.error("%s: %s", op, exc)


def _raise_open_file_limit() -> None:
    """Each open file holds one backing descriptor: allow as many as the hard limit."""
    import resource
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def _recover_interrupted_writes(vault_root: str, read_only: bool) -> None:
    """Roll back what a killed daemon left half-written, before anything is read.
    Never fatal: a record that cannot be applied leaves its file failing
    authentication (EIO), as it would without the record."""
    try:
        if read_only:
            for path in undo.left_behind(vault_root):
                log.warning("%s: an interrupted write is pending: its file fails authentication until a "
                            "read-write mount or 'e2efs fsck --repair' rolls it back", path)
            return
        for line in undo.recover(vault_root):
            log.warning("%s", line)
    except OSError as exc:
        log.error("interrupted writes could not be rolled back: %s", exc)


def _times(st: os.stat_result) -> tuple[int, int]:
    return st.st_atime_ns, st.st_mtime_ns


def _absent_entry() -> pyfuse3.EntryAttributes:
    """A lookup miss the kernel may cache like a hit (inode 0): SQLite looks for
    its -journal and -wal several times per transaction; our own creates and
    unlinks update the kernel's entry themselves."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = 0
    a.entry_timeout = TIMEOUT
    return a


_ABSENT = _absent_entry()


def _fail(code: int):
    raise FUSEError(code)


class Operations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, tree: Tree, read_only: bool = False, check_permissions: bool = False):
        """``check_permissions``: the kernel does not (no ``default_permissions``)."""
        super().__init__()
        self.tree = tree
        if not read_only and vault_read_only(tree.root.path):
            log.warning("the vault folder %s is read-only: mounting read-only", tree.root.path)
            read_only = True
        _recover_interrupted_writes(tree.root.path, read_only)
        self._gone_reported = False
        _raise_open_file_limit()
        self.read_only = read_only
        self.inodes = InodeTable(tree)
        self.files = OpenFiles(tree, self.inodes, read_only)
        self.invalidator = EntryInvalidator()      # the daemon stops it before it stops answering
        self.last_access = time.monotonic()
        self._dir_handles: dict[int, tuple[int, list[bytes] | None, bool]] = {}
        self._next_dir_handle = 1
        self._owner = os.geteuid() == 0
        self.check_permissions = check_permissions

    # -- helpers --------------------------------------------------------------

    def vault_gone(self) -> bool:
        """The vault folder itself vanished (sync client removed it, drive unplugged):
        every request fails with EIO, logged once, until it is back."""
        if os.path.isdir(self.tree.root.path):
            self._gone_reported = False
            return False
        if not self._gone_reported:
            self._gone_reported = True
            log.error("the vault folder %s disappeared: every access fails with EIO until it is back",
                      self.tree.root.path)
        return True

    def on_quiet(self) -> float | None:
        """Work for a pause in the requests (requestloop.py): settled undo records
        are cut to 0 bytes, so the sync client uploads none of their old blocks, and
        listings are confirmed (Tree.confirm_quiet, whose wait this returns)."""
        self.files.records.trim()
        return self.tree.confirm_quiet()

    def _writable(self) -> None:
        if self.read_only:
            raise FUSEError(errno.EROFS)

    def _child(self, parent: int, name: bytes) -> Node:
        node = self.inodes.child(parent, name)
        return node if node is not None else _fail(errno.ENOENT)

    def _absent(self, parent: int, name: bytes, folder: os.stat_result | None = None) -> None:
        check_name(name)
        if self.inodes.child(parent, name, folder) is not None:
            raise FUSEError(errno.EEXIST)

    def _stat(self, node: Node) -> os.stat_result:
        of = self.files.files.get(node.ino)
        return os.fstat(of.fd) if of else os.lstat(self.inodes.path(node))

    def _require(self, node: Node, want: int, caller: Caller,
                 st: os.stat_result | None = None) -> os.stat_result | None:
        """The node's stat when checked (None when the kernel checks); ``st``: one
        just made."""
        if not self.check_permissions:
            return None
        st = st or self._stat(node)
        if not permissions.may(st, want, caller):
            raise FUSEError(errno.EACCES)
        return st

    def _may_add(self, parent: int, caller: Caller, folder: os.stat_result | None = None) -> None:
        """A name may be added to the folder (or it may lose one that is not sticky)."""
        self._require(self.inodes.get(parent), WRITE | EXEC, caller, folder)

    def _may_create(self, parent: int, name: bytes, ctx) -> None:
        """``name`` is free in the folder and the caller may add it: EEXIST before
        EACCES, as Linux answers.  One backing stat of the folder serves the
        check and the validation of its listing."""
        folder = self._stat(self.inodes.get(parent)) if self.check_permissions else None
        self._absent(parent, name, folder)
        self._may_add(parent, Caller(ctx), folder)

    def _may_remove(self, parent: int, node: Node, caller: Caller) -> None:
        folder = self._require(self.inodes.get(parent), WRITE | EXEC, caller)
        if (folder is not None and folder.st_mode & stat.S_ISVTX
                and not permissions.sticky_allows(folder, self._stat(node), caller)):
            raise FUSEError(errno.EPERM)

    def _chown(self, path_or_fd, ctx) -> None:
        if self._owner:
            os.chown(path_or_fd, ctx.uid, ctx.gid)

    def _attrs(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        """``st``: the backing (l)stat if the caller has just made it."""
        of = self.files.files.get(node.ino)
        if st is None:
            st = os.fstat(of.fd) if of else os.lstat(self.inodes.path(node))
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        if node.kind is Kind.DIR:
            a.st_mode, size = stat.S_IFDIR | stat.S_IMODE(st.st_mode), st.st_size
        else:
            size = of.content.size if of else (self.tree.layout.plaintext_size(st.st_size) or 0)
            if node.kind is Kind.SYMLINK:
                a.st_mode = stat.S_IFLNK | 0o777
            elif node.kind is Kind.NODE:
                fmt, a.st_rdev = self._special(node)
                a.st_mode, size = fmt | stat.S_IMODE(st.st_mode), 0
            else:
                a.st_mode = stat.S_IFREG | stat.S_IMODE(st.st_mode)
        a.st_size = size
        a.st_nlink = st.st_nlink
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        if of and of.times:
            a.st_atime_ns = of.times[0]
            if of.times[1] is not None:
                a.st_mtime_ns = of.times[1]
        a.st_blksize = self.tree.layout.block_size
        a.st_blocks = -(-size // 512)
        a.attr_timeout = a.entry_timeout = TIMEOUT
        return a

    def _special(self, node: Node) -> tuple[int, int]:
        if node.special is None:
            node.special = self.tree.node_info(self.inodes.dir(node.link[0]), self.inodes.entry(node, node.link))
        return node.special

    def _looked_up(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        attrs = self._attrs(node, st)
        self.inodes.looked_up(node)
        self._forget_old_files()
        return attrs

    def _forget_old_files(self) -> None:
        """Keep the daemon's memory bounded however many files the kernel holds
        (inodes.MAX_FILE_NODES): it is asked to drop the oldest entries, and its
        FORGETs free their nodes."""
        for parent, name in self.inodes.to_forget(self.files.files):
            self.invalidator.ask(parent, name)

    def _new_entry(self, parent: int, name: bytes, entry, ctx) -> pyfuse3.EntryAttributes:
        """Register an entry this mount just created and answer with its attributes."""
        d = self.inodes.dir(parent)
        path = self.tree.path(d, entry)
        self._chown(path, ctx)
        node = self.inodes.new(entry.kind, entry.dir_id)
        self.inodes.set_backing(node, os.lstat(path).st_ino)
        self.inodes.add_link(node, (parent, name), entry.backing)
        return self._looked_up(node)

    def _commit_pending(self, node: Node) -> None:
        if node.temp is not None:
            self.files.commit(self.files.get(node.ino))

    # -- lookup and attributes ----------------------------------------------------

    @_guarded
    def lookup(self, parent_inode, name, ctx):
        if name == b".":
            return self._looked_up(self.inodes.get(parent_inode))
        if name == b"..":
            node = self.inodes.get(parent_inode)
            return self._looked_up(self.inodes.get(node.link[0]) if node.links else node)
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        caller = Caller(ctx)
        folder = self._require(self.inodes.get(parent_inode), EXEC, caller)
        node, st = self.inodes.child_and_stat(parent_inode, name, folder=folder)
        if folder is not None and not permissions.by_mode(folder, EXEC, caller):
            # let in only by a privilege (a capability, a supplementary group) another
            # of the mounter's processes may lack: the kernel must not cache the answer
            if node is None:
                raise FUSEError(errno.ENOENT)
            attrs = self._looked_up(node, st)
            attrs.entry_timeout = 0
            return attrs
        return self._looked_up(node, st) if node is not None else _ABSENT

    async def forget(self, inode_list):
        for ino, count in inode_list:
            try:
                self.inodes.forget(ino, count, ino in self.files.files)
            except Exception:
                log.exception("forget failed")

    @_guarded
    def getattr(self, inode, ctx):
        return self._attrs(self.inodes.get(inode))

    @_guarded
    def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        node = self.inodes.get(inode)
        of = self.files.files.get(inode)
        target = of.fd if of else self.inodes.path(node)
        checked = None      # with fh: ftruncate(2), checked at open, or the kernel writing back its times
        if self.check_permissions and fh is None:
            checked = self._may_setattr(node, attr, fields, Caller(ctx))
        if fields.update_size:
            if node.kind is not Kind.FILE:
                raise FUSEError(errno.EINVAL)
            if of:
                self.files.make_writable(of)
                of.content.truncate(attr.st_size)
            else:
                # no undo record: one would need room the disk may not have, and
                # truncating is how a full disk gets room back
                content = self.tree.open_content(target, writable=True)
                try:
                    content.truncate(attr.st_size)
                    content.flush()             # a growth waits in memory otherwise
                finally:
                    os.close(content.fd)
        if fields.update_mode and node.kind is not Kind.SYMLINK:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(target, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1)
        # a stat made since the last change on disk (an open file's times wait in memory)
        current = None if fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid else checked
        if fields.update_atime or fields.update_mtime:
            if fields.update_atime and fields.update_mtime:
                times = (attr.st_atime_ns, attr.st_mtime_ns)
            else:
                if of and of.times:
                    old = of.times
                elif checked is not None and not fields.update_size:
                    old = _times(checked)       # a chmod or chown leaves the times as the check saw them
                else:
                    current = os.stat(target)
                    old = _times(current)
                times = (attr.st_atime_ns if fields.update_atime else old[0],
                         attr.st_mtime_ns if fields.update_mtime else old[1])
            if of:
                of.times = times        # set on the backing file after its last flush
            else:
                os.utime(target, ns=times)
                current = None
        return self._attrs(node, current)

    def _may_setattr(self, node: Node, attr, fields, caller: Caller) -> os.stat_result:
        """As the kernel's ``setattr_prepare``; may take the setgid bit out of ``attr``.
        Returns the node's stat the checks were made on."""
        st = self._stat(node)
        chown = fields.update_uid or fields.update_gid
        if fields.update_size and not permissions.may(st, WRITE, caller):
            raise FUSEError(errno.EACCES)
        if chown and not permissions.may_chown(
                st, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1, caller):
            raise FUSEError(errno.EPERM)
        if fields.update_mode:      # with a chown: the kernel's own removal of setuid/setgid
            if not (permissions.may_chmod(st, attr.st_mode, caller)
                    or chown and permissions.takes_setid_away(st, attr.st_mode)):
                raise FUSEError(errno.EPERM)
            attr.st_mode = permissions.chmod_mode(st, attr.st_mode, caller)
        times = [t for t, update in ((attr.st_atime_ns, fields.update_atime),
                                     (attr.st_mtime_ns, fields.update_mtime)) if update]
        if times:
            refused = permissions.times_refused(st, times, caller)
            if refused:
                raise FUSEError(refused)
        return st

    @_guarded
    def access(self, inode, mode, ctx):
        return mode == os.F_OK or permissions.may(self._stat(self.inodes.get(inode)), mode, Caller(ctx))

    @_guarded
    def readlink(self, inode, ctx):
        node = self.inodes.get(inode)
        if node.kind is not Kind.SYMLINK:
            raise FUSEError(errno.EINVAL)
        return self.tree.read_all(self.inodes.path(node))

    @_guarded
    def statfs(self, ctx):
        sv = os.statvfs(self.tree.root.path)
        s = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(s, field, getattr(sv, field))
        s.f_namemax = 255
        return s

    # -- directories --------------------------------------------------------------

    @_guarded
    def opendir(self, inode, ctx):
        node = self.inodes.get(inode)
        if node.kind is not Kind.DIR:
            raise FUSEError(errno.ENOTDIR)
        caller = Caller(ctx)
        st = self._require(node, READ, caller)
        shared = st is None or permissions.by_mode(st, EXEC, caller)
        fh = self._next_dir_handle
        self._next_dir_handle += 1
        self._dir_handles[fh] = (inode, None, shared)      # listed at the first readdir: an fsync needs none
        return fh

    @_guarded
    def readdir(self, fh, start_id, token):
        parent, names, shared = self._dir_handles[fh]
        listing = self.tree.entries(self.inodes.dir(parent))
        if names is None:       # the snapshot this handle's offsets index into
            names = sorted(listing.keys() | self.inodes.pending_names(parent))
            self._dir_handles[fh] = (parent, names, shared)
        for i in range(start_id, len(names)):
            node, st = self.inodes.child_and_stat(parent, names[i], listing)
            if node is None:
                continue                    # removed since opendir
            attrs = self._attrs(node, st)
            if not shared:      # the kernel must ask before it uses the name (see lookup)
                attrs.entry_timeout = 0
            if not pyfuse3.readdir_reply(token, names[i], attrs, i + 1):
                if node.lookups == 0 and node.ino not in self.files.files:
                    self.inodes.evict(node)
                break
            self.inodes.looked_up(node)
        self._forget_old_files()

    @_guarded
    def releasedir(self, fh):
        self._dir_handles.pop(fh, None)

    @_guarded
    def fsyncdir(self, fh, datasync):
        """Renames and unlinks in the folder become durable (an atomic save's last step)."""
        if not self.read_only:
            fsync_dir(self.inodes.dir(self._dir_handles[fh][0]).path)

    @_guarded
    def mkdir(self, parent_inode, name, mode, ctx):
        self._writable()
        self._may_create(parent_inode, name, ctx)
        entry = self.tree.mkdir(self.inodes.dir(parent_inode), name, stat.S_IMODE(mode))
        return self._new_entry(parent_inode, name, entry, ctx)

    @_guarded
    def rmdir(self, parent_inode, name, ctx):
        self._writable()
        node = self._child(parent_inode, name)
        if node.kind is not Kind.DIR:
            raise FUSEError(errno.ENOTDIR)
        self._may_remove(parent_inode, node, Caller(ctx))
        d = self.inodes.dir(node.ino)
        if self.tree.entries(d) or self.inodes.pending_names(node.ino):
            raise FUSEError(errno.ENOTEMPTY)
        self._remove_stray_temps(node.ino, d)
        self.tree.rmdir(self.inodes.dir(parent_inode), self.inodes.entry(node, (parent_inode, name)))
        self.inodes.drop_link(node, (parent_inode, name))

    def _remove_stray_temps(self, ino: int, d) -> None:
        """Temp files left by a crash must not make an empty directory unremovable."""
        in_use = {n.temp[1] for n in (of.node for of in self.files.files.values()) if n.temp and n.temp[0] == ino}
        if in_use:
            raise FUSEError(errno.ENOTEMPTY)
        for fname in os.listdir(d.path):
            if fname.startswith(TEMP_PREFIX):
                self.tree.discard_temp(d, os.path.join(d.path, fname))

    # -- names --------------------------------------------------------------------

    @_guarded
    def unlink(self, parent_inode, name, ctx):
        self._writable()
        node = self._child(parent_inode, name)
        if node.kind is Kind.DIR:
            raise FUSEError(errno.EISDIR)
        self._may_remove(parent_inode, node, Caller(ctx))
        link = (parent_inode, name)
        if node.links[link] is not None:
            self.files.settle(node)
            self.tree.remove(self.inodes.dir(parent_inode), self.inodes.entry(node, link))
        self._drop_name(node, link)

    @_guarded
    def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        self._may_create(parent_inode, name, ctx)
        entry = self.tree.symlink(self.inodes.dir(parent_inode), name, target)
        return self._new_entry(parent_inode, name, entry, ctx)

    @_guarded
    def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable()
        self._may_create(parent_inode, name, ctx)
        d = self.inodes.dir(parent_inode)
        if stat.S_ISREG(mode):
            entry = self.tree.write_file(d, name, [], mode=stat.S_IMODE(mode))
        else:
            entry = self.tree.mknod(d, name, mode, rdev)
        return self._new_entry(parent_inode, name, entry, ctx)

    @_guarded
    def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable()
        self._absent(new_parent_inode, new_name)
        node, caller = self.inodes.get(inode), Caller(ctx)
        if self.check_permissions and not permissions.may_hardlink(self._stat(node), caller):
            raise FUSEError(errno.EPERM)
        self._may_add(new_parent_inode, caller)
        self._commit_pending(node)
        if not node.links:
            raise FUSEError(errno.ENOENT)
        parent, _ = link = node.link
        entry = self.tree.link(self.inodes.dir(parent), self.inodes.entry(node, link),
                               self.inodes.dir(new_parent_inode), new_name)
        self.inodes.add_link(node, (new_parent_inode, new_name), entry.backing)
        return self._looked_up(node)

    @_guarded
    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        check_name(name_new)
        node = self._child(parent_inode_old, name_old)
        target = self.inodes.child(parent_inode_new, name_new)
        if target is node:
            return
        self._may_rename(parent_inode_old, node, parent_inode_new, target, Caller(ctx))
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            if target.kind is Kind.DIR and node.kind is not Kind.DIR:
                raise FUSEError(errno.EISDIR)
            if node.kind is Kind.DIR and target.kind is not Kind.DIR:
                raise FUSEError(errno.ENOTDIR)
            if target.kind is Kind.DIR and self.tree.entries(self.inodes.dir(target.ino)):
                raise FUSEError(errno.ENOTEMPTY)
            if target.kind is Kind.DIR:
                self._remove_stray_temps(target.ino, self.inodes.dir(target.ino))
        self._commit_pending(node)
        self.files.settle()
        old_link, new_link = (parent_inode_old, name_old), (parent_inode_new, name_new)
        moved = self.tree.rename(self.inodes.dir(parent_inode_old), self.inodes.entry(node, old_link),
                                 self.inodes.dir(parent_inode_new), name_new)
        self.inodes.add_link(node, new_link, moved.backing)
        self.inodes.drop_link(node, old_link)
        if target is not None:      # replaced (an uncommitted new file only in the table)
            self._drop_name(target, new_link)

    def _may_rename(self, old_parent: int, node: Node, new_parent: int, target: Node | None,
                    caller: Caller) -> None:
        self._may_remove(old_parent, node, caller)
        if target is not None:
            self._may_remove(new_parent, target, caller)
        else:
            self._may_add(new_parent, caller)
        if node.kind is Kind.DIR and new_parent != old_parent:
            self._require(node, WRITE, caller)         # its ".." changes

    def _drop_name(self, node: Node, link) -> None:
        """A name is gone: a node nobody holds is forgotten; an open file whose
        last name it was and that exists only as a temp file loses that file now."""
        self.inodes.drop_link(node, link)
        if node.ino not in self.files.files:
            if node.lookups == 0:
                self.inodes.evict(node)
        elif not node.links and node.temp is not None:
            try:
                self.files.orphan(node)
            except OSError as exc:      # release tries again
                log.warning("could not remove the temp file of an unlinked open file: %s", exc)

    # -- file content -------------------------------------------------------------

    @_guarded
    def create(self, parent_inode, name, mode, flags, ctx):
        self._writable()
        self._may_create(parent_inode, name, ctx)
        node = self.inodes.new(Kind.FILE)
        owner = (ctx.uid, ctx.gid) if self._owner else None
        try:
            self.files.open_new(node, parent_inode, stat.S_IMODE(mode), owner)
        except BaseException:
            self.inodes.evict(node)
            raise
        self.inodes.add_link(node, (parent_inode, name), None)
        return pyfuse3.FileInfo(fh=node.ino), self._looked_up(node)

    @_guarded
    def open(self, inode, flags, ctx):
        node = self.inodes.get(inode)
        if node.kind is not Kind.FILE:
            raise FUSEError(errno.EINVAL if node.kind is Kind.DIR else errno.ENXIO)
        access = flags & os.O_ACCMODE
        if flags & FMODE_EXEC:      # execve(2): a program may be run without being readable
            want = EXEC
        else:
            want = ((READ if access != os.O_WRONLY else 0)
                    | (WRITE if access != os.O_RDONLY or flags & os.O_TRUNC else 0))
        checked = self._require(node, want, Caller(ctx))
        is_open = inode in self.files.files
        backing = None if is_open else checked      # the backing lstat, if the check made one
        truncate = flags & os.O_TRUNC       # O_RDONLY too: Linux truncates, and the kernel already has
        if truncate and not self.read_only and not is_open and node.links:
            st = backing = backing or os.lstat(self.inodes.path(node))
            if st.st_nlink == 1:         # new content goes to a temp file; the old stays until commit
                try:
                    self.files.open_new(node, node.link[0], stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))
                    return pyfuse3.FileInfo(fh=inode)
                except PermissionError:     # a folder the daemon may not add to: in place, as with hard links
                    pass
        # The kernel may keep its cached pages only if the ciphertext is still what
        # this mount last wrote or read: a sync client's (or an attacker's) change
        # must be read, and authenticated, afresh.
        keep = is_open or (node.cache_sig is not None
                           and node.cache_sig == backing_signature(backing or os.lstat(self.inodes.path(node))))
        of = self.files.open(node, write=access != os.O_RDONLY or bool(truncate))
        if truncate:
            try:
                of.content.truncate(0)
            except BaseException:
                self._release_quietly(inode)     # a failed open gets no RELEASE
                raise
        return pyfuse3.FileInfo(fh=inode, keep_cache=keep)

    def _release_quietly(self, ino: int) -> None:
        try:
            self.files.release(ino)
        except Exception as exc:
            log.error("closing the file of inode %d after a failed open: %s", ino, exc)

    @_guarded
    def read(self, fh, off, size):
        return self.files.get(fh).content.read(off, size)

    @_guarded
    def write(self, fh, off, buf):
        self._writable()
        of = self.files.get(fh)
        if of.times is not None:        # a write moves the mtime to now, not an atime set before it
            of.times = (of.times[0], None)
        return of.content.write(off, buf)

    @_guarded
    def flush(self, fh):
        """close(2) waits for this (release is asynchronous): a file is in the
        vault under its name once the program that wrote it has closed it."""
        if not self.read_only:
            self.files.commit(self.files.get(fh))

    @_guarded
    def fsync(self, fh, datasync):
        if self.read_only:
            return
        of = self.files.get(fh)
        pending = of.node.temp is not None
        of.content.fsync()
        self.files.commit(of)
        if pending and of.node.links:
            fsync_dir(self.inodes.dir(of.node.link[0]).path)

    @_guarded
    def release(self, fh):
        node = self.inodes.nodes.get(fh)
        links = list(node.links) if node is not None else []
        try:
            self.files.release(fh)
        except ChangeLost as lost:       # the kernel holds the lost version's size and pages
            self.inodes.retire(node)
            try:
                pyfuse3.invalidate_inode(fh, attr_only=True)     # a stat now meets ESTALE, not the lost size
            except OSError:
                pass
            for parent, name in links:
                self.invalidator.ask(parent, name)
            raise lost.__cause__ from None
