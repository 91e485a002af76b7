"""The bench harness's arithmetic and arguments (no mount, nothing timed), and the
floor file system the random row is compared with (one real mount)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench.py")
_spec = importlib.util.spec_from_file_location("bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_sizes_parse_binary_units():
    assert bench.parse_size("256M") == 256 << 20
    assert bench.parse_size("1G") == bench.parse_size("1GiB") == 1 << 30
    assert bench.parse_size("4k") == 4096
    assert bench.parse_size("12345") == 12345


def test_defaults_match_the_issue_and_quick_is_small():
    a = bench.parse_args([])
    assert (a.size, a.rand_size, a.files, a.rows, a.transactions, a.runs) == (1 << 30, 256 << 20, 2000, 10000, 100, 3)
    assert a.long_size == 10 << 30           # "no growth over a 10 GiB write"
    assert a.only == list(bench.WORKLOADS) and a.export_size == a.size
    q = bench.parse_args(["--quick", "--files", "50"])
    assert q.runs == 1 and q.size < a.size and q.files == 50 and q.size < q.long_size < a.long_size


def test_bad_arguments_are_usage_errors():
    for argv in (["--only", "write,nope"], ["--fs", "cryfs"], ["--size", "1500K"], ["--runs", "0"],
                 ["--long-size", "512M"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_rates_compare_with_the_best_peer_and_plain_is_not_a_peer():
    row = {"plain": 5000.0, "e2efs": 300.0, "gocryptfs": 150.0, "securefs": 200.0}
    r, ref = bench.ratio("write", row)
    assert ref == "securefs" and r == pytest.approx(1.5)
    assert bench.verdict("write", row)[1] == "PASS"
    row["e2efs"] = 299.0
    assert bench.verdict("write", row)[1] == "MISS"


def test_times_compare_with_the_fastest_peer():
    row = {"plain": 0.1, "e2efs": 1.0, "gocryptfs": 2.0, "securefs": 0.8}
    r, ref = bench.ratio("untar", row)
    assert ref == "securefs" and r == pytest.approx(1.25)
    assert bench.verdict("untar", row)[1] == "MISS"


def test_the_reference_cpu_is_the_best_peers_daemon_or_cp():
    row = {"plain": 0.1, "e2efs": 1.0, "gocryptfs": 2.0, "securefs": 0.8}
    cpu = {"e2efs": [1.5, 1.4, 1.6], "gocryptfs": [3.0], "securefs": [0.9, 0.7, 0.8], "plain": [0.05]}
    assert bench.reference_cpu("untar", row, cpu) == pytest.approx(0.8)
    assert bench.reference_cpu("import", {"plain": 900.0, "e2efs": 600.0}, cpu) == pytest.approx(0.05)
    assert bench.reference_cpu("untar", {"e2efs": 1.0, "securefs": "missing"}, cpu) is None
    assert bench.reference_cpu("untar", row, {"e2efs": [1.5]}) is None


def test_missing_peers_and_failures():
    assert bench.ratio("write", {"e2efs": 100.0, "gocryptfs": "missing", "securefs": "missing"}) == (None, None)
    assert bench.verdict("write", {"e2efs": "FAIL", "gocryptfs": 1.0})[1] == "FAIL"
    assert bench.median([3.0, "FAIL", 1.0, 2.0]) == 2.0 and bench.median(["FAIL"]) is None


def test_offline_rows_compare_with_cp_and_mount_is_absolute():
    r, ref = bench.ratio("import", {"plain": 1000.0, "e2efs": 600.0})
    assert ref == "cp -a" and r == pytest.approx(0.6)
    assert bench.verdict("import", {"plain": 1000.0, "e2efs": 600.0})[1] == "PASS"
    assert bench.verdict("mount", {"e2efs": 0.25, "gocryptfs": 0.05})[1] == "PASS"
    assert bench.verdict("mount", {"e2efs": 0.35, "gocryptfs": 0.05})[1] == "MISS"


def test_each_run_gives_its_own_ratio_against_the_rows_reference():
    runs = {"plain": [9.0, 9.0, 9.0], "e2efs": [1.0, 1.2, 0.9], "gocryptfs": [2.0, 0.5, 2.0], "securefs": [1.0, 1.0, 1.2]}
    row = {fs: sorted(v)[1] for fs, v in runs.items()}     # medians: securefs is the best peer
    assert bench.reference("untar", row) == "securefs"
    # run 2's gocryptfs was faster, but every run is compared with the row's reference
    assert bench.run_ratios("untar", runs, row) == pytest.approx([1.0, 1.2, 0.75])
    assert bench.ratio_text(1.1, "securefs", [1.0, 1.2]) == "1.10× securefs (1.00–1.20)"
    assert bench.ratio_text(1.1, "securefs", [1.1]) == "1.10× securefs"
    runs["e2efs"] = ["FAIL", 1.0]
    assert bench.run_ratios("untar", runs, row) == pytest.approx([1.0])


def test_a_group_that_fails_midway_fails_only_what_it_had_not_measured():
    import collections
    from types import SimpleNamespace
    results = collections.defaultdict(lambda: collections.defaultdict(list))
    results["sqlite"]["e2efs"] = [0.1, 0.2]
    bench_run = SimpleNamespace(args=SimpleNamespace(only=["sqlite", "sqlitewal"]), results=results)
    done = {"sqlite": 1, "sqlitewal": 0}           # this run measured sqlite, then WAL mode failed
    assert bench.Bench.unmeasured(bench_run, ["sqlite", "sqlitewal"], SimpleNamespace(name="e2efs"), done) == ["sqlitewal"]


def test_the_machine_line_names_libfuse_and_how_idle_cpus_wait():
    """Both change the small-file rows' verdicts (PERFORMANCE.md, tenth round)."""
    line = bench.machine_md()
    m = bench.machine()
    if shutil.which("fusermount3"):
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", m["versions"]["libfuse"])
        assert f"libfuse {m['versions']['libfuse']}" in line
    driver = "/sys/devices/system/cpu/cpuidle/current_driver"
    if os.path.exists(driver):
        with open(driver) as f:
            assert m["idle"].startswith(f"cpuidle {f.read().strip()}/")
        assert f"idle CPUs: {m['idle']};" in line
    else:
        assert m["idle"] is None and "idle CPUs" not in line


def test_the_floor_file_system_serves_its_one_file(tmp_path, fuse):
    from e2efs.fs.mountpoint import is_mounted
    mnt = tmp_path / "floor"
    mnt.mkdir()
    floor = os.path.join(os.path.dirname(_PATH), "floor.py")
    proc = subprocess.Popen([sys.executable, floor, str(mnt), "--size", "8"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while is_mounted(str(mnt)) != "live":
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "floor did not mount"
            time.sleep(0.02)
        assert os.listdir(mnt) == ["rand.bin"] and os.path.getsize(mnt / "rand.bin") == 8 << 20
        with open(mnt / "rand.bin", "r+b") as f:
            first = os.pread(f.fileno(), 4096, 0)
            assert len(first) == 4096 and os.pread(f.fileno(), 4096, 1 << 20) == first
            assert os.pwrite(f.fileno(), b"x" * 4096, 8192) == 4096
            os.fsync(f.fileno())
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], stderr=subprocess.DEVNULL)
            proc.kill()
            proc.wait()
