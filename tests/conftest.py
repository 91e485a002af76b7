"""Real mounts for tests: the actual ``e2efs mount`` in a subprocess.

Every mount is unmounted and every daemon stopped in teardown, even when the
test fails: fusermount3 -u, then -u -z, then terminate, then kill.
"""

import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from e2efs.fs.mountpoint import is_mounted
from e2efs.vault import KdfParams, Vault

PASSWORD = b"correct horse battery staple 42"
MOUNT_TIMEOUT = 20


def _fuse_missing() -> str | None:
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    return None


class Mount:
    """One vault and its mount point; ``mount()``/``unmount()`` may repeat."""

    def __init__(self, tmp_path, runtime_dir):
        self.vault = str(tmp_path / "vault")
        self.path = str(tmp_path / "mnt")
        self.password_file = str(tmp_path / "password")
        self.log = str(tmp_path / "e2efs.log")
        self.env = dict(os.environ, E2EFS_RUNTIME_DIR=runtime_dir)
        self._proc: subprocess.Popen | None = None
        self.daemon_prefix: list[str] = []       # e.g. setpriv, to run the daemon with less privilege
        os.mkdir(self.vault)
        os.mkdir(self.path)
        with open(self.password_file, "wb") as f:
            f.write(PASSWORD + b"\n")
        Vault.create(self.vault, os.urandom(32), PASSWORD, block_size=4096, kdf=KdfParams(8 * 1024, 1, 1))

    @property
    def proc(self) -> subprocess.Popen | None:
        """The daemon of the current mount, if this test still owns one."""
        return self._proc

    @proc.setter
    def proc(self, proc: subprocess.Popen | None) -> None:
        """Letting go of a daemon (unmounted, killed, or exited) closes our ends of
        its output pipes, wherever a test does it."""
        old = self._proc
        if old is not None and old is not proc:
            for pipe in (old.stdout, old.stderr):
                if pipe is not None:
                    pipe.close()
        self._proc = proc

    def cli(self, *args, check=True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "e2efs", *args], env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, **kw)
        if check and done.returncode != 0:
            raise AssertionError(f"e2efs {args[0]} failed ({done.returncode}): {done.stderr}")
        return done

    def mount(self, *extra) -> None:
        """Mount in the foreground (so the test owns the daemon process); return once
        this daemon says it has mounted.  A live-looking mount point is no such sign:
        until the new daemon has cleaned a stale mount there, the mount table lists the
        dead mount, and one cleaned between is_mounted's read of the table and its
        listing of the folder leaves the empty folder, which lists fine ("live")."""
        self.proc = subprocess.Popen(
            [*self.daemon_prefix, sys.executable, "-m", "e2efs", "mount", self.vault, self.path, "--foreground",
             "--password-file", self.password_file, "--log", self.log, *extra],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        ready = select.poll()
        ready.register(self.proc.stdout, select.POLLIN)
        while True:     # ready() prints "mounted VAULT at MOUNTPOINT" once pyfuse3.init has mounted
            if ready.poll(20):
                line = self.proc.stdout.readline()
                if line.startswith(b"mounted "):
                    break
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("mount did not come up")
        assert is_mounted(self.path) == "live"      # waits for the daemon's answer to INIT

    def unmount(self) -> str:
        """Clean unmount: everything flushed when this returns; returns what the
        daemon wrote to stderr (its pipe is closed once the daemon is let go)."""
        subprocess.run(["fusermount3", "-u", self.path], check=True)
        code = self.proc.wait(timeout=60)
        errors = self.proc.stderr.read().decode()
        assert code == 0, errors
        self.proc = None
        return errors

    def remount(self, *extra) -> None:
        self.unmount()
        self.mount(*extra)

    def teardown(self) -> None:
        if os.path.ismount(self.path) or _stale(self.path):
            if subprocess.run(["fusermount3", "-u", self.path], stderr=subprocess.DEVNULL).returncode:
                subprocess.run(["fusermount3", "-u", "-z", self.path], stderr=subprocess.DEVNULL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def p(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""


def _stale(path: str) -> bool:
    try:
        os.stat(path)
        return False
    except OSError:
        return True


@pytest.fixture
def fuse():
    """Skip, saying why, where FUSE cannot be used (no /dev/fuse, no fusermount3)."""
    reason = _fuse_missing()
    if reason:
        print(f"skipping mount test: {reason}")
        pytest.skip(reason)


@pytest.fixture
def vault_mount(tmp_path, fuse):
    """A vault, not yet mounted; always cleaned up."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    m = Mount(tmp_path, str(runtime))
    try:
        yield m
    finally:
        m.teardown()


@pytest.fixture
def mounted(vault_mount):
    """A vault mounted read-write at ``mounted.path``."""
    vault_mount.mount()
    return vault_mount
