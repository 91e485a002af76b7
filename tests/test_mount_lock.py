"""Locking hygiene: lock --all, status --json, the key kept off disk and wiped at lock."""

import json
import os
import time

import pytest

from conftest import Mount


def _daemon_status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f.read().splitlines())


def _resident_unlocked(pid: int) -> list[str]:
    """Mappings of ``pid`` with pages in RAM but no mlock (VmFlags "lo"). The
    kernel's vDSO cannot be locked and holds nothing of the process."""
    found, name, rss = [], "", 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            field = line.split()
            if "-" in field[0]:
                name = field[5] if len(field) > 5 else "[anonymous]"
            elif field[0] == "Rss:":
                rss = int(field[1])
            elif field[0] == "VmFlags:" and rss and "lo" not in field[1:] and name not in ("[vdso]", "[vvar]", "[vsyscall]"):
                found.append(name)
    return found


def test_lock_all_locks_every_vault(vault_mount, tmp_path):
    first = vault_mount
    (tmp_path / "second").mkdir()
    second = Mount(tmp_path / "second", first.env["E2EFS_RUNTIME_DIR"])
    try:
        for m in (first, second):
            m.cli("mount", m.vault, m.path, "--password-file", m.password_file, "--log", m.log)
        status = json.loads(first.cli("status", "--json").stdout)
        assert sorted(e["mountpoint"] for e in status) == sorted([first.path, second.path])
        with open(second.p("chat.txt"), "w") as f:
            f.write("written just before lock --all")
        first.cli("lock", "--all")
        assert not os.path.ismount(first.path) and not os.path.ismount(second.path)
        assert json.loads(first.cli("status", "--json").stdout) == []
        second.mount()
        with open(second.p("chat.txt")) as f:
            assert f.read() == "written just before lock --all"
    finally:
        second.teardown()


def test_lock_needs_a_mount_point_or_all(vault_mount):
    done = vault_mount.cli("lock", check=False)
    assert done.returncode == 2 and "--all" in done.stderr


def test_daemon_locks_memory_and_wipes_the_key(mounted):
    if os.geteuid() != 0:
        pytest.skip("mlockall of the whole daemon needs root (or an unlimited RLIMIT_MEMLOCK)")
    status = _daemon_status(mounted.proc.pid)
    assert int(status["VmLck"].split()[0]) > 0          # mlockall held: nothing of the daemon can be swapped
    with open(mounted.p("f"), "wb") as f:                # memory touched after the mount is locked too
        f.write(os.urandom(4 << 20))
    assert _resident_unlocked(mounted.proc.pid) == []
    with open(f"/proc/{mounted.proc.pid}/cmdline", "rb") as f:
        assert b"correct horse" not in f.read()
    mounted.unmount()
    log = mounted.log_text()
    assert "memory locked: True; core dumps off: True" in log
    assert "key wiped from memory" in log


def test_forked_daemon_locks_its_memory_too(vault_mount):
    """``e2efs mount`` without --foreground: the forked daemon, which imports
    pyfuse3 and trio after the fork, has every resident page locked."""
    if os.geteuid() != 0:
        pytest.skip("mlockall of the whole daemon needs root (or an unlimited RLIMIT_MEMLOCK)")
    m = vault_mount
    m.cli("mount", m.vault, m.path, "--password-file", m.password_file, "--log", m.log)
    [entry] = json.loads(m.cli("status", "--json").stdout)
    with open(m.p("f"), "wb") as f:
        f.write(os.urandom(4 << 20))
    assert _resident_unlocked(entry["pid"]) == []
    m.cli("unmount", m.path)
    assert "memory locked: True; core dumps off: True" in m.log_text()


def _processes_naming(path: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_wrong_secret_leaves_no_daemon(vault_mount, tmp_path):
    """The daemon is forked before the secret is checked (it imports while the
    KDF runs); without a key it exits, and nothing is mounted."""
    m = vault_mount
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    done = m.cli("mount", m.vault, m.path, "--password-file", str(wrong), "--log", m.log, check=False)
    assert done.returncode == 13 and done.stderr == "e2efs: wrong password\n"
    deadline = time.monotonic() + 10
    while _processes_naming(m.path):
        assert time.monotonic() < deadline, "the forked daemon did not exit"
        time.sleep(0.02)
    assert not os.path.ismount(m.path)
    assert "the vault was not unlocked: not mounting" in m.log_text()
    assert json.loads(m.cli("status", "--json").stdout) == []
