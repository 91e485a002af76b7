"""Permission checks on a real mount, as another user would meet them.

The daemon runs as root with --allow-other and default_permissions, so the
kernel checks modes and owners stored in the vault. pytest's own folders are
0700, so the mount lives in a world-traversable folder of its own.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import Mount, _fuse_missing

NOBODY = 65534


def as_nobody(code: str, *args) -> subprocess.CompletedProcess:
    """Run Python ``code`` as uid/gid 65534; its stdout is the errno name or OK."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=30)


PROBE = """
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        open(path, "rb").read()
    elif op == "write":
        open(path, "ab").write(b"x")
    elif op == "create":
        open(path, "xb").close()
    elif op == "chmod":
        os.chmod(path, 0o777)
    elif op == "chown":
        os.chown(path, 65534, 65534)
    elif op == "list":
        os.listdir(path)
    print("OK")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


@pytest.fixture
def shared_mount():
    reason = _fuse_missing() or (None if shutil.which("setpriv") and os.geteuid() == 0 else
                                 "needs root and setpriv to act as another user")
    if reason:
        print(f"skipping permission test: {reason}")
        pytest.skip(reason)
    top = Path(tempfile.mkdtemp(prefix="e2efs-perm-"))
    os.chmod(top, 0o755)
    (top / "run").mkdir()
    m = Mount(top, str(top / "run"))
    os.chmod(m.path, 0o755)
    try:
        m.mount("--allow-other")
        yield m
    finally:
        m.teardown()
        shutil.rmtree(top, ignore_errors=True)


def probe(op, path) -> str:
    return as_nobody(PROBE, op, path).stdout.strip()


def test_modes_and_owners_are_enforced_for_other_users(shared_mount):
    m = shared_mount
    with open(m.p("private.db"), "wb") as f:
        f.write(b"root's messages")
    os.chmod(m.p("private.db"), 0o600)
    with open(m.p("shared.txt"), "wb") as f:
        f.write(b"readable")
    os.chmod(m.p("shared.txt"), 0o644)
    os.mkdir(m.p("locked"), 0o700)
    os.mkdir(m.p("drop"))
    os.chmod(m.p("drop"), 0o777)            # not through mkdir: the umask would take bits away

    assert probe("read", m.p("private.db")) == "EACCES"
    assert probe("read", m.p("shared.txt")) == "OK"
    assert probe("write", m.p("shared.txt")) == "EACCES"
    assert probe("chmod", m.p("shared.txt")) == "EPERM"
    assert probe("chown", m.p("shared.txt")) == "EPERM"
    assert probe("list", m.p("locked")) == "EACCES"
    assert probe("create", m.p("new.txt")) == "EACCES"
    assert probe("create", m.p("drop", "mine.txt")) == "OK"
    st = os.stat(m.p("drop", "mine.txt"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)

    m.remount("--allow-other")              # owners and modes live in the vault, not in the daemon
    assert probe("read", m.p("private.db")) == "EACCES"
    assert os.stat(m.p("drop", "mine.txt")).st_uid == NOBODY
