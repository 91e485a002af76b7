"""The floor under e2efs's random 4 KiB row: pyfuse3 with e2efs's request loop
and nothing behind it.

Mounts one file, ``rand.bin`` (256 MiB unless --size), whose reads are answered
from a buffer in memory and whose writes are accepted and dropped: no crypto, no
disk, the same writeback cache and request loop as e2efs.  Run the bench's fio
job against it and against the peers, and what is left of e2efs's time per
operation is its own handler (docs/PERFORMANCE.md, thirteenth round).  Serves
until unmounted (``fusermount3 -u MOUNTPOINT``).
"""

import argparse
import errno
import os
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyfuse3  # noqa: E402
import trio  # noqa: E402

from e2efs.fs import requestloop  # noqa: E402

NAME = b"rand.bin"
FILE_INO = 2
PATTERN = os.urandom(1 << 20)


class Floor(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        a.st_size = 0 if ino == pyfuse3.ROOT_INODE else self.size
        a.st_nlink = 1
        a.st_blksize = 4096
        a.attr_timeout = a.entry_timeout = 1.0
        return a

    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INO)

    async def setattr(self, inode, attr, fields, fh, ctx):
        return self._attrs(inode)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        at = off % len(PATTERN)
        return PATTERN[at:at + size]

    async def write(self, fh, off, buf):
        return len(buf)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attrs(FILE_INO), 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mountpoint")
    p.add_argument("--size", type=int, default=256, help="size of rand.bin in MiB (default 256)")
    args = p.parse_args()
    pyfuse3.init(Floor(args.size << 20), args.mountpoint, {"fsname=floor", "subtype=floor"})
    try:
        trio.run(requestloop.serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
