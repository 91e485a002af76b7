"""The daemon's kernel-side tuning holds on a real mount (what make bench relies on)."""

import os

import pytest

from e2efs.fs.daemon import READ_AHEAD_KB, _device_of


def test_read_ahead_is_raised_after_init(mounted):
    if os.geteuid() != 0:
        pytest.skip("setting a bdi's read_ahead_kb needs root")
    os.listdir(mounted.path)                 # the INIT exchange is surely over
    with open(f"/sys/class/bdi/{_device_of(mounted.path)}/read_ahead_kb") as f:
        assert int(f.read()) == READ_AHEAD_KB
