"""Model-based test: random file operations on the mount and on a plain
directory must give the same results (contents, listings, errors), across
remounts."""

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, invariant

from conftest import Mount, _fuse_missing

NAMES = st.sampled_from(["a", "b", "c", "d/a", "d/b", "d/e/a", "e", "d/e"])
DATA = st.binary(max_size=9000)
OFFSETS = st.integers(min_value=0, max_value=12_000)


def _outcome(fn, *args):
    """The result, or the errno, of one operation."""
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", exc.errno)


def _write(path, offset, data, trunc):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _snapshot(root):
    """Every path with its kind and content (or symlink target)."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for n in dirs:
            out[os.path.normpath(os.path.join(rel, n))] = "dir"
        for n in files:
            p = os.path.join(d, n)
            key = os.path.normpath(os.path.join(rel, n))
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            else:
                with open(p, "rb") as f:
                    out[key] = ("file", f.read())
    return out


class MountModel(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="e2efs-model-")
        runtime = os.path.join(self.tmp, "run")
        os.mkdir(runtime)
        self.ref = os.path.join(self.tmp, "ref")
        os.mkdir(self.ref)
        from pathlib import Path
        self.m = Mount(Path(self.tmp), runtime)
        self.m.mount()

    def teardown(self):
        if hasattr(self, "m"):
            self.m.teardown()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def both(self, fn, *rels):
        a = _outcome(fn, *(os.path.join(self.m.path, r) for r in rels))
        b = _outcome(fn, *(os.path.join(self.ref, r) for r in rels))
        assert a == b, (fn.__name__, rels, a, b)

    @rule(name=NAMES, offset=OFFSETS, data=DATA, trunc=st.booleans())
    def write(self, name, offset, data, trunc):
        self.both(lambda p: _write(p, offset, data, trunc), name)

    @rule(name=NAMES, size=OFFSETS)
    def truncate(self, name, size):
        self.both(lambda p: os.truncate(p, size), name)

    @rule(src=NAMES, dst=NAMES)
    def rename(self, src, dst):
        self.both(os.rename, src, dst)

    @rule(name=NAMES)
    def unlink(self, name):
        self.both(os.unlink, name)

    @rule(name=NAMES)
    def mkdir(self, name):
        self.both(os.mkdir, name)

    @rule(name=NAMES)
    def rmdir(self, name):
        self.both(os.rmdir, name)

    @rule(name=NAMES, link_to=st.sampled_from(["a", "../b", "x" * 300]))
    def symlink(self, name, link_to):
        self.both(lambda p: os.symlink(link_to, p), name)

    @rule()
    def remount(self):
        self.m.remount()

    @invariant()
    def same_tree(self):
        if hasattr(self, "m"):
            assert _snapshot(self.m.path) == _snapshot(self.ref)


@pytest.mark.skipif(_fuse_missing() is not None, reason=str(_fuse_missing()))
def test_mount_behaves_like_a_plain_directory():
    MountModel.TestCase.settings = settings(max_examples=15, stateful_step_count=25, deadline=None,
                                            suppress_health_check=list(HealthCheck))
    MountModel.TestCase().runTest()
