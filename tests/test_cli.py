"""The offline commands, run as a user runs them: real vaults, real exit codes."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest

from e2efs.errors import (EXIT_CODES, CorruptData, DestinationNotEmpty, IOFailure, NotFoundInVault, OutOfMemory,
                          SecretInputError, VaultCorrupt, VaultNotFound, WeakPassword, WrongSecret)
from e2efs.vault import VAULT_BACKUP, VAULT_FILE
from cli import FAST_KDF, PASSWORD, init_vault, run, tree_snapshot

MIB = 1 << 20


@pytest.fixture
def realistic_tree(tmp_path):
    """Nested folders, unicode and 200-character names, empty files, a symlink,
    a file of exactly one block, a multi-MiB file, a fifo."""
    src = tmp_path / "src"
    (src / "Media" / "WhatsApp Images" / "2026").mkdir(parents=True)
    (src / "Médias ✓ 日本語").mkdir()
    (src / "msgstore.db").write_bytes(os.urandom(3 * MIB + 17))
    (src / "Media" / "WhatsApp Images" / "2026" / "IMG-0001.jpg").write_bytes(os.urandom(65536))
    (src / "Médias ✓ 日本語" / ("n" * 200)).write_bytes(b"long name")
    (src / "Médias ✓ 日本語" / "empty").write_bytes(b"")
    (src / "Media" / "notes.txt").write_text("secret chat text\n")
    (src / "Media" / "latest").symlink_to("WhatsApp Images/2026/IMG-0001.jpg")
    (src / "empty-dir").mkdir()
    os.mkfifo(src / "a-fifo")
    os.chmod(src / "Media" / "notes.txt", 0o640)
    os.utime(src / "msgstore.db", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return src


def test_import_export_round_trip(tmp_path, realistic_tree):
    vault, pw, key = init_vault(tmp_path)
    run("import", realistic_tree, vault, "--password-file", pw)
    run("export", vault, tmp_path / "restored", "--password-file", pw)
    assert tree_snapshot(tmp_path / "restored") == tree_snapshot(realistic_tree)
    fsck = run("fsck", vault, "--password-file", pw)
    assert "no problems" in fsck.stdout


def test_vault_holds_no_plaintext(tmp_path, realistic_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", realistic_tree, vault, "--password-file", pw)
    for dirpath, dirnames, filenames in os.walk(vault):
        for name in dirnames + filenames:
            # backing names are lowercase base32 (a-z, 2-7): each of these holds a character
            # base32 never uses, or is too long to occur by chance, so a hit is a leak
            for word in ("msgstore.db", "Media", "WhatsApp", "notes.txt", "IMG-0001", "Médias", "n" * 20):
                assert word not in name, name
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                assert b"secret chat text" not in data and b"WhatsApp Images" not in data
                assert PASSWORD.encode() not in data


def test_key_only_vault_and_export_without_vault_files(tmp_path, realistic_tree):
    vault, _, key = init_vault(tmp_path, password=None)
    run("import", realistic_tree, vault, "--key-file", key)
    for name in ("e2efs.vault", "e2efs.vault.bak"):
        os.unlink(vault / name)
    run("export", vault, tmp_path / "restored", "--key-file", key)
    assert tree_snapshot(tmp_path / "restored") == tree_snapshot(realistic_tree)


def test_key_accepted_in_any_case_with_dashes(tmp_path):
    vault, pw, key = init_vault(tmp_path)
    messy = key.read_text().upper().replace(" ", "-")
    key.write_text("  " + messy[:20] + "\n" + messy[20:] + "\n")
    assert run("ls", vault, "--key-file", key).returncode == 0


def test_cat_and_ls(tmp_path, realistic_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", realistic_tree, vault, "--password-file", pw)
    assert run("cat", vault, "Media/notes.txt", "--password-file", pw).stdout == "secret chat text\n"
    listing = json.loads(run("ls", vault, "Media", "--json", "--password-file", pw).stdout)
    by_name = {e["name"]: e for e in listing}
    assert by_name["notes.txt"]["size"] == 17 and by_name["notes.txt"]["mode"] == "0o640"
    assert by_name["latest"]["type"] == "symlink"
    missing = run("cat", vault, "Media/nope", "--password-file", pw, check=False)
    assert missing.returncode == NotFoundInVault.exit_code


def test_info_shows_parameters_and_no_secret(tmp_path):
    vault, pw, key = init_vault(tmp_path)
    info = json.loads(run("info", vault, "--json").stdout)
    assert info["format_version"] == 1 and info["block_size"] == 65536
    assert info["slots"][0]["memory_kib"] == 8192
    text = run("info", vault).stdout
    assert key.read_text().split()[0] not in text


def _single_block(vault):
    """The backing path of the one regular ciphertext file in ``vault``."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(vault) for f in fs if not f.startswith("e2efs.vault")]
    assert len(files) == 1
    return files[0]


def test_fsck_and_cat_detect_a_flipped_bit(tmp_path):
    vault, pw, _ = init_vault(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "chat.txt").write_bytes(b"x" * 100_000)
    run("import", src, vault, "--password-file", pw)
    path = _single_block(vault)
    with open(path, "r+b") as f:
        f.seek(70_000)
        byte = f.read(1)
        f.seek(70_000)
        f.write(bytes([byte[0] ^ 1]))
    fsck = run("fsck", vault, "--password-file", pw, check=False)
    assert fsck.returncode == CorruptData.exit_code
    assert "block 1 failed authentication" in fsck.stdout
    cat = run("cat", vault, "chat.txt", "--password-file", pw, check=False)
    assert cat.returncode == CorruptData.exit_code and cat.stdout == ""
    export = run("export", vault, tmp_path / "out", "--password-file", pw, check=False)
    assert export.returncode == CorruptData.exit_code
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_kdf_without_memory_is_one_line(tmp_path):
    """A vault file may ask Argon2id for up to 16 GiB (its MAC is checked only once
    the KDF has run): a process that cannot get it says so in one line."""
    vault, pw, _ = init_vault(tmp_path)
    for name in (VAULT_FILE, VAULT_BACKUP):
        doc = json.loads((vault / name).read_text())
        doc["slots"][0]["memory_kib"] = 16 << 20
        (vault / name).write_text(json.dumps(doc))
    before = {p: p.read_bytes() for p in vault.iterdir()}
    limit = 2 << 30
    done = subprocess.run([sys.executable, "-m", "e2efs", "ls", str(vault), "--password-file", str(pw)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert done.returncode == OutOfMemory.exit_code, done.stderr
    assert done.stderr.count("\n") == 1 and "16384 MiB" in done.stderr and "64-digit key" in done.stderr
    assert {p: p.read_bytes() for p in vault.iterdir()} == before


def test_every_exit_code_is_in_the_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    table = dict((name, int(code)) for code, name in re.findall(r"^\| (\d+) \| (\w+) \|", readme, re.M))
    assert table == EXIT_CODES


def test_wrong_password_and_wrong_key(tmp_path):
    vault, pw, key = init_vault(tmp_path)
    before = {p: p.read_bytes() for p in vault.iterdir()}
    bad = tmp_path / "bad.pw"
    bad.write_text("not the password\n")
    result = run("ls", vault, "--password-file", bad, check=False)
    assert result.returncode == WrongSecret.exit_code and "wrong password" in result.stderr
    other_vault, _, other_key = init_vault(tmp_path, name="other")
    result = run("ls", vault, "--key-file", other_key, check=False)
    assert result.returncode == WrongSecret.exit_code and "wrong key" in result.stderr
    assert {p: p.read_bytes() for p in vault.iterdir()} == before


@pytest.mark.parametrize("text", ["1234", "zz" * 32, "0" * 63, "0" * 65])
def test_malformed_key_rejected(tmp_path, text):
    vault, _, key = init_vault(tmp_path)
    key.write_text(text)
    result = run("ls", vault, "--key-file", key, check=False)
    assert result.returncode == 14 and "64 hex digits" in result.stderr


def test_weak_password_refused_unless_allowed(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("password123\n")
    result = run("init", tmp_path / "v", *FAST_KDF, "--password-file", pw, check=False)
    assert result.returncode == WeakPassword.exit_code and "too weak" in result.stderr
    assert not (tmp_path / "v").exists()
    run("init", tmp_path / "v", *FAST_KDF, "--password-file", pw, "--allow-weak-password")
    assert run("ls", tmp_path / "v", "--password-file", pw).returncode == 0


def test_an_empty_password_is_a_secret_input_error_at_unlock_too(tmp_path):
    vault, _, _ = init_vault(tmp_path)
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    for source in (["--password-file", empty], ["--password-command", "true"]):
        result = run("ls", vault, *source, check=False)
        assert result.returncode == SecretInputError.exit_code and "is empty" in result.stderr, result.stderr
    code, out = _typed_at_prompt(["ls", vault], b"\n")
    assert code == SecretInputError.exit_code and b"no password entered" in out, out


def _typed_at_prompt(args, typed: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Run ``e2efs ARGS`` on a terminal and type ``typed`` at its first prompt:
    (exit code, all it wrote to the terminal)."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "e2efs", *map(str, args)])
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:         # EIO: the program is gone and the terminal closed
                break
            out += chunk
            if typed and b": " in out:
                os.write(fd, typed)
                typed = b""
        else:
            os.kill(pid, 9)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out
    finally:
        os.close(fd)


def test_no_secret_and_no_terminal(tmp_path):
    vault, _, _ = init_vault(tmp_path)
    result = subprocess.run(["setsid", "--wait", *_python_e2efs(), "ls", str(vault)], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == SecretInputError.exit_code and "--password-file" in result.stderr


def _python_e2efs():
    import sys
    return [sys.executable, "-m", "e2efs"]


def test_bad_vaults(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    missing = run("ls", tmp_path / "nowhere", "--password-file", pw, check=False)
    assert missing.returncode == VaultNotFound.exit_code and "no vault" in missing.stderr
    (tmp_path / "plain").mkdir()
    not_vault = run("ls", tmp_path / "plain", "--password-file", pw, check=False)
    assert not_vault.returncode == VaultNotFound.exit_code
    vault, pw, _ = init_vault(tmp_path)
    for name in ("e2efs.vault", "e2efs.vault.bak"):
        (vault / name).write_text('{"format": "e2efs", "version": 1, "block_si')
    corrupt = run("ls", vault, "--password-file", pw, check=False)
    assert corrupt.returncode == VaultCorrupt.exit_code and "not valid JSON" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_newer_vault_version_refused(tmp_path):
    vault, pw, _ = init_vault(tmp_path)
    for name in ("e2efs.vault", "e2efs.vault.bak"):
        doc = json.loads((vault / name).read_text())
        doc["version"] = 2
        (vault / name).write_text(json.dumps(doc))
    result = run("ls", vault, "--password-file", pw, check=False)
    assert result.returncode == 12 and "upgrade e2efs" in result.stderr


def test_one_damaged_vault_copy_is_survived(tmp_path, realistic_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", realistic_tree, vault, "--password-file", pw)
    (vault / "e2efs.vault").write_text("garbage")
    result = run("ls", vault, "--password-file", pw)
    assert "msgstore.db" in result.stdout and "warning" in result.stderr


def test_export_into_non_empty_folder_refused(tmp_path):
    vault, pw, _ = init_vault(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    result = run("export", vault, dest, "--password-file", pw, check=False)
    assert result.returncode == DestinationNotEmpty.exit_code
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_large_files_export_in_parallel_chunks_and_a_bad_block_stops_it(tmp_path):
    """Files of 4 MiB and more are decrypted 1 MiB chunk by chunk on several
    threads: the copy is exact, and a tampered block in a middle chunk fails
    the export with nothing left behind."""
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(21 * MIB + 5)                      # ends inside a block; more chunks than IN_FLIGHT
    (src / "video.mp4").write_bytes(big)
    (src / "small").write_bytes(b"s")
    vault, pw, _ = init_vault(tmp_path)
    run("import", src, vault, "--password-file", pw)
    run("export", vault, tmp_path / "restored", "--password-file", pw)
    assert (tmp_path / "restored" / "video.mp4").read_bytes() == big
    assert tree_snapshot(tmp_path / "restored") == tree_snapshot(src)

    cipher = max((p for p in vault.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(cipher, "r+b") as f:                      # a byte of a block in the sixth MiB
        f.seek(5 * MIB + 1000)
        byte = f.read(1)
        f.seek(5 * MIB + 1000)
        f.write(bytes([byte[0] ^ 1]))
    result = run("export", vault, tmp_path / "again", "--password-file", pw, check=False)
    assert result.returncode == CorruptData.exit_code
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "vault", "vault.pw", "vault.key", "restored"])


def _with_size(st: os.stat_result, size: int):
    fields = {k: getattr(st, k) for k in dir(st) if k.startswith("st_")}
    return SimpleNamespace(**{**fields, "st_size": size})


@pytest.mark.parametrize("seen_size_error", [3 * MIB, -4 * MIB], ids=["shrank", "grew"])
def test_a_large_file_whose_size_changes_during_import_is_imported_as_it_now_is(tmp_path, monkeypatch,
                                                                               seen_size_error):
    """The chunks of a large file are read at offsets fixed by the size seen at
    the start; a file of another size by the end is streamed again, whole."""
    from e2efs import transfer
    from e2efs.tree import Tree
    from e2efs.vault import LockedVault
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(9 * MIB)
    (src / "db").write_bytes(data)
    vault, pw, _ = init_vault(tmp_path)
    tree = Tree(LockedVault.read(str(vault)).unlock_with_password(PASSWORD.encode()))
    real_lstat = os.lstat

    def lstat_from_before_the_change(path, *a, **kw):
        st = real_lstat(path, *a, **kw)
        return _with_size(st, st.st_size + seen_size_error) if os.fsdecode(path).endswith("/db") else st
    monkeypatch.setattr(os, "lstat", lstat_from_before_the_change)
    stats = transfer.import_tree(tree, str(src))
    monkeypatch.undo()
    assert stats.bytes == len(data)                 # what was imported, not the size first seen
    run("export", vault, tmp_path / "out", "--password-file", pw)
    assert (tmp_path / "out" / "db").read_bytes() == data
    assert run("fsck", vault, "--password-file", pw).returncode == 0


def test_init_refuses_non_empty_folder(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x").write_text("x")
    result = run("init", tmp_path / "v", "--key-only", check=False)
    assert result.returncode == DestinationNotEmpty.exit_code


def test_unreadable_source_file():
    """Run as an unprivileged user so that a mode-000 file really is unreadable."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as an unprivileged user")
    work = tempfile.mkdtemp(prefix="e2efs-unreadable-")
    try:
        os.chmod(work, 0o777)
        from pathlib import Path
        w = Path(work)
        src = w / "src"
        (src / "Media").mkdir(parents=True)
        (src / "Media" / "a.jpg").write_bytes(b"readable")
        (src / "Media" / "locked.db").write_bytes(b"can't read me")
        os.chmod(src / "Media" / "locked.db", 0)
        subprocess.run(["chown", "-R", "65534:65534", work], check=True)
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *_python_e2efs()]
        env = {**os.environ, "HOME": work}
        out = subprocess.run([*user, "init", str(w / "v"), "--key-only", "--json", *FAST_KDF], check=True,
                             env=env, capture_output=True, text=True, cwd=work).stdout
        key = w / "k"
        key.write_text(json.loads(out)["recovery_key"])
        done = subprocess.run([*user, "import", str(src), str(w / "v"), "--key-file", str(key)],
                              capture_output=True, text=True, env=env, cwd=work)
        assert done.returncode == IOFailure.exit_code, done.stderr
        assert "locked.db" in done.stderr and "Permission denied" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not [f for _, _, fs in os.walk(w / "v") for f in fs if f.startswith(".e2efs-tmp-")]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_name_that_is_not_utf8_is_listed_as_its_bytes(tmp_path):
    """Under a strict UTF-8 stdout (a desktop's locale) ls printed a traceback for
    such a name; it prints the name's bytes, as ls(1) does."""
    import sys
    vault, pw, _ = init_vault(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"voice-\xff.opus"), "wb") as f:
        f.write(b"x")
    run("import", src, vault, "--password-file", pw)
    done = subprocess.run([sys.executable, "-m", "e2efs", "ls", str(vault), "--password-file", str(pw)],
                          capture_output=True, env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert done.returncode == 0 and b"voice-\xff.opus" in done.stdout, done.stderr
