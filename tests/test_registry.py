"""registry.wait_exit, what unmount waits on: wakes when the daemon exits (a
zombie counts), times out while it runs; with a pidfd and without one."""

import errno
import os
import subprocess
import time

import pytest

from e2efs.fs import registry


@pytest.fixture(params=["pidfd", "proc"])
def how(request, monkeypatch):
    if request.param == "proc":
        def no_pidfd(pid):
            raise OSError(errno.ENOSYS, "pidfd_open")
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    return request.param


def test_wait_exit_wakes_when_the_process_exits(how):
    started = time.monotonic()
    proc = subprocess.Popen(["sleep", "0.2"])
    try:
        assert registry.wait_exit(proc.pid, 10)        # not reaped yet: a zombie counts as exited
        assert time.monotonic() - started < 5          # woken, not timed out
        assert proc.poll() == 0                        # and only once it had really exited
    finally:
        proc.wait()
    assert registry.wait_exit(proc.pid, 10)            # gone altogether


def test_wait_exit_times_out_while_the_process_runs(how):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not registry.wait_exit(proc.pid, 0.1)
    finally:
        proc.kill()
        proc.wait()
