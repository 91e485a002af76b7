#!/usr/bin/env python3
"""make stress: long runs against a real mount, with remounts and SIGKILLs.

1. Kill points: the four crash workloads of tests/test_crash.py (fresh file,
   O_TRUNC overwrite, SQLite commits, tree rename), the daemon SIGKILLed at a
   random moment each round, then remount + fsck + verification.
2. Random operations (create, overwrite, append, truncate, rename, unlink,
   mkdir, rmdir, read) on the mount against an in-memory model, with periodic
   clean remounts and SIGKILLs between operations; after each the whole tree is
   compared with the model.
3. One directory with 100 000 entries: create, list, remount, list, look up.
4. The daemon's permission checks against the kernel's: random operations by
   root without capabilities on a mount with --allow-other (the kernel checks)
   and one without (the daemon checks), every errno compared (as root only).

Prints operations done, kills, remounts and anomalies (0 expected); exit 1 on
any anomaly.  Options: --kills N, --ops N, --big N, --perm-ops N, --seed S.
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

from conftest import Mount, _fuse_missing  # noqa: E402
import test_crash  # noqa: E402
import test_mount_permissions  # noqa: E402


class Stats:
    def __init__(self):
        self.ops = self.kills = self.remounts = 0
        self.anomalies: list[str] = []
        self.outcomes: dict[str, int] = {}

    def anomaly(self, text: str) -> None:
        self.anomalies.append(text)
        print(f"ANOMALY: {text}", flush=True)


def new_mount(base: str, name: str) -> Mount:
    root = os.path.join(base, name)
    os.makedirs(os.path.join(root, "run"))
    from pathlib import Path
    return Mount(Path(root), os.path.join(root, "run"))


def recover(m: Mount) -> None:
    """After an anomaly: whatever state the mount is in, get a live one back."""
    m.teardown()
    m.proc = None
    m.mount()


# -- 1. kill points ------------------------------------------------------------

def kill_points(base: str, n: int, rng: random.Random, stats: Stats) -> None:
    m = new_mount(base, "crash")
    try:
        m.mount()
        test_crash.prepare(m)
        with open(m.p("backup.db"), "wb") as f:
            f.write(os.urandom(3 << 20))
        workloads = ["new", "trunc", "sqlite", "sqlite-wal", "rename"]
        for i in range(n):
            workload = workloads[i % len(workloads)]
            try:
                result = test_crash.crash_round(m, workload, rng, os.path.join(base, "crash"))
                key = f"{workload}:{'ok' if workload.startswith('sqlite') else result['outcome']}"
                stats.outcomes[key] = stats.outcomes.get(key, 0) + 1
            except Exception as exc:
                stats.anomaly(f"kill point {i} ({workload}): {exc}")
                traceback.print_exc()
                print("  the daemon log's last lines:\n    " + "\n    ".join(m.log_text().splitlines()[-15:]),
                      flush=True)
                recover(m)
            stats.kills += 1
            stats.remounts += 1
            if (i + 1) % 20 == 0:
                print(f"  kill points: {i + 1}/{n}", flush=True)
        m.unmount()
    finally:
        m.teardown()


# -- 2. random operations against a model --------------------------------------

class Model:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}

    def parent_ok(self, path: str) -> bool:
        return os.path.dirname(path) in self.dirs


def snapshot(root: str) -> tuple[dict, set]:
    files, dirs = {}, {""}
    for d, dnames, fnames in os.walk(root):
        rel = os.path.relpath(d, root)
        rel = "" if rel == "." else rel
        for n in dnames:
            dirs.add(os.path.join(rel, n))
        for n in fnames:
            with open(os.path.join(d, n), "rb") as f:
                files[os.path.join(rel, n)] = f.read()
    return files, dirs


def compare(m: Mount, model: Model, stats: Stats, when: str) -> None:
    files, dirs = snapshot(m.path)
    if dirs != model.dirs:
        stats.anomaly(f"{when}: directories differ: extra {sorted(dirs - model.dirs)[:5]} "
                      f"missing {sorted(model.dirs - dirs)[:5]}")
    if files.keys() != model.files.keys():
        stats.anomaly(f"{when}: files differ: extra {sorted(files.keys() - model.files.keys())[:5]} "
                      f"missing {sorted(model.files.keys() - files.keys())[:5]}")
    for path in files.keys() & model.files.keys():
        if files[path] != model.files[path]:
            stats.anomaly(f"{when}: content of {path} differs ({len(files[path])} vs {len(model.files[path])} bytes)")


def random_ops(base: str, n: int, rng: random.Random, stats: Stats) -> None:
    m = new_mount(base, "ops")
    model = Model()
    names = [f"n{i}" for i in range(12)] + ["L" * 200, "chat.db", "Médias ✓"]
    try:
        m.mount()
        for i in range(n):
            op = rng.choice(["create", "create", "overwrite", "append", "truncate", "rename", "unlink",
                             "mkdir", "rmdir", "read", "read"])
            parent = rng.choice(sorted(model.dirs))
            path = os.path.join(parent, rng.choice(names))
            full = m.p(path)
            try:
                _one_op(op, path, full, m, model, rng)
            except Exception as exc:
                stats.anomaly(f"op {i} {op} {path}: {type(exc).__name__}: {exc}")
                recover(m)
            stats.ops += 1
            if (i + 1) % 250 == 0:
                if rng.random() < 0.5:
                    test_crash._kill_daemon(m, stale=rng.random() < 0.5)
                    stats.kills += 1
                    m.mount()
                else:
                    m.remount()
                stats.remounts += 1
                compare(m, model, stats, f"after op {i + 1}")
            if (i + 1) % 1000 == 0:
                print(f"  random ops: {i + 1}/{n}", flush=True)
        m.remount()
        stats.remounts += 1
        compare(m, model, stats, "at the end")
        m.unmount()
    finally:
        m.teardown()


def _expect_error(fn) -> bool:
    try:
        fn()
    except OSError:
        return True
    return False


def _one_op(op, path, full, m, model, rng) -> None:
    is_file, is_dir = path in model.files, path in model.dirs
    if op in ("create", "overwrite"):
        if is_dir:
            return
        data = rng.randbytes(rng.choice([0, 1, 100, 4095, 4096, 4097, 70000, 300000]))
        with open(full, "wb") as f:
            f.write(data)
        model.files[path] = data
    elif op == "append" and is_file:
        data = rng.randbytes(rng.randrange(1, 9000))
        with open(full, "ab") as f:
            f.write(data)
        model.files[path] += data
    elif op == "truncate" and is_file:
        size = rng.randrange(0, len(model.files[path]) + 5000)
        os.truncate(full, size)
        old = model.files[path]
        model.files[path] = old[:size] + bytes(max(0, size - len(old)))
    elif op == "rename" and (is_file or is_dir) and path:
        dst_parent = rng.choice(sorted(model.dirs))
        dst = os.path.join(dst_parent, rng.choice(["r1", "r2", "chat.db", "n1"]))
        if dst == path or (is_dir and (dst + "/").startswith(path + "/")):
            return
        if dst in model.dirs or (is_dir and dst in model.files):
            return
        os.rename(full, m.p(dst))
        if is_file:
            model.files[dst] = model.files.pop(path)
        else:
            model.files.pop(dst, None)
            for p in list(model.files):
                if p.startswith(path + "/"):
                    model.files[dst + p[len(path):]] = model.files.pop(p)
            for d in list(model.dirs):
                if d == path or d.startswith(path + "/"):
                    model.dirs.discard(d)
                    model.dirs.add(dst + d[len(path):])
    elif op == "unlink" and is_file:
        os.unlink(full)
        del model.files[path]
    elif op == "mkdir" and not is_file and not is_dir and len(model.dirs) < 25:
        os.mkdir(full)
        model.dirs.add(path)
    elif op == "rmdir" and is_dir and path:
        empty = not any(p.startswith(path + "/") for p in list(model.files) + list(model.dirs))
        if empty:
            os.rmdir(full)
            model.dirs.discard(path)
        else:
            assert _expect_error(lambda: os.rmdir(full)), "rmdir of a non-empty directory succeeded"
    elif op == "read" and is_file:
        with open(full, "rb") as f:
            got = f.read()
        assert got == model.files[path], f"read of {path} returned other data"


# -- 3. a big directory ----------------------------------------------------------

def big_directory(base: str, n: int, stats: Stats) -> None:
    m = new_mount(base, "big")
    try:
        m.mount()
        os.mkdir(m.p("big"))
        started = time.monotonic()
        for i in range(n):
            with open(m.p("big", f"IMG-{i:07d}.jpg"), "wb") as f:
                f.write(b"%d" % i)
            stats.ops += 1
            if (i + 1) % 20000 == 0:
                print(f"  big directory: {i + 1}/{n} created ({time.monotonic() - started:.0f} s)", flush=True)
        if len(os.listdir(m.p("big"))) != n:
            stats.anomaly("big directory: listing before remount has the wrong length")
        m.remount()
        stats.remounts += 1
        t = time.monotonic()
        names = os.listdir(m.p("big"))
        listed = time.monotonic() - t
        if len(names) != n:
            stats.anomaly(f"big directory: {len(names)} entries after remount, expected {n}")
        for i in random.Random(1).sample(range(n), 200):
            with open(m.p("big", f"IMG-{i:07d}.jpg"), "rb") as f:
                if f.read() != b"%d" % i:
                    stats.anomaly(f"big directory: entry {i} has other content")
        print(f"  big directory: {n} entries, created in {time.monotonic() - started - listed:.0f} s, "
              f"listed after remount in {listed:.1f} s", flush=True)
        m.unmount()
    finally:
        m.teardown()


# -- 4. permission checks against the kernel's ----------------------------------

def permissions_against_kernel(base: str, count: int, rng: random.Random, stats: Stats) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        print("  permissions: skipped (needs root and setpriv to drop capabilities)", flush=True)
        return
    kernel, daemon = new_mount(base, "perm-kernel"), new_mount(base, "perm-daemon")
    try:
        differences, answers = test_mount_permissions.kernel_versus_daemon(kernel, daemon, rng, count)
        stats.ops += 2 * count
        for line in differences:
            stats.anomaly(f"permissions: {line}")
        print(f"  permissions: 2 x {count} operations, answers {sorted(answers)}, "
              f"{len(differences)} differences from the kernel", flush=True)
    finally:
        kernel.teardown()
        daemon.teardown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=120, help="kill points (default 120)")
    ap.add_argument("--ops", type=int, default=4000, help="random operations (default 4000)")
    ap.add_argument("--big", type=int, default=100_000, help="entries in the big directory (0 = skip)")
    ap.add_argument("--perm-ops", type=int, default=10_000,
                    help="random operations per caller against the kernel's permission checks (default 10000)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    reason = _fuse_missing()
    if reason:
        print(f"make stress: {reason}")
        return 1
    rng = random.Random(args.seed)
    stats = Stats()
    base = tempfile.mkdtemp(prefix="e2efs-stress-")
    started = time.monotonic()
    print(f"stress: seed {args.seed}, working in {base}", flush=True)
    try:
        if args.kills:
            kill_points(base, args.kills, rng, stats)
        if args.ops:
            random_ops(base, args.ops, rng, stats)
        if args.big:
            big_directory(base, args.big, stats)
        if args.perm_ops:
            permissions_against_kernel(base, args.perm_ops, rng, stats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nstress done in {time.monotonic() - started:.0f} s (seed {args.seed}):")
    print(f"  operations: {stats.ops}")
    print(f"  SIGKILLs:   {stats.kills}")
    print(f"  remounts:   {stats.remounts}")
    print(f"  kill-point outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.outcomes.items())))
    print(f"  anomalies:  {len(stats.anomalies)}")
    for a in stats.anomalies:
        print(f"    {a}")
    return 1 if stats.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
