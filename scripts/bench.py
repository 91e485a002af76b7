#!/usr/bin/env python3
"""`make bench`: e2efs side by side with a plain directory, gocryptfs and securefs.

Every workload runs against every file system in the same process, A/B
interleaved (the order rotates each run), and the median of --runs is kept.
Backing folders live on a private tmpfs unless --backing DIR is given, so the
figures measure the file systems, not the disk.  Every read-back is checked
byte for byte against what was written: a wrong answer is reported as FAIL,
never as a speed.  Mounts, daemons and the tmpfs are always cleaned up, also
on Ctrl-C or failure.

    python scripts/bench.py                 # full defaults (1 GiB, 2000 files, 3 runs)
    python scripts/bench.py --quick         # smoke test in seconds
    python scripts/bench.py --only write,read --size 256M --runs 5
    python scripts/bench.py --profile       # py-spy the e2efs daemon per workload

Results: a Markdown table on stdout, and bench-results/bench-<time>.{md,json}.
"""

import argparse
import collections
import datetime
import hashlib
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

MiB = 1 << 20
FS_NAMES = ("plain", "e2efs", "gocryptfs", "securefs")
PEERS = ("gocryptfs", "securefs")
PASSWORD = "bench-password-not-secret-42"
CMD_TIMEOUT = 900

# workload -> (label, unit, better, target kind, target value, baseline)
#   better: "high" (MB/s, IOPS) or "low" (seconds)
#   target kind: "ratio" e2efs/best peer (or /cp -a for the offline rows),
#                "abs" e2efs value against an absolute bound, None
WORKLOADS = collections.OrderedDict([
    ("write",    ("sequential write (dd bs=1M conv=fsync)", "MB/s", "high", "ratio", 1.5, "peers")),
    ("read",     ("sequential read, cold (remount + drop caches)", "MB/s", "high", "ratio", 1.0, "peers")),
    ("appwrite", ("4 KiB application writes (dd bs=4k conv=fsync)", "MB/s", "high", "ratio", 1.0, "peers")),
    ("rssgrowth", ("e2efs daemon RSS growth during a long write (after its first --size)", "MiB", "low", "abs",
                   8, "peers")),
    ("untar",    ("untar small files + sync", "s", "low", "ratio", 1.0, "peers")),
    ("ls",       ("ls -lR after remount", "s", "low", "ratio", 1.0, "peers")),
    ("find",     ("find -type f after remount", "s", "low", "ratio", 1.0, "peers")),
    ("sqlite",   ("SQLite rows, synchronous=FULL", "s", "low", "ratio", 1.0, "peers")),
    ("sqlitewal", ("SQLite rows, synchronous=FULL, WAL", "s", "low", None, None, "peers")),
    ("random",   ("random 4 KiB read/write (50/50)", "IOPS", "high", "ratio", 0.8, "peers")),
    ("rm",       ("rm -rf of the small-file tree", "s", "low", None, None, "peers")),
    ("import",   ("offline import (e2efs) vs cp -a (plain)", "MB/s", "high", "ratio", 0.5, "cp")),
    ("export",   ("offline export (e2efs) vs cp -a (plain)", "MB/s", "high", "ratio", 0.5, "cp")),
    ("mount",    ("mount, fast/no KDF", "s", "low", "abs", 0.3, "peers")),
    ("mountkdf", ("mount, default KDF", "s", "low", None, None, "peers")),
    ("unmount",  ("unmount", "s", "low", None, None, "peers")),
])
GROUPS = collections.OrderedDict([
    ("seq", ("write", "read", "appwrite")),
    ("memory", ("rssgrowth",)),
    ("tree", ("untar", "ls", "find", "rm")),
    ("sqlite", ("sqlite", "sqlitewal")),
    ("random", ("random",)),
    ("offline", ("import", "export")),
    ("mount", ("mount", "mountkdf", "unmount")),
])
RSS_TARGET_MIB = 120


class BenchError(Exception):
    """A workload went wrong on one file system (wrong data, command failed)."""


# -- arguments -------------------------------------------------------------------

def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, help="sequential file size (default 1G; --quick 64M)")
    p.add_argument("--long-size", type=parse_size,
                   help="the long write the daemon's memory must not grow over (default 10G; --quick 256M)")
    p.add_argument("--rand-size", type=parse_size, help="random-I/O file size (default 256M; --quick 32M)")
    p.add_argument("--rand-ops", type=int, help="random 4 KiB operations per run (default 16384; --quick 2000)")
    p.add_argument("--files", type=int, help="small files in the tree (default 2000; --quick 200)")
    p.add_argument("--dirs", type=int, default=20, help="directories in the tree (default 20)")
    p.add_argument("--rows", type=int, help="SQLite rows (default 10000; --quick 1000)")
    p.add_argument("--transactions", type=int, help="SQLite transactions (default 100; --quick 10)")
    p.add_argument("--export-size", type=parse_size, help="offline import/export tree size (default = --size)")
    p.add_argument("--runs", type=int, help="runs per workload, median kept (default 3; --quick 1)")
    p.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    p.add_argument("--fs", default=",".join(FS_NAMES), help="comma-separated file systems (default all)")
    p.add_argument("--block-size", help="e2efs vaults' block size (e2efs init --block-size; default: e2efs's own)")
    p.add_argument("--backing", metavar="DIR", help="put backing folders in DIR instead of a private tmpfs")
    p.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test of the harness")
    p.add_argument("--profile", action="store_true", help="record py-spy profiles of the e2efs daemon per workload")
    p.add_argument("--out", default="bench-results", help="results folder (default bench-results)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (debugging)")
    a = p.parse_args(argv)
    quick = a.quick
    defaults = dict(size=64 * MiB if quick else 1 << 30, long_size=256 * MiB if quick else 10 << 30,
                    rand_size=32 * MiB if quick else 256 * MiB,
                    rand_ops=2000 if quick else 16384, files=200 if quick else 2000,
                    rows=1000 if quick else 10000, transactions=10 if quick else 100, runs=1 if quick else 3)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.export_size is None:
        a.export_size = a.size
    a.only = [w.strip() for w in a.only.split(",")] if a.only else list(WORKLOADS)
    unknown = [w for w in a.only if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s): {', '.join(unknown)}")
    a.fs = [f.strip() for f in a.fs.split(",")]
    if any(f not in FS_NAMES for f in a.fs):
        p.error(f"--fs takes some of {', '.join(FS_NAMES)}")
    if a.size < MiB or a.size % MiB or a.rand_size < MiB or a.rand_size % MiB or a.long_size % MiB:
        p.error("--size, --long-size and --rand-size must be whole MiB")
    if a.long_size <= a.size:
        p.error("--long-size must be larger than --size")
    if a.runs < 1 or a.files < 1 or a.transactions < 1 or a.rows < a.transactions:
        p.error("--runs, --files, --transactions must be >= 1 and --rows >= --transactions")
    return a


# -- result maths (unit-tested) ------------------------------------------------------

def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def reference(workload: str, row: dict) -> str | None:
    """The file system e2efs is compared with in a row {fs: median}: the best
    peer (or plain, for the offline rows against cp -a)."""
    _, _, better, _, _, baseline = WORKLOADS[workload]
    refs = {"cp": ["plain"], "peers": list(PEERS)}[baseline]
    have = {f: row[f] for f in refs if isinstance(row.get(f), (int, float)) and row[f] > 0}
    return (max if better == "high" else min)(have, key=have.get) if have else None


def ratio(workload: str, row: dict) -> tuple[float | None, str | None]:
    """(e2efs / reference, reference name) for a row {fs: median}.  For times
    the ratio is e2efs time / best time, so <= target passes; for rates it is
    e2efs rate / best rate, so >= target passes."""
    mine, ref = row.get("e2efs"), reference(workload, row)
    if not isinstance(mine, (int, float)) or ref is None:
        return None, None
    return mine / row[ref], ("cp -a" if WORKLOADS[workload][5] == "cp" else ref)


def run_ratios(workload: str, runs: dict, row: dict) -> list[float]:
    """The ratio of each run on its own ({fs: [value per run]}) against the
    row's reference: the file systems take turns within a run, so run i's
    values belong together, and their spread says whether a verdict would
    flip on a rerun."""
    ref = reference(workload, row)
    pairs = zip(runs.get("e2efs", []), runs.get(ref, []))
    return [mine / theirs for mine, theirs in pairs
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0]


def reference_cpu(workload: str, row: dict, cpu: dict) -> float | None:
    """Median CPU seconds of the row's reference ({fs: [seconds per run]}): a
    peer's daemon, all its threads, or cp -a itself.  Beside e2efs's, it tells
    a row bound by daemon CPU from one bound by waiting (wake-ups, the program)."""
    ref = reference(workload, row)
    return median(cpu.get(ref, [])) if ref else None


def ratio_text(r: float | None, ref: str | None, spread: list[float]) -> str:
    if r is None:
        return ""
    text = f"{r:.2f}× {ref}"
    return text + (f" ({min(spread):.2f}–{max(spread):.2f})" if len(spread) > 1 else "")


def verdict(workload: str, row: dict) -> tuple[str, str]:
    """(target text, PASS/MISS/FAIL/–)."""
    _, unit, better, kind, value, _ = WORKLOADS[workload]
    mine = row.get("e2efs")
    if mine == "FAIL":
        return _target_text(workload), "FAIL"
    if kind is None or not isinstance(mine, (int, float)):
        return _target_text(workload), "–"
    if kind == "abs":
        ok = mine <= value if better == "low" else mine >= value
    else:
        r, _ = ratio(workload, row)
        if r is None:
            return _target_text(workload), "–"
        ok = r <= value if better == "low" else r >= value
    return _target_text(workload), "PASS" if ok else "MISS"


def _target_text(workload: str) -> str:
    _, unit, better, kind, value, baseline = WORKLOADS[workload]
    if kind is None:
        return ""
    if kind == "abs":
        return f"{'<' if better == 'low' else '>'} {value:g} {unit}"
    ref = "cp -a" if baseline == "cp" else "best peer"
    return f"{'≤' if better == 'low' else '≥'} {value:g}× {ref}"


# -- processes, mounts, cleanup ----------------------------------------------------------

def sh(cmd, *, timeout=CMD_TIMEOUT, check=True, env=None, capture=True, input=None):
    done = subprocess.run([str(c) for c in cmd], capture_output=capture, text=True, timeout=timeout,
                          env=env, input=input)
    if check and done.returncode != 0:
        err = (done.stderr or "").strip().splitlines()[-3:] if capture else []
        raise BenchError(f"{' '.join(map(str, cmd[:3]))} ... exited {done.returncode}: {' | '.join(err)}")
    return done


def is_mount(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_mounted(path: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not is_mount(path):
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not come up as a mount")
        time.sleep(0.005)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_exit(pid: int | None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int | None) -> float | None:
    """utime + stime of ``pid`` in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, TypeError, ValueError):
        return None


def children_cpu() -> float:
    """CPU seconds of finished child processes (the offline e2efs commands)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_memory_mib(pid: int | None, field: str = "VmHWM") -> float | None:
    """A memory figure of ``pid`` from /proc, in MiB: its peak RSS, or ``field``
    ("VmRSS": the current one)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return None


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass            # not root: the remount alone drops the FUSE page cache


def force_unmount(path: str) -> None:
    if not is_mount(path):
        return
    for args in (["-u"], ["-u", "-z"]):
        subprocess.run(["fusermount3", *args, path], capture_output=True, timeout=60)
        if not is_mount(path):
            return
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=60)


# -- the file systems -------------------------------------------------------------------

class FS:
    name = "?"
    fuse = True

    def __init__(self, bench, name):
        self.bench, self.name = bench, name
        self.base = os.path.join(bench.work, name)
        self.cipher = os.path.join(self.base, "cipher")
        self.mnt = os.path.join(self.base, "mnt")
        self.pid = None
        os.makedirs(self.cipher)
        os.makedirs(self.mnt)

    def available(self) -> str | None:
        return None

    def create(self, cipher: str, default_kdf: bool = False) -> None:
        pass

    def _mount(self, cipher: str, default_kdf: bool) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        sh(["fusermount3", "-u", self.mnt])

    def _find_pid(self) -> int | None:
        done = subprocess.run(["pgrep", "-f", "--", self.mnt], capture_output=True, text=True)
        pids = [int(p) for p in done.stdout.split() if int(p) != os.getpid()]
        return pids[0] if pids else None

    def mount(self, cipher: str | None = None, default_kdf: bool = False) -> float:
        t0 = time.perf_counter()
        self._mount(cipher or self.cipher, default_kdf)
        wait_mounted(self.mnt)
        took = time.perf_counter() - t0
        self.bench.mounted.add(self)
        self.pid = self._find_pid()
        self.bench.profile_start(self)
        return took

    def unmount(self) -> float:
        self.bench.profile_stop(self)
        t0 = time.perf_counter()
        try:
            self._unmount()
        finally:
            force_unmount(self.mnt)
            wait_exit(self.pid)
            self.bench.mounted.discard(self)
        took = time.perf_counter() - t0
        self.pid = None
        return took

    def remount(self) -> None:
        self.unmount()
        drop_caches()
        self.mount()


class Plain(FS):
    fuse = False

    def __init__(self, bench, name):
        super().__init__(bench, name)
        os.rmdir(self.mnt)
        self.mnt = self.cipher

    def mount(self, cipher=None, default_kdf=False):
        return 0.0

    def unmount(self):
        return 0.0

    def remount(self):
        drop_caches()


class E2efs(FS):
    def available(self):
        return None if os.access(self.bench.e2efs[0], os.X_OK) else f"{self.bench.e2efs[0]} not found"

    def create(self, cipher, default_kdf=False):
        if default_kdf:
            sh([*self.bench.e2efs, "init", "--password-file", self.bench.pwfile, "--allow-weak-password",
                "--json", cipher], env=self.bench.env)
            return
        bs = ["--block-size", self.bench.args.block_size] if self.bench.args.block_size else []
        out = sh([*self.bench.e2efs, "init", "--key-only", "--json", *bs, cipher], env=self.bench.env).stdout
        with open(self.keyfile(cipher), "w") as f:
            f.write(json.loads(out)["recovery_key"] + "\n")

    def keyfile(self, cipher):
        return os.path.join(self.base, os.path.basename(cipher) + ".key")

    def secret(self, default_kdf=False, cipher=None):
        return (["--password-file", self.bench.pwfile] if default_kdf
                else ["--key-file", self.keyfile(cipher or self.cipher)])

    def _mount(self, cipher, default_kdf):
        sh([*self.bench.e2efs, "mount", cipher, self.mnt, *self.secret(default_kdf, cipher),
            "--log", os.path.join(self.base, "daemon.log")], env=self.bench.env)

    def _unmount(self):
        sh([*self.bench.e2efs, "unmount", self.mnt], env=self.bench.env)

    def _find_pid(self):
        rt = self.bench.env["E2EFS_RUNTIME_DIR"]
        for fname in os.listdir(rt):
            if fname.endswith(".json"):
                try:
                    with open(os.path.join(rt, fname)) as f:
                        entry = json.load(f)
                except (OSError, ValueError):
                    continue
                if entry.get("mountpoint") == os.path.realpath(self.mnt):
                    return entry["pid"]
        return super()._find_pid()


class Gocryptfs(FS):
    def available(self):
        return None if shutil.which("gocryptfs") else "gocryptfs not installed"

    def create(self, cipher, default_kdf=False):
        sh(["gocryptfs", "-init", "-q", "-passfile", self.bench.pwfile,
            *([] if default_kdf else ["-scryptn", "10"]), cipher])

    def _mount(self, cipher, default_kdf):
        sh(["gocryptfs", "-q", "-passfile", self.bench.pwfile, cipher, self.mnt])


class Securefs(FS):
    # --format 4 is securefs's "lite" format (one ciphertext file per file, like
    # gocryptfs and e2efs); the fast variant stretches the password with 1000
    # rounds of PBKDF2 instead of the default Argon2id.
    def available(self):
        return None if shutil.which("securefs") else "securefs not installed"

    def create(self, cipher, default_kdf=False):
        kdf = [] if default_kdf else ["--pbkdf", "pkcs5-pbkdf2-hmac-sha256", "--rounds", "1000"]
        sh(["securefs", "create", "--format", "4", *kdf, "--pass", PASSWORD, cipher])

    def _mount(self, cipher, default_kdf):
        sh(["securefs", "mount", "-b", "--pass", PASSWORD, "--log", os.path.join(self.base, "securefs.log"),
            cipher, self.mnt])


FS_CLASSES = {"plain": Plain, "e2efs": E2efs, "gocryptfs": Gocryptfs, "securefs": Securefs}


# -- the bench ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.mounted: set[FS] = set()
        self.tmpfs = None
        self.results = collections.defaultdict(lambda: collections.defaultdict(list))
        self.cpu = collections.defaultdict(lambda: collections.defaultdict(list))
        self.rss = collections.defaultdict(lambda: collections.defaultdict(list))
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.missing: dict[str, str] = {}
        self.profiles: dict[str, list[str]] = collections.defaultdict(list)
        self._spy = None
        self.phase = None
        bindir = os.path.dirname(sys.executable)
        exe = os.path.join(bindir, "e2efs")
        self.e2efs = [exe] if os.path.exists(exe) else [shutil.which("e2efs") or exe]
        spy = os.path.join(bindir, "py-spy")
        self.pyspy = spy if os.path.exists(spy) else shutil.which("py-spy")
        self.fio = shutil.which("fio")

    # -- set-up and teardown
    def setup(self):
        a = self.args
        if a.backing:
            os.makedirs(a.backing, exist_ok=True)
            self.work = tempfile.mkdtemp(prefix="e2efs-bench-", dir=a.backing)
            self.where = f"folder {os.path.abspath(a.backing)}"
        else:
            self.work = tempfile.mkdtemp(prefix="e2efs-bench-")
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=90%", "e2efs-bench", self.work],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                self.tmpfs = self.work
                self.where = "private tmpfs"
            else:
                os.rmdir(self.work)
                self.work = tempfile.mkdtemp(prefix="e2efs-bench-", dir="/dev/shm")
                self.where = "/dev/shm (tmpfs)"
        self.src = os.path.join(self.work, "src")
        os.makedirs(self.src)
        self.pwfile = os.path.join(self.work, "password")
        with open(self.pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        rt = os.path.join(self.work, "e2efs-runtime")
        os.makedirs(rt, mode=0o700)
        self.env = dict(os.environ, E2EFS_RUNTIME_DIR=rt)
        self.fss = []
        for name in a.fs:
            fs = FS_CLASSES[name](self, name)
            why = fs.available()
            if why:
                self.missing[name] = why
                continue
            try:
                fs.create(fs.cipher)
            except BenchError as exc:
                self.missing[name] = f"cannot create: {exc}"
                continue
            self.fss.append(fs)

    def cleanup(self):
        self.profile_stop(None)
        for fs in list(self.mounted):
            try:
                if fs.pid:
                    force_unmount(fs.mnt)
                    wait_exit(fs.pid, 10)
                    if pid_alive(fs.pid):
                        os.kill(fs.pid, signal.SIGTERM)
                        wait_exit(fs.pid, 5)
                    if pid_alive(fs.pid):
                        os.kill(fs.pid, signal.SIGKILL)
                force_unmount(fs.mnt)
            except Exception as exc:   # keep cleaning the others
                print(f"bench: cleanup of {fs.mnt}: {exc}", file=sys.stderr)
        if getattr(self, "work", None):
            with open("/proc/self/mountinfo") as f:     # anything still mounted below the work folder
                left = [line.split()[4] for line in f if line.split()[4].startswith(self.work + "/")]
            for path in sorted(left, reverse=True):
                force_unmount(path)
            if self.args.keep:
                print(f"bench: work folder kept at {self.work}", file=sys.stderr)
                return
            if self.tmpfs:
                subprocess.run(["umount", self.tmpfs], capture_output=True)
                if is_mount(self.tmpfs):
                    subprocess.run(["umount", "-l", self.tmpfs], capture_output=True)
            shutil.rmtree(self.work, ignore_errors=True)

    # -- profiling
    def profile_start(self, fs):
        if not (self.args.profile and fs.name == "e2efs" and self.pyspy and fs.pid and self.phase):
            return
        self.profile_stop(None)
        os.makedirs(self.profile_dir, exist_ok=True)
        out = os.path.join(self.profile_dir, f"{self.phase}-{len(self.profiles[self.phase])}.txt")
        self._spy = (subprocess.Popen([self.pyspy, "record", "--pid", str(fs.pid), "--rate", "250",
                                       "--format", "raw", "--output", out, "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out, self.phase)
        time.sleep(0.5)           # let py-spy attach before the timed part

    def profile_stop(self, fs):
        if self._spy is None or (fs is not None and fs.name != "e2efs"):
            return
        proc, out, phase = self._spy
        self._spy = None
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if os.path.exists(out):
            self.profiles[phase].append(out)

    # -- inputs
    def make_inputs(self):
        a = self.args
        rng = random.Random(4)
        self.big = os.path.join(self.src, "big.bin")
        h = hashlib.sha256()
        with open(self.big, "wb") as f:
            left = max(a.size, a.rand_size)
            while left:
                chunk = os.urandom(min(left, 8 * MiB))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        self.big_sha = h.hexdigest() if a.size >= a.rand_size else sha_file(self.big, a.size)
        # the small-file tree: 1-96 KiB random (incompressible, like media) in --dirs folders
        self.tree_manifest = {}
        self.tar = os.path.join(self.src, "tree.tar")
        with tarfile.open(self.tar, "w") as tar:
            for d in range(a.dirs):
                info = tarfile.TarInfo(f"tree/chat{d:02d}")
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_763_000_000
                tar.addfile(info)
            for i in range(a.files):
                name = f"tree/chat{i % a.dirs:02d}/IMG-{i:05d}.jpg"
                data = rng.randbytes(rng.randint(1, 96) * 1024)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 1_763_000_000 + i
                tar.addfile(info, _BytesReader(data))
                self.tree_manifest[name] = hashlib.sha256(data).hexdigest()
        with tarfile.open(self.tar) as tar:
            self.tree_bytes = sum(m.size for m in tar.getmembers())

    # -- measuring helpers
    def timed(self, fs, workload, fn):
        """Run ``fn`` once, return its wall time; record the daemon's CPU seconds."""
        record = workload in self.args.only
        if record and self.args.profile and fs.name == "e2efs" and fs.pid:
            self.phase = workload
            self.profile_start(fs)
        pid = fs.pid          # the daemon's CPU; without a daemon, the offline command's
        c0 = proc_cpu(pid) if pid else children_cpu()
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        c1 = (proc_cpu(pid) if pid else children_cpu()) if pid == fs.pid else None
        if record and self.args.profile and fs.name == "e2efs":
            self.profile_stop(fs)
            self.phase = None
        if record and c0 is not None and c1 is not None:
            self.cpu[workload][fs.name].append(c1 - c0)
        return took

    def record(self, workload, fs, value):
        if workload in self.args.only:
            self.results[workload][fs.name].append(value)

    def record_rss(self, workload, fs):
        hwm = proc_memory_mib(fs.pid)
        if hwm is not None and workload in self.args.only:
            self.rss[workload][fs.name].append(hwm)

    def unmeasured(self, workloads, fs, done: dict) -> list[str]:
        """The workloads of a group run that recorded no value since ``done``
        (their counts before it): a failure is theirs, not the others'."""
        return [w for w in workloads if w in self.args.only and len(self.results[w][fs.name]) == done[w]]

    def fail(self, workloads, fs, exc):
        msg = f"{fs.name} {'/'.join(workloads)}: {exc}"
        self.errors.append(msg)
        print(f"  FAIL {msg}", file=sys.stderr)
        for w in workloads:
            self.record(w, fs, "FAIL")

    # -- the workloads, one group at a time on one file system
    def group_seq(self, fs):
        a = self.args
        f = os.path.join(fs.mnt, "big.bin")
        fs.mount()
        t = self.timed(fs, "write", lambda: dd(self.big, f, "1M", a.size // MiB))
        self.record("write", fs, a.size / 1e6 / t)
        self.record_rss("write", fs)
        fs.remount()
        # the cold read fills a page cache as large as the file, in memory that the
        # remount's drop_caches just freed (see warm_memory): take it back first
        self.warm_memory(a.size + a.size // 2, quiet=True)
        t = self.timed(fs, "read", lambda: dd(f, "/dev/null", "1M"))
        check_sha(f, self.big_sha, "sequential read-back")   # re-read: what the cold read saw
        self.record("read", fs, a.size / 1e6 / t)
        os.unlink(f)
        if "appwrite" in a.only:
            f = os.path.join(fs.mnt, "app.bin")
            t = self.timed(fs, "appwrite", lambda: dd(self.big, f, "4k", a.size // 4096))
            self.record_rss("appwrite", fs)
            self.record("appwrite", fs, a.size / 1e6 / t)
            fs.remount()
            check_sha(f, self.big_sha, "4 KiB-write read-back")
            os.unlink(f)
        fs.unmount()

    def group_memory(self, fs):
        """The e2efs daemon's RSS over a --long-size sequential write: the first
        --size brings it to its working size, and the rest must not grow it
        (a leak per block or per request would show here, not in the 1 GiB
        peak).  One file where the backing has room, else files of --size in
        turn, each deleted once the next is written."""
        if fs.name != "e2efs":
            return
        a = self.args
        room = shutil.disk_usage(fs.cipher).free
        if not a.backing:
            room = min(room, mem_available())
        per_file = a.long_size if room > a.long_size + 2 * a.size else a.size
        self.long_write_files = a.long_size // per_file
        chunk = os.urandom(MiB)
        fs.mount()
        written, after_first, previous = 0, None, None
        while written < a.long_size:
            path = os.path.join(fs.mnt, f"long-{written // per_file}.bin")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(per_file // MiB):
                    os.write(fd, chunk)
                    written += MiB
                    if written == a.size:
                        after_first = proc_memory_mib(fs.pid, "VmRSS")
                os.fsync(fd)
            finally:
                os.close(fd)
            if previous:
                os.unlink(previous)
            previous = path
        self.record("rssgrowth", fs, proc_memory_mib(fs.pid, "VmRSS") - after_first)
        self.record_rss("rssgrowth", fs)
        os.unlink(previous)
        fs.unmount()

    def group_tree(self, fs):
        a = self.args
        tree = os.path.join(fs.mnt, "tree")
        fs.mount()
        t = self.timed(fs, "untar", lambda: sh(["bash", "-c", 'tar -xf "$1" -C "$2" && sync', "-", self.tar, fs.mnt]))
        self.record("untar", fs, t)
        fs.remount()
        out = {}
        t = self.timed(fs, "ls", lambda: out.update(ls=sh(["ls", "-lR", tree]).stdout))
        files = sum(1 for line in out["ls"].splitlines() if line.startswith("-"))
        if files != a.files:
            raise BenchError(f"ls -lR listed {files} files, expected {a.files}")
        self.record("ls", fs, t)
        fs.remount()
        t = self.timed(fs, "find", lambda: out.update(find=sh(["find", tree, "-type", "f"]).stdout))
        if len(out["find"].split()) != a.files:
            raise BenchError(f"find listed {len(out['find'].split())} files, expected {a.files}")
        self.record("find", fs, t)
        for name, digest in self.tree_manifest.items():
            check_sha(os.path.join(fs.mnt, name), digest, f"tree file {name}")
        t = self.timed(fs, "rm", lambda: sh(["rm", "-rf", tree]))
        if os.path.exists(tree) or os.listdir(fs.mnt):
            raise BenchError(f"rm -rf left {os.listdir(fs.mnt)}")
        self.record("rm", fs, t)
        fs.unmount()

    def group_sqlite(self, fs):
        """The same message rows in SQLite's default rollback-journal mode and in
        WAL mode, which chat apps (WhatsApp, Signal) run their databases in."""
        a = self.args
        db = os.path.join(fs.mnt, "msgstore.db")
        rng = random.Random(6)
        rows = [(rng.randrange(200), 1_763_000_000 + i, f"+4917{rng.randrange(10**8):08d}",
                 rng.randbytes(rng.randint(20, 300)).hex()[: rng.randint(20, 300)]) for i in range(a.rows)]
        expect = hashlib.sha256(repr(rows).encode()).hexdigest()
        fs.mount()
        for workload, mode in (("sqlite", "delete"), ("sqlitewal", "wal")):
            if workload not in a.only:
                continue

            def work():
                con = sqlite3.connect(db, isolation_level=None)
                con.execute("PRAGMA synchronous=FULL")
                got_mode = con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
                if got_mode != mode:
                    raise BenchError(f"SQLite refused journal_mode={mode} (kept {got_mode})")
                con.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, chat INTEGER, ts INTEGER, sender TEXT, body TEXT)")
                per = a.rows // a.transactions
                for t in range(a.transactions):
                    chunk = rows[t * per: (t + 1) * per if t < a.transactions - 1 else a.rows]
                    con.execute("BEGIN")
                    for r in chunk:
                        con.execute("INSERT INTO messages (chat, ts, sender, body) VALUES (?, ?, ?, ?)", r)
                    con.execute("COMMIT")
                con.close()
            t = self.timed(fs, workload, work)
            fs.remount()
            con = sqlite3.connect(db)
            got = con.execute("SELECT chat, ts, sender, body FROM messages ORDER BY id").fetchall()
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            con.close()
            if ok != "ok" or hashlib.sha256(repr(got).encode()).hexdigest() != expect:
                raise BenchError(f"SQLite database ({mode}) wrong after remount (integrity_check: {ok}, rows: {len(got)})")
            self.record(workload, fs, t)
            for name in os.listdir(fs.mnt):
                os.unlink(os.path.join(fs.mnt, name))
        fs.unmount()

    def group_random(self, fs):
        a = self.args
        f = os.path.join(fs.mnt, "rand.bin")
        fs.mount()
        dd(self.big, f, "1M", a.rand_size // MiB)
        fs.remount()
        if self.fio:
            out = {}
            cmd = ["fio", "--name=rand", f"--filename={f}", "--rw=randrw", "--rwmixread=50", "--bs=4k",
                   "--ioengine=psync", f"--size={a.rand_size}", f"--io_size={a.rand_ops * 4096}",
                   "--end_fsync=1", "--randrepeat=1", "--output-format=json"]
            self.timed(fs, "random", lambda: out.update(j=json.loads(sh(cmd).stdout)))
            job = out["j"]["jobs"][0]
            iops = job["read"]["iops"] + job["write"]["iops"]
            self.record("random", fs, iops)
            # fio's data is not ours to check: verify a known pattern of random 4 KiB writes
            verify_random(f, a.rand_size, 512, check_after=lambda: fs.remount())
        else:
            res = {}
            t = self.timed(fs, "random", lambda: res.update(sha=python_random(f, a.rand_size, a.rand_ops, self.big)))
            self.record("random", fs, a.rand_ops / t)
            fs.remount()
            check_sha(f, res["sha"], "random I/O file")
        os.unlink(f)
        fs.unmount()

    def group_offline(self, fs):
        """e2efs import/export of a tree vs cp -a of it on the plain backing."""
        if fs.name not in ("plain", "e2efs"):
            return
        tree = self.offline_tree()
        if fs.name == "plain":
            dst = os.path.join(fs.mnt, "cp-copy")
            rows = [w for w in ("import", "export") if w in self.args.only]     # one cp -a stands for both
            t = self.timed(fs, rows[0], lambda: sh(["cp", "-a", tree, dst]))
            for w in rows:
                self.record(w, fs, self.offline_bytes / 1e6 / t)
                if w != rows[0] and self.cpu[rows[0]][fs.name]:
                    self.cpu[w][fs.name].append(self.cpu[rows[0]][fs.name][-1])
            shutil.rmtree(dst)
            return
        vault = os.path.join(fs.base, "offline-vault")
        fs.create(vault)
        key = fs.secret(cipher=vault)
        t = self.timed(fs, "import", lambda: sh([*self.e2efs, "import", "-q", *key, tree, vault], env=self.env))
        self.record("import", fs, self.offline_bytes / 1e6 / t)
        dst = os.path.join(fs.base, "exported")
        t = self.timed(fs, "export", lambda: sh([*self.e2efs, "export", "-q", *key, vault, dst], env=self.env))
        for name, digest in self.offline_manifest.items():
            check_sha(os.path.join(dst, name), digest, f"exported {name}")
        self.record("export", fs, self.offline_bytes / 1e6 / t)
        shutil.rmtree(dst)
        shutil.rmtree(vault)

    def offline_tree(self):
        if getattr(self, "_offline", None):
            return self._offline
        root = os.path.join(self.src, "offline")
        os.makedirs(root)
        sh(["tar", "-xf", self.tar, "-C", root])
        manifest = {os.path.join("tree", k[len("tree/"):]): v for k, v in self.tree_manifest.items()}
        total = self.tree_bytes
        os.makedirs(os.path.join(root, "videos"))
        part, i = 64 * MiB, 0
        with open(self.big, "rb") as src:
            while total < self.args.export_size:
                n = min(part, self.args.export_size - total)
                src.seek((i * part) % max(1, os.path.getsize(self.big) - n))
                data = src.read(n)
                name = os.path.join("videos", f"VID-{i:03d}.mp4")
                with open(os.path.join(root, name), "wb") as f:
                    f.write(data)
                manifest[name] = hashlib.sha256(data).hexdigest()
                total += n
                i += 1
        self._offline, self.offline_manifest, self.offline_bytes = root, manifest, total
        return root

    def group_mount(self, fs):
        if not fs.fuse:
            return
        if "mount" in self.args.only or "unmount" in self.args.only:
            t = self.timed(fs, "mount", lambda: fs.mount())
            self.record("mount", fs, t)
            with open(os.path.join(fs.mnt, "probe"), "w") as f:
                f.write("x")
            self.record("unmount", fs, self.timed(fs, "unmount", lambda: fs.unmount()))
            fs.mount()
            os.unlink(os.path.join(fs.mnt, "probe"))
            fs.unmount()
        if "mountkdf" in self.args.only:
            kdf_vault = os.path.join(fs.base, "kdf-vault")
            if not os.path.isdir(kdf_vault):
                os.makedirs(kdf_vault)
                fs.create(kdf_vault, default_kdf=True)
            t = self.timed(fs, "mountkdf", lambda: fs.mount(kdf_vault, default_kdf=True))
            self.record("mountkdf", fs, t)
            fs.unmount()

    # -- the whole run
    def warm_memory(self, want: int | None = None, quiet: bool = False):
        """Touch as much memory as the run will hold (or ``want`` bytes), then
        free it, before timing anything.  On a VM whose memory the host backs
        lazily (Firecracker, say), the first write to a never-used page costs ~5x
        a later one (3 GiB into tmpfs: 7.0 s, then 1.4 s), and that cost would
        land on whichever file system happened to run first.  With the balloon's
        free page reporting, memory freed for a few seconds (drop_caches!) is
        handed back to the host and costs that again."""
        a = self.args
        if want is None:
            want = (len(self.fss) + 2) * a.size + 4 * a.export_size + 4 * a.rand_size
        size = min(want, int(mem_available() * 0.6)) // (8 * MiB) * (8 * MiB)
        if size <= 0:
            return
        if not quiet:
            print(f"bench: warming {size / 2**30:.1f} GiB of memory ...", file=sys.stderr)
        zeros = bytes(8 * MiB)
        try:
            with mmap.mmap(-1, size) as memory:
                for _ in range(size // len(zeros)):
                    memory.write(zeros)
        except OSError as exc:           # no overcommit (vm.overcommit_memory=2): go without
            print(f"bench: memory not warmed: {exc.strerror}", file=sys.stderr)

    def run(self):
        a = self.args
        print(f"bench: work folder {self.work} on {self.where}; file systems: "
              f"{', '.join(f.name for f in self.fss)}" + "".join(f"; {k} missing ({v})" for k, v in self.missing.items()),
              file=sys.stderr)
        self.warm_memory()
        print("bench: making inputs ...", file=sys.stderr)
        self.make_inputs()
        for run in range(a.runs):
            order = self.fss[run % len(self.fss):] + self.fss[:run % len(self.fss)] if self.fss else []
            for group, workloads in GROUPS.items():
                if not set(workloads) & set(a.only):
                    continue
                for fs in order:
                    print(f"bench: run {run + 1}/{a.runs} {group:8s} {fs.name}", file=sys.stderr)
                    done = {w: len(self.results[w][fs.name]) for w in workloads}
                    try:
                        getattr(self, f"group_{group}")(fs)
                    except BenchError as exc:
                        self.fail(self.unmeasured(workloads, fs, done), fs, exc)
                    except subprocess.TimeoutExpired as exc:
                        self.fail(self.unmeasured(workloads, fs, done), fs, f"timed out: {exc.cmd[:3]}")
                    finally:
                        if fs in self.mounted:
                            try:
                                fs.unmount()
                            except Exception as exc:
                                self.errors.append(f"{fs.name}: unmount failed: {exc}")
                                force_unmount(fs.mnt)
                        self.clear(fs)
        self.daemon_log_errors()

    def clear(self, fs):
        """Leave the backing folder as created: only the vault's own files remain."""
        if fs.fuse:
            return
        for name in os.listdir(fs.mnt):
            p = os.path.join(fs.mnt, name)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)

    def daemon_log_errors(self):
        """Errors the e2efs daemon logged (each kind once, with a count): reported, not fatal."""
        self.warnings = []
        for fs in self.fss:
            log = os.path.join(fs.base, "daemon.log")
            if not os.path.exists(log):
                continue
            kinds, last = collections.Counter(), None
            with open(log, errors="replace") as f:
                for line in f:
                    line = re.sub(r"\d+", "N", line)     # one kind, whatever the inode
                    if " ERROR " in line:
                        last = line.split(" ERROR ", 1)[1].strip()
                        kinds[last] += 1
                    elif last and line[:1] not in (" ", "T") and ":" in line:   # the exception line
                        kinds[last] -= 1
                        last = f"{last}: {line.strip()}"
                        kinds[last] += 1
                        last = None
            for kind, n in kinds.items():
                if n:
                    self.warnings.append(f"{fs.name} daemon logged {n}× ERROR {kind}")

    # -- report
    def report(self):
        a = self.args
        names = [n for n in FS_NAMES if n in a.fs]
        rows, table = [], []
        head = ["workload", "unit", *names, "e2efs / ref (per-run range)", "target", "result", "e2efs CPU s", "ref CPU s", "e2efs peak RSS MiB"]
        table.append("| " + " | ".join(head) + " |")
        table.append("|" + "|".join(["---", "---"] + ["---:"] * (len(names) + 1) + ["---", "---", "---:", "---:", "---:"]) + "|")
        for w, (label, unit, better, *_rest) in WORKLOADS.items():
            if w not in a.only:
                continue
            row = {}
            for n in names:
                vals = self.results[w].get(n, [])
                if n in self.missing:
                    row[n] = "missing"
                elif "FAIL" in vals:
                    row[n] = "FAIL"
                else:
                    row[n] = median(vals)
            r, ref = ratio(w, row)
            runs = {n: self.results[w].get(n, []) for n in names}
            spread = run_ratios(w, runs, row)
            target, result = verdict(w, row)
            cpu, ref_cpu = median(self.cpu[w].get("e2efs", [])), reference_cpu(w, row, self.cpu[w])
            rss = max(self.rss[w].get("e2efs", []), default=None)
            rows.append(dict(workload=w, label=label, unit=unit, values=row, runs=runs,
                             ratio=r, run_ratios=spread, reference=ref, target=target, result=result, e2efs_cpu_s=cpu,
                             reference_cpu_s=ref_cpu, e2efs_peak_rss_mib=rss))
            cells = [label, unit, *[fmt(row[n], unit) for n in names],
                     ratio_text(r, ref, spread), target, result,
                     *("" if c is None else f"{c:.2f}" for c in (cpu, ref_cpu)), "" if rss is None else f"{rss:.0f}"]
            table.append("| " + " | ".join(cells) + " |")
        notes = []
        wr = next((r for r in rows if r["workload"] == "write"), None)
        if wr and wr["e2efs_peak_rss_mib"] is not None:
            rss = wr["e2efs_peak_rss_mib"]
            notes.append(f"e2efs daemon peak RSS while writing {a.size // MiB} MiB: {rss:.0f} MiB "
                         f"(target ≤ {RSS_TARGET_MIB} MiB: {'PASS' if rss <= RSS_TARGET_MIB else 'MISS'})")
        sizes = (f"sizes: sequential {a.size // MiB} MiB, long write {a.long_size // MiB} MiB"
                 + (f" ({getattr(self, 'long_write_files', 1)} files)" if getattr(self, "long_write_files", 1) > 1 else "")
                 + f", random file {a.rand_size // MiB} MiB × {a.rand_ops} ops "
                 f"({'fio psync' if self.fio else 'Python pread/pwrite'}), tree {a.files} files in {a.dirs} dirs "
                 f"({self.tree_bytes / MiB:.0f} MiB), SQLite {a.rows} rows / {a.transactions} transactions, "
                 f"offline tree {getattr(self, 'offline_bytes', 0) / MiB:.0f} MiB; "
                 f"e2efs block size {a.block_size or 'default'}; median of {a.runs} run(s); "
                 f"backing: {self.where}")
        md = "\n".join(table) + "\n\n" + "\n".join(f"* {n}" for n in [sizes, *notes] +
                                                  [f"{k}: missing ({v})" for k, v in self.missing.items()])
        if self.errors:
            md += "\n\n**Errors (wrong data or failed commands)**\n\n" + "\n".join(f"* {e}" for e in self.errors)
        if self.warnings:
            md += "\n\n**Warnings**\n\n" + "\n".join(f"* {e}" for e in self.warnings)
        prof = self.profile_summary()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.makedirs(a.out, exist_ok=True)
        doc = dict(when=stamp, machine=machine(), args={k: v for k, v in vars(a).items()}, where=self.where,
                   missing=self.missing, errors=self.errors, warnings=self.warnings, rows=rows, profiles=prof,
                   cpu_s={w: dict(v) for w, v in self.cpu.items()},
                   peak_rss_mib={w: dict(v) for w, v in self.rss.items()})
        with open(os.path.join(a.out, f"bench-{stamp}.json"), "w") as f:
            json.dump(doc, f, indent=1, default=str)
        full = md + ("\n\n" + prof_md(prof) if prof else "")
        with open(os.path.join(a.out, f"bench-{stamp}.md"), "w") as f:
            f.write(f"# e2efs bench {stamp}\n\n{machine_md()}\n\n{full}\n")
        print(full)
        print(f"\nbench: wrote {a.out}/bench-{stamp}.md and .json", file=sys.stderr)
        return 1 if self.errors else 0

    def profile_summary(self):
        out = {}
        for phase, files in self.profiles.items():
            self_t, incl, total = collections.Counter(), collections.Counter(), 0
            for path in files:
                with open(path) as f:
                    for line in f:
                        stack, _, n = line.rstrip().rpartition(" ")
                        if not stack or not n.isdigit():
                            continue
                        n = int(n)
                        frames = stack.split(";")
                        total += n
                        self_t[short_frame(frames[-1])] += n
                        for fr in set(short_frame(x) for x in frames):
                            incl[fr] += n
            if total:
                out[phase] = dict(samples=total, files=files,
                                  self=[(k, round(100 * v / total, 1)) for k, v in self_t.most_common(12)],
                                  inclusive=[(k, round(100 * v / total, 1)) for k, v in incl.most_common(40)
                                             if "e2efs/" in k or "pyfuse3" in k][:15])
        return out


def short_frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    frame = frame.strip()
    if "(" in frame and frame.endswith(")"):
        fn, _, loc = frame[:-1].rpartition(" (")
        path, _, _line = loc.rpartition(":")
        parts = path.split("/")
        if "e2efs" in parts:
            path = "/".join(parts[parts.index("e2efs"):])
        else:
            path = "/".join(parts[-2:])
        return f"{fn} ({path})"
    return frame


def prof_md(prof):
    lines = ["**py-spy, e2efs daemon (share of samples, idle wait included)**", ""]
    for phase, p in prof.items():
        lines.append(f"* {phase} ({p['samples']} samples): self " +
                     ", ".join(f"{k} {v}%" for k, v in p["self"][:6]))
        lines.append("  inclusive " + ", ".join(f"{k} {v}%" for k, v in p["inclusive"][:8]))
    return "\n".join(lines)


class _BytesReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=-1):
        n = len(self.data) - self.pos if n < 0 else n
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def dd(src, dst, bs, count=None):
    sh(["dd", f"if={src}", f"of={dst}", f"bs={bs}", *([f"count={count}"] if count else []),
        *(["conv=fsync"] if dst != "/dev/null" else []), "status=none"])


def sha_file(path, limit=None) -> str:
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while True:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def check_sha(path, digest, what):
    try:
        got = sha_file(path)
    except OSError as exc:
        raise BenchError(f"{what}: cannot read back: {exc}") from None
    if got != digest:
        raise BenchError(f"{what}: WRONG DATA read back from {path}")


def verify_random(path, size, n, check_after):
    """Write ``n`` known 4 KiB blocks at random offsets, remount, read them back."""
    rng = random.Random(7)
    blocks = {}
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(n):
            off = rng.randrange(size // 4096) * 4096
            data = rng.randbytes(4096)
            os.pwrite(fd, data, off)
            blocks[off] = data
        os.fsync(fd)
    finally:
        os.close(fd)
    check_after()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, data in blocks.items():
            if os.pread(fd, 4096, off) != data:
                raise BenchError(f"random I/O: WRONG DATA at offset {off} of {path}")
    finally:
        os.close(fd)


def python_random(path, size, ops, source):
    """Timed fallback without fio: 50/50 random 4 KiB preads/pwrites, each read checked."""
    with open(source, "rb") as f:
        model = bytearray(f.read(size))
    rng = random.Random(8)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(ops):
            off = rng.randrange(size // 4096) * 4096
            if rng.random() < 0.5:
                if os.pread(fd, 4096, off) != model[off:off + 4096]:
                    raise BenchError(f"random I/O: WRONG DATA at offset {off}")
            else:
                data = rng.randbytes(4096)
                os.pwrite(fd, data, off)
                model[off:off + 4096] = data
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(model).hexdigest()


def fmt(v, unit):
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    cpu = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "")
    flags = next((l for l in lines if l.startswith("flags")), "")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    vers = {}
    for cmd in (["gocryptfs", "-version"], ["securefs", "version"], ["fio", "--version"]):
        try:
            vers[cmd[0]] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            vers[cmd[0]] = None
    try:
        import pyfuse3  # noqa: F401
        vers["pyfuse3"] = getattr(pyfuse3, "__version__", "?")
    except ImportError:
        vers["pyfuse3"] = None
    vers["libfuse"] = libfuse_version()
    vers["e2efs"] = e2efs_source()
    return dict(cpu=cpu, cores=os.cpu_count(), aes="aes" in flags.split(), vaes="vaes" in flags.split(),
                mem_gib=round(mem, 1), kernel=platform.release(), python=platform.python_version(),
                idle=idle_policy(), versions=vers)


def libfuse_version() -> str | None:
    """What INIT can negotiate depends on it (3.14 never passes FUSE_HANDLE_KILLPRIV on)."""
    try:
        out = subprocess.run(["fusermount3", "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.rsplit(":", 1)[-1].strip() or None


def idle_policy() -> str | None:
    """How an idle CPU waits.  A program waiting for a FUSE reply sleeps, so each
    reply wakes it on an idle CPU; where idle vCPUs halt at once (cpuidle haltpoll
    with guest_halt_poll_ns 0) each wake-up is a round trip through the host:
    securefs's SQLite row halves when they poll first, and the verdicts of the
    small-file rows change (docs/PERFORMANCE.md, tenth round)."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    cpuidle = "/sys/devices/system/cpu/cpuidle"
    driver = read(f"{cpuidle}/current_driver")
    if driver is None:
        return None
    governor = read(f"{cpuidle}/current_governor") or read(f"{cpuidle}/current_governor_ro")
    poll_ns = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return (f"cpuidle {driver}/{governor}"
            + (f", guest_halt_poll_ns {poll_ns}" if poll_ns is not None else ""))


def e2efs_folder() -> str | None:
    try:
        return subprocess.run([sys.executable, "-c", "import e2efs, os; print(os.path.dirname(e2efs.__file__))"],
                              capture_output=True, text=True, timeout=30, cwd="/").stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def compile_e2efs() -> None:
    """Byte-compile the e2efs under test, as an installed one is: under
    PYTHONDONTWRITEBYTECODE every e2efs command would compile its modules
    afresh (~45 ms of every mount)."""
    where = e2efs_folder()
    if where:
        subprocess.run([sys.executable, "-m", "compileall", "-q", where], capture_output=True)


def e2efs_source() -> str:
    """Which e2efs code runs: its folder and, in a git checkout, the commit (+dirty)."""
    where = e2efs_folder()
    if where is None:
        return "?"
    root = os.path.dirname(where)
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if rev.returncode == 0:
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "e2efs"],
                               capture_output=True, text=True).stdout.strip()
        return f"{rev.stdout.strip()}{' +uncommitted changes' if dirty else ''} ({where})"
    try:
        with open(os.path.join(root, ".commit")) as f:        # a `git archive` snapshot
            return f"{f.read().strip()} ({where})"
    except OSError:
        return where


def machine_md():
    m = machine()
    return (f"Machine: {m['cpu']}, {m['cores']} cores (AES-NI {m['aes']}, VAES {m['vaes']}), {m['mem_gib']} GiB, "
            f"kernel {m['kernel']}, Python {m['python']}" + (f", idle CPUs: {m['idle']}" if m["idle"] else "") + "; " +
            ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile and not (shutil.which("py-spy") or os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy"))):
        print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    bench = Bench(args)
    bench.profile_dir = os.path.abspath(os.path.join(args.out, "profiles-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    compile_e2efs()
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        bench.cleanup()
        return 130
    except Exception:
        bench.cleanup()
        raise
    bench.cleanup()
    return bench.report()


if __name__ == "__main__":
    sys.exit(main())
