"""The mount daemon's import shortcuts (cli/mount.py): same modules, same
answers, less start-up work; each checked in a fresh interpreter, since this
test process may have imported pyfuse3 and trio already."""

import gc
import json
import subprocess
import sys

import pytest

from e2efs.cli import main as cli_main


def _fresh(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_daemon_imports_without_ldconfig_or_importlib_metadata():
    result = _fresh("""
import ctypes.util, gc, json, subprocess, sys
started = []
popen = subprocess.Popen
class Recording(popen):
    def __init__(self, args, *a, **kw):
        started.append(list(args) if not isinstance(args, str) else [args])
        super().__init__(args, *a, **kw)
subprocess.Popen = Recording
find_library = ctypes.util.find_library
from e2efs.cli import mount
daemon = mount._import_daemon()
import pyfuse3
from trio._core import _thread_cache
loaded = sorted(m for m in ("importlib.metadata", "email", "zipfile") if m in sys.modules)
import importlib.metadata
print(json.dumps({"started": started, "loaded": loaded, "gc": gc.isenabled(),
                  "restored": ctypes.util.find_library is find_library,
                  "thread_names": _thread_cache.set_os_thread_name is not None,
                  "version": pyfuse3.__version__, "real_version": importlib.metadata.version("pyfuse3"),
                  "daemon": daemon.__name__}))
""")
    assert result["started"] == []             # trio's find_library("pthread") ran no ldconfig
    assert result["loaded"] == []
    assert result["gc"] and result["restored"]
    assert result["thread_names"]              # trio still found pthread_setname_np
    assert result["version"] == result["real_version"] != "unknown"
    assert result["daemon"] == "e2efs.fs.daemon"


def test_the_metadata_stand_in_falls_back_to_the_real_module():
    result = _fresh("""
import json, sys
from e2efs.cli import mount
with mount._version_without_metadata():
    from importlib.metadata import PackageNotFoundError, version
    stand_in = sys.modules["importlib.metadata"]
    try:
        version("no-such-package-e2efs")
        missing = None
    except PackageNotFoundError:
        missing = "raised"
    from importlib.metadata import distribution          # not answered by the stand-in
    dist_version = distribution("pyfuse3").version
after = sys.modules["importlib.metadata"]
import importlib.metadata
print(json.dumps({"missing": missing, "dist_version": dist_version, "version": version("pyfuse3"),
                  "after_is_real": after is importlib.metadata and after is not stand_in,
                  "real": importlib.metadata.version("pyfuse3")}))
""")
    assert result["missing"] == "raised"
    assert result["dist_version"] == result["version"] == result["real"]
    assert result["after_is_real"]


def test_the_metadata_stand_in_serves_a_plain_import_too():
    result = _fresh("""
import json, sys
from e2efs.cli import mount
with mount._version_without_metadata():
    import importlib.metadata
    found = importlib.metadata.version("pyfuse3")
    entry_points = importlib.metadata.entry_points    # from the real module
import importlib
print(json.dumps({"found": found, "real": importlib.metadata.version("pyfuse3"),
                  "same": sys.modules["importlib.metadata"] is importlib.metadata,
                  "entry_points": entry_points is importlib.metadata.entry_points}))
""")
    assert result["found"] == result["real"]
    assert result["same"] and result["entry_points"]


def test_the_metadata_stand_in_leaves_no_trace_when_unused():
    result = _fresh("""
import json, sys
from e2efs.cli import mount
with mount._version_without_metadata():
    inside = type(sys.modules["importlib.metadata"]).__name__
import importlib
print(json.dumps({"inside": inside, "after": "importlib.metadata" in sys.modules,
                  "attribute": hasattr(importlib, "metadata")}))
""")
    assert result == {"inside": "StandIn", "after": False, "attribute": False}


@pytest.mark.parametrize("enabled", [True, False])
def test_the_parser_runs_without_gc_and_restores_it(enabled, monkeypatch):
    seen = []
    build = cli_main.build_parser

    def spy(command=None):
        seen.append(gc.isenabled())
        return build(command)
    monkeypatch.setattr(cli_main, "build_parser", spy)
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(SystemExit):
            cli_main.main(["status", "--no-such-option"])
        assert seen == [False]
        assert gc.isenabled() == enabled
    finally:
        gc.enable()
