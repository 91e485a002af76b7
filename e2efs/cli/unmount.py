"""unmount (lock) / status: the commands about live mounts.

They need no secret, so they import neither the crypto nor FUSE: only the
runtime registry.  What an unmount waits for is the daemon's exit, which
comes after every open file is flushed and committed and the key is wiped.
"""

import json
import os
import sys
import time

from ..errors import E2efsError, MountFailed, MountpointError, UsageError
from ..fs import registry
from ..fs.mountpoint import daemon_state, fstype, fusermount

UNMOUNT_WAIT_SECONDS = 120


def register(sub) -> None:
    for name in ("unmount", "lock"):
        u = sub.add_parser(name, help="flush everything, unmount and lock" + (" (same as unmount)" if name == "lock" else ""),
                           description="Wait until every write has reached the vault, unmount, and wipe the key "
                                       "from the daemon's memory. Example: e2efs lock --all")
        u.add_argument("mountpoint", nargs="?")
        u.add_argument("--all", action="store_true", help="every vault mounted by this user")
        u.set_defaults(func=cmd_unmount)
    s = sub.add_parser("status", help="list mounted vaults",
                       description="Mount point, vault, daemon pid and since when, for every live mount "
                                   "of this user. Needs no secret and shows none.")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_status)


def cmd_unmount(args) -> int:
    if args.all == bool(args.mountpoint):
        raise UsageError("name one mount point, or --all")
    if not args.all:
        return unmount(os.path.realpath(args.mountpoint))
    mounts = registry.live_mounts()
    if not mounts:
        print("no vault is mounted")
    failed = None
    for m in mounts:
        try:
            unmount(m["mountpoint"])
        except E2efsError as exc:        # lock the others anyway, report the first failure
            print(f"e2efs: {exc}", file=sys.stderr)
            failed = failed or exc
    if failed is not None:
        raise failed
    return 0


def unmount(mountpoint: str) -> int:
    kind = fstype(mountpoint)
    if kind is None:
        registry.remove(mountpoint)
        raise MountpointError(f"{mountpoint} is not mounted")
    if kind != "fuse.e2efs":     # another file system's, dead or alive, is not ours to touch
        raise MountpointError(f"{mountpoint} is not an e2efs mount")
    if daemon_state(mountpoint) == "stale":
        fusermount(mountpoint, lazy=True)
        registry.remove(mountpoint)
        print(f"cleaned the stale mount at {mountpoint} (its daemon had died)")
        return 0
    entry = registry.find(mountpoint)
    done = fusermount(mountpoint)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise MountpointError(f"cannot unmount {mountpoint}: {reason}")
    if entry is not None:
        if not registry.wait_exit(entry["pid"], UNMOUNT_WAIT_SECONDS):
            raise MountFailed(f"unmounted {mountpoint}, but its daemon (pid {entry['pid']}) is still writing")
        registry.remove(mountpoint)
    print(f"unmounted {mountpoint}")
    return 0


def cmd_status(args) -> int:
    mounts = registry.live_mounts()
    if args.json:
        json.dump(mounts, sys.stdout, indent=2)
        print()
        return 0
    if not mounts:
        print("no vault is mounted")
    for m in mounts:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["since"]))
        print(f"{m['mountpoint']}\t{m['vault']}\tpid {m['pid']}\tsince {since}")
    return 0
