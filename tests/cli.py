"""Run the real ``e2efs`` command the way a user does, for the CLI tests."""

import os
import re
import subprocess
import sys

FAST_KDF = ["--kdf-memory", "8M", "--kdf-time", "1", "--kdf-parallelism", "1"]
PASSWORD = "correct horse battery staple"
KEY_RE = re.compile(r"^    ([0-9a-f]{4}(?: [0-9a-f]{4}){3})$", re.M)


def run(*args, check=True, input=None, cwd=None):
    """``e2efs ARGS`` in a subprocess; returns CompletedProcess (text)."""
    done = subprocess.run([sys.executable, "-m", "e2efs", *map(str, args)], capture_output=True, text=True,
                          input=input, cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"e2efs {' '.join(map(str, args))} exited {done.returncode}: {done.stderr}")
    return done


def init_vault(tmp_path, name="vault", password=PASSWORD, *extra):
    """A vault with a fast KDF; returns (vault path, password file, key file)."""
    vault = tmp_path / name
    pw = tmp_path / f"{name}.pw"
    if password is not None:
        pw.write_text(password + "\n")
    args = ["init", vault, *FAST_KDF, *extra]
    args += ["--key-only"] if password is None else ["--password-file", pw]
    out = run(*args).stdout
    key = tmp_path / f"{name}.key"
    key.write_text(" ".join(KEY_RE.findall(out)) + "\n")
    assert len(key.read_text().split()) == 16, out
    return vault, pw, key


def walk_paths(root):
    """(path relative to root, absolute path) of everything below ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), path


def tree_snapshot(root) -> dict:
    """path -> (type, mode, content or link target, mtime_ns) for comparing two trees."""
    snap = {}
    for rel, path in walk_paths(root):
        st = os.lstat(path)
        if os.path.islink(path):
            snap[rel] = ("link", os.readlink(path))
        elif os.path.isdir(path):
            snap[rel] = ("dir", oct(st.st_mode), st.st_mtime_ns)
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                snap[rel] = ("file", oct(st.st_mode), f.read(), st.st_mtime_ns)
        else:
            snap[rel] = ("other", oct(st.st_mode))
    return snap
