"""mount: check the mount point and fork; the parent asks for the secret and
unlocks (a wrong secret fails at once) while the child, the daemon, locks its
memory and imports pyfuse3 and trio (~0.15 s, hidden behind the typing and
the KDF).  The child receives the key through a pipe, mounts and reports
through another; the parent returns to the shell only once the mount is live,
or prints the child's one-line error.  The parent never loads pyfuse3 or trio.
"""

import argparse
import contextlib
import logging
import os
import re
import shutil
import sys
from typing import NoReturn

from .. import memlock
from ..crypto import MASTER_KEY_LEN
from ..errors import E2efsError, FuseUnavailable, MountFailed, MountpointError, UsageError
from ..fs import registry
from ..fs.mountpoint import fusermount, is_mounted, vault_read_only
from ..vault import LockedVault, Vault
from .common import is_within
from .main import no_gc
from .secrets import add_secret_options, unlock_with_secret

log = logging.getLogger("e2efs")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 60, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_idle(text: str) -> float:
    """'15m', '30s', '2h', '0' (never); a bare number is minutes."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m:
        raise UsageError(f"not a duration: {text!r} (examples: 30s, 15m, 2h)")
    return float(m[1]) * _UNIT_SECONDS[m[2]]


def register(sub) -> None:
    p = sub.add_parser(
        "mount", help="unlock a vault and mount it as a folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Unlock VAULT and show its plaintext at MOUNTPOINT (an empty folder); any program\n"
                    "reads and writes there, and only ciphertext reaches VAULT. Returns to the shell\n"
                    "once the mount is live; 'e2efs unmount MOUNTPOINT' flushes and locks.\n\n"
                    "example:\n  e2efs mount ~/Drive/chats-vault ~/ChatBackup --idle 15m\n\n"
                    "New files and files rewritten from scratch reach the vault by an atomic rename\n"
                    "when closed, so a crash keeps the previous version. It never mounts over a\n"
                    "non-empty folder, and never writes the key anywhere (memory is locked where\n"
                    "allowed; the key is wiped at unmount).")
    p.add_argument("vault", help="the vault folder")
    p.add_argument("mountpoint", help="an empty folder where the plaintext appears")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground until unmounted")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("--idle", metavar="TIME", default="0", help="lock after TIME without access (e.g. 15m; 0 = never)")
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount (needs user_allow_other)")
    p.add_argument("--log", metavar="FILE", help="append the daemon's log to FILE")
    add_secret_options(p)
    p.set_defaults(func=cmd_mount)


# -- mount --------------------------------------------------------------------

def check_fuse() -> None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        raise FuseUnavailable(f"FUSE is not available: cannot open /dev/fuse ({exc.strerror})") from None
    if shutil.which("fusermount3") is None:
        raise FuseUnavailable("FUSE is not available: fusermount3 not found (install the fuse3 package)")


def check_mountpoint(mountpoint: str) -> None:
    state = is_mounted(mountpoint)
    if state == "stale":
        log.warning("cleaning a stale mount at %s", mountpoint)
        fusermount(mountpoint, lazy=True)
        state = is_mounted(mountpoint)
    if state is not None:
        raise MountpointError(f"{mountpoint} is already a mount point")
    if not os.path.exists(mountpoint):
        raise MountpointError(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountpointError(f"mount point {mountpoint} is not a directory")
    try:
        if os.listdir(mountpoint):
            raise MountpointError(f"mount point {mountpoint} is not empty")
    except PermissionError:
        raise MountpointError(f"mount point {mountpoint} is not readable") from None


def _setup_log(path: str | None) -> None:
    logger = logging.getLogger("e2efs")
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s e2efs[%(process)d] %(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _daemon_process(log_file: str | None):
    """Make this process the one that serves the mount: its log, then its
    memory locked, then the daemon module (~0.15 s of imports) returned."""
    _setup_log(log_file)
    memlock.protect()
    return _import_daemon()


def _import_daemon():
    """The daemon module; its imports are most of the mount's critical path.
    Two of the dependencies' import-time look-ups are answered without the
    machinery they would start (same answers, ~25 ms less): trio's libpthread
    search and pyfuse3's version.  Before any chdir: a relative sys.path entry
    still finds the modules."""
    with no_gc(), _pthread_without_ldconfig():
        import trio  # noqa: F401  (before pyfuse3, outside the stand-in below)
        with _version_without_metadata():
            import pyfuse3  # noqa: F401
        from ..fs import daemon
    return daemon


@contextlib.contextmanager
def _pthread_without_ldconfig():
    """trio, to name its threads, calls ``ctypes.util.find_library("pthread")``
    at import, which runs ``ldconfig -p`` in a subprocess (~6 ms).  glibc's
    libpthread.so.0 is loaded by name by the dynamic loader itself (it reads
    the same ld.so.cache); where that fails (musl), the lookup runs as before."""
    import ctypes.util
    find_library = ctypes.util.find_library

    def find_pthread_first(name):
        if name == "pthread":
            try:
                ctypes.CDLL("libpthread.so.0")
                return "libpthread.so.0"
            except OSError:
                pass
        return find_library(name)
    ctypes.util.find_library = find_pthread_first
    try:
        yield
    finally:
        ctypes.util.find_library = find_library


class _PackageNotFound(ModuleNotFoundError):
    pass


@contextlib.contextmanager
def _version_without_metadata():
    """pyfuse3 sets its ``__version__`` at import with
    ``importlib.metadata.version("pyfuse3")``, and importing importlib.metadata
    (email, zipfile, csv, importlib.resources) costs ~20 ms, more than pyfuse3
    itself.  For that import only, a stand-in module answers ``version`` from
    the package's ``*.dist-info/METADATA`` on sys.path; anything else it is
    asked for, or a package it does not find, goes to the real module."""
    import importlib
    import types

    loaded = []

    def real():
        if not loaded:
            del sys.modules["importlib.metadata"]
            try:
                loaded.append(importlib.import_module("importlib.metadata"))
            finally:
                sys.modules["importlib.metadata"] = stand_in
        return loaded[0]

    def version(name: str) -> str:
        found = _dist_info_version(name)
        if found is not None:
            return found
        try:
            return real().version(name)
        except ModuleNotFoundError:         # the real PackageNotFoundError
            raise _PackageNotFound(name) from None

    class StandIn(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):       # the import system asks for __path__ and such
                raise AttributeError(attr)
            return getattr(real(), attr)

    if "importlib.metadata" in sys.modules or hasattr(importlib, "metadata"):    # already paid for
        yield
        return
    stand_in = StandIn("importlib.metadata")
    stand_in.PackageNotFoundError = _PackageNotFound
    stand_in.version = version
    sys.modules["importlib.metadata"] = stand_in
    importlib.metadata = stand_in           # for "import importlib.metadata" + attribute access
    try:
        yield
    finally:
        if sys.modules.get("importlib.metadata") is stand_in:
            if loaded:
                sys.modules["importlib.metadata"] = importlib.metadata = loaded[0]
            else:
                del sys.modules["importlib.metadata"]
                del importlib.metadata


def _dist_info_version(name: str) -> str | None:
    """The Version header of the first ``NAME-*.dist-info`` on sys.path, or
    None (importlib.metadata also reads .egg-info and asks custom finders)."""
    prefix = re.sub(r"[-_.]+", "_", name).lower() + "-"
    for entry in sys.path:
        try:
            found = sorted(n for n in os.listdir(entry or ".")
                           if n.lower().startswith(prefix) and n.endswith(".dist-info"))
        except OSError:
            continue
        for folder in found:
            try:
                with open(os.path.join(entry or ".", folder, "METADATA"), encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
                        if not line.strip():
                            break       # end of the headers
            except OSError:
                continue
    return None


def cmd_mount(args) -> int:
    vault_root = os.path.abspath(args.vault)
    mountpoint = os.path.realpath(args.mountpoint)
    idle = parse_idle(args.idle)
    check_fuse()
    if is_within(mountpoint, vault_root) or is_within(vault_root, mountpoint):
        # a sync client walking the vault folder would upload the plaintext the mount shows
        raise MountpointError(f"mount point {mountpoint} and the vault {vault_root} must not be inside each other")
    check_mountpoint(mountpoint)
    locked = LockedVault.read(vault_root)
    warnings = []
    if not args.read_only and vault_read_only(vault_root):
        warnings.append(f"the vault folder {vault_root} is read-only: mounting read-only")
        args.read_only = True
    log_file = os.path.abspath(args.log) if args.log else None
    options = dict(read_only=args.read_only, allow_other=args.allow_other, idle_seconds=idle)

    def unlock() -> Vault:
        vault = unlock_with_secret(args, locked)[0]
        for warning in vault.warnings + warnings:      # after the secret: a wrong one is the only message
            print(f"e2efs: warning: {warning}", file=sys.stderr)
        return vault

    if args.foreground:
        vault = unlock()
        daemon = _daemon_process(log_file)

        def ready():
            registry.add(mountpoint, vault_root, os.getpid(), log_file)
            print(f"mounted {vault_root} at {mountpoint}", flush=True)
        try:
            daemon.run(vault, mountpoint, ready=ready, **options)
        finally:
            registry.remove(mountpoint, os.getpid())
        return 0
    _daemonize(unlock, locked, vault_root, mountpoint, log_file or registry.log_path(mountpoint), options)


def _daemonize(unlock, locked: LockedVault, vault_root: str, mountpoint: str, log_file: str,
               options: dict) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    key_r, key_w = os.pipe()
    report_r, report_w = os.pipe()
    if os.fork() == 0:
        os.close(key_w)
        os.close(report_r)
        os._exit(_child(locked, vault_root, mountpoint, log_file, options, key_r, report_w))
    os.close(key_r)
    os.close(report_w)
    with os.fdopen(key_w, "wb", buffering=0) as key_pipe:   # closed without a key, the daemon just exits
        master = unlock().keys.master
        try:
            key_pipe.write(master)
        except BrokenPipeError:
            pass                # the daemon failed already: its report says why
    with os.fdopen(report_r, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    code, _, message = report.partition(" ")
    if not code:
        raise MountFailed(f"the mount daemon exited before mounting; see {log_file}")
    if code == "0":
        print(f"mounted {vault_root} at {mountpoint}")
    else:
        print(f"e2efs: {message}", file=sys.stderr)
    _leave(int(code))


def _leave(code: int) -> NoReturn:
    """Exit the way a daemonizing parent does, without tearing the interpreter
    down: its memory is shared copy-on-write with the daemon, and the teardown
    writes to most of it (~2500 page copies, ~30 ms) with nothing left to do."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _child(locked, vault_root, mountpoint, log_file, options, key_fd, report_fd) -> int:
    """The daemon process: never returns into the CLI, reports once through
    ``report_fd``.  Without a key (a wrong secret, an interrupted prompt) it
    exits quietly: the mount command says why."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        daemon = _daemon_process(log_file)
        os.chdir("/")
        master = os.read(key_fd, MASTER_KEY_LEN + 1)      # one write of the key: atomic on a pipe
        os.close(key_fd)
        if len(master) != MASTER_KEY_LEN:
            log.info("the vault was not unlocked: not mounting")
            return 0
        vault = locked.unlock_with_key(master)

        def ready():
            registry.add(mountpoint, vault_root, os.getpid(), log_file)
            os.write(report_fd, b"0 ok")
            os.close(report_fd)
        try:
            daemon.run(vault, mountpoint, ready=ready, **options)
        finally:
            registry.remove(mountpoint, os.getpid())
        return 0
    except E2efsError as exc:
        _report(report_fd, f"{exc.exit_code} {exc}")
        return exc.exit_code
    except BaseException as exc:
        logging.getLogger("e2efs").exception("daemon failed")
        _report(report_fd, f"{MountFailed.exit_code} the mount daemon failed: {type(exc).__name__}")
        return MountFailed.exit_code


def _report(wfd: int, text: str) -> None:
    try:
        os.write(wfd, text.encode())
        os.close(wfd)
    except OSError:
        pass                # already reported "ok"
