"""The inode table: FUSE inode numbers to entries of the ciphertext tree.

A node remembers only its links (parent inode, plaintext name -> backing
name), never a full path: paths are rebuilt by walking parents, so renaming a
directory rewrites nothing below it.  Inode numbers are our own counter; the
backing file's st_ino maps to them, so hard links share one inode and a file
whose content was replaced by a committed temporary file keeps its number.
"""

import errno
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import pyfuse3

from ..names import ROOT_DIR_ID, Kind
from ..tree import Dir, Entry, Tree

Link = tuple[int, bytes]            # (parent inode, plaintext name)

# The kernel keeps an inode, and so we keep a node (~1.1 KB), for every file
# it has looked up, until memory pressure: 100,000 files written would hold
# ~120 MiB of the daemon's (locked) memory.  Past this many file nodes the
# kernel is asked to drop the least recently used ones' entries, and its
# FORGETs free them.
MAX_FILE_NODES = int(os.environ.get("E2EFS_TEST_MAX_FILE_NODES", 20_000))     # the variable: tests only
FORGET_BATCH = max(1, MAX_FILE_NODES // 10)


def backing_signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies a backing file's ciphertext without reading it."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(eq=False)
class Node:
    ino: int
    kind: Kind
    dir_id: bytes | None = None
    # backing name per link; None while a new file exists only as its temp file
    links: dict[Link, str | None] = field(default_factory=dict)
    lookups: int = 0
    temp: tuple[int, str] | None = None   # (parent inode, temp name) until committed
    backing_ino: int | None = None
    special: tuple[int, int] | None = None   # (file type bits, rdev) of a NODE
    # backing (st_ino, size, mtime, ctime) when the last handle closed: the kernel's
    # page cache is kept on the next open only if the ciphertext is unchanged
    cache_sig: tuple[int, int, int, int] | None = None

    @property
    def link(self) -> Link:
        return next(iter(self.links))


class InodeTable:
    def __init__(self, tree: Tree):
        self.tree = tree
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, Kind.DIR, ROOT_DIR_ID)}
        self._children: dict[Link, int] = {}
        self._pending: dict[int, set[bytes]] = {}     # parent -> names that are only temp files
        self._by_backing: dict[int, int] = {}
        self._dirs: dict[int, Dir] = {pyfuse3.ROOT_INODE: tree.root}
        self._retired: set[int] = set()        # numbers the kernel may still use, see ``retire``
        self._recent: OrderedDict[int, None] = OrderedDict()   # file nodes, least recently looked up first
        self._next = pyfuse3.ROOT_INODE + 1

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            if ino in self._retired:
                raise OSError(errno.ESTALE, f"inode {ino} was retired")
            raise FileNotFoundError(errno.ENOENT, f"inode {ino} is unknown")
        return node

    # -- paths --------------------------------------------------------------

    def dir(self, ino: int) -> Dir:
        """Kept per directory until any directory loses a link (rename, rmdir):
        every request needs one, and rebuilding it walks every parent."""
        d = self._dirs.get(ino)
        if d is None:
            node = self.get(ino)
            (parent, _), backing = next(iter(node.links.items()))
            d = self._dirs[ino] = Dir(os.path.join(self.dir(parent).path, backing), node.dir_id)
        return d

    def path(self, node: Node) -> str:
        """Where the node's bytes are now (its temp file while uncommitted)."""
        if node.temp is not None:
            return os.path.join(self.dir(node.temp[0]).path, node.temp[1])
        if node.ino == pyfuse3.ROOT_INODE:
            return self.tree.root.path
        for (parent, _), backing in node.links.items():
            if backing is not None:
                return os.path.join(self.dir(parent).path, backing)
        raise FileNotFoundError(errno.ENOENT, f"inode {node.ino} has no name left")

    def entry(self, node: Node, link: Link) -> Entry:
        return Entry(link[1], node.links[link], node.kind, node.dir_id)

    # -- finding and naming nodes ----------------------------------------------

    def child(self, parent: int, name: bytes, folder: os.stat_result | None = None) -> Node | None:
        """The node called ``name`` in ``parent`` (lookup count unchanged)."""
        return self.child_and_stat(parent, name, folder=folder)[0]

    def child_and_stat(self, parent: int, name: bytes, listing: dict[bytes, Entry] | None = None,
                       folder: os.stat_result | None = None) -> tuple[Node | None, os.stat_result | None]:
        """``child``, plus the backing lstat made to place a node not known yet,
        so its attributes cost no second one.  ``listing``: ``parent``'s entries
        when the caller has just validated them (readdir, once per batch);
        ``folder``: its backing stat, just made (the permission check's)."""
        ino = self._children.get((parent, name))
        if ino is not None:
            return self.nodes[ino], None
        d = self.dir(parent)
        if listing is None:
            listing = self.tree.entries(d, folder.st_mtime_ns if folder is not None else None)
        entry = listing.get(name)
        if entry is None:
            return None, None
        st = os.lstat(self.tree.path(d, entry))
        node = self.nodes.get(self._by_backing.get(st.st_ino, 0))
        if node is None or node.kind is not entry.kind:
            node = self.new(entry.kind, entry.dir_id)
            self.set_backing(node, st.st_ino)
        self.add_link(node, (parent, name), entry.backing)
        return node, st

    def new(self, kind: Kind, dir_id: bytes | None = None) -> Node:
        node = Node(self._next, kind, dir_id)
        self._next += 1
        self.nodes[node.ino] = node
        return node

    def set_backing(self, node: Node, backing_ino: int) -> None:
        if node.backing_ino is not None:
            self._by_backing.pop(node.backing_ino, None)
        node.backing_ino = backing_ino
        self._by_backing[backing_ino] = node.ino

    def add_link(self, node: Node, link: Link, backing: str | None) -> None:
        node.links[link] = backing
        self._children[link] = node.ino
        if backing is None:
            self._pending.setdefault(link[0], set()).add(link[1])
        else:
            self._not_pending(link)

    def _not_pending(self, link: Link) -> None:
        names = self._pending.get(link[0])
        if names is not None:
            names.discard(link[1])
            if not names:
                del self._pending[link[0]]

    def drop_link(self, node: Node, link: Link) -> None:
        node.links.pop(link, None)
        if node.kind is Kind.DIR:
            self._dirs = {pyfuse3.ROOT_INODE: self.tree.root}   # paths below it moved or vanished
        if self._children.get(link) == node.ino:
            del self._children[link]
            self._not_pending(link)
        if not node.links and node.backing_ino is not None:
            # the backing inode number may be reused by a new file from now on
            self._by_backing.pop(node.backing_ino, None)
            node.backing_ino = None

    def pending_names(self, parent: int) -> frozenset[bytes]:
        """Names of new files in ``parent`` that exist only as temp files (kept
        per parent: a listing must not walk every name the mount knows)."""
        return frozenset(self._pending.get(parent, ()))

    def looked_up(self, node: Node) -> None:
        """The kernel took one more reference to ``node`` (a lookup, a create, a
        readdirplus entry)."""
        node.lookups += 1
        if node.kind is not Kind.DIR:
            self._recent[node.ino] = None
            self._recent.move_to_end(node.ino)

    def to_forget(self, open_files) -> list[Link]:
        """Past ``MAX_FILE_NODES``, the links of the least recently looked-up file
        nodes for the kernel to drop (an open one goes to the back of the line
        instead); folders are not counted: their files pin them anyway."""
        if len(self._recent) <= MAX_FILE_NODES:
            return []
        links: list[Link] = []
        for _ in range(len(self._recent) - (MAX_FILE_NODES - FORGET_BATCH)):
            ino, _ = self._recent.popitem(last=False)
            if ino in open_files:
                self._recent[ino] = None
            else:
                links.extend(self.nodes[ino].links)
        return links

    def forget(self, ino: int, count: int, is_open: bool) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == pyfuse3.ROOT_INODE:
            self._retired.discard(ino)
            return
        node.lookups = max(0, node.lookups - count)
        if node.lookups == 0 and not is_open:
            self.evict(node)

    def retire(self, node: Node) -> None:
        """Drop a node whose number the kernel must stop using: it holds a size and
        pages the vault does not (a change lost to a full disk), and with the
        writeback cache it trusts its own size.  Requests on the number get
        ESTALE, on which open and stat look the name up afresh, and the name gets
        a new number showing what the vault holds."""
        self.evict(node)
        self._retired.add(node.ino)

    def evict(self, node: Node) -> None:
        """Drop a node the kernel no longer knows; the tree still holds it."""
        for link in list(node.links):
            self.drop_link(node, link)
        if node.backing_ino is not None:
            self._by_backing.pop(node.backing_ino, None)
        self.nodes.pop(node.ino, None)
        self._recent.pop(node.ino, None)
