"""The runtime registry of live mounts, for ``e2efs status`` and ``unmount``.

One JSON file per mount in a per-user runtime directory (never synced, gone
at reboot).  Entries whose daemon died are dropped when read.
"""

import hashlib
import json
import os
import select
import time

from .mountpoint import is_mounted


def runtime_dir() -> str:
    base = os.environ.get("E2EFS_RUNTIME_DIR")
    if not base:
        if os.geteuid() == 0:
            base = "/run/e2efs"
        elif os.environ.get("XDG_RUNTIME_DIR"):
            base = os.path.join(os.environ["XDG_RUNTIME_DIR"], "e2efs")
        else:
            base = f"/tmp/e2efs-{os.getuid()}"
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def _file(mountpoint: str) -> str:
    key = hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{key}.json")


def log_path(mountpoint: str) -> str:
    return _file(mountpoint)[:-len(".json")] + ".log"


def add(mountpoint: str, vault: str, pid: int, log: str | None) -> None:
    doc = {"mountpoint": mountpoint, "vault": vault, "pid": pid, "since": time.time(), "log": log}
    tmp = _file(mountpoint) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, _file(mountpoint))


def remove(mountpoint: str, pid: int | None = None) -> None:
    """Drop the entry (only if it is ``pid``'s, when given)."""
    entry = find(mountpoint, prune=False)
    if entry is not None and (pid is None or entry["pid"] == pid):
        try:
            os.unlink(_file(mountpoint))
        except FileNotFoundError:
            pass


def find(mountpoint: str, prune: bool = True) -> dict | None:
    try:
        with open(_file(mountpoint)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if prune and not _live(entry):
        remove(mountpoint)
        return None
    return entry


def live_mounts() -> list[dict]:
    found = []
    for fname in sorted(os.listdir(runtime_dir())):
        if fname.endswith(".json"):
            try:
                with open(os.path.join(runtime_dir(), fname)) as f:
                    mountpoint = json.load(f)["mountpoint"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            entry = find(mountpoint)
            if entry is not None:
                found.append(entry)
    return found


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie counts); False on timeout.  A
    pidfd wakes us the moment it exits; polling /proc is only for kernels
    before 5.3, which have no pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _live(entry: dict) -> bool:
    return process_alive(entry.get("pid", 0)) and is_mounted(entry.get("mountpoint", "")) == "live"
