"""Key and vault life cycle, run as a user runs it: rekey (also killed and resumed),
import --in-place, disable, and the --quiet/--json contract of every command."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from e2efs import crypto
from e2efs.errors import (CorruptData, NotConfirmed, RekeyInProgress, VaultMounted, VerificationFailed,
                          WrongSecret)
from e2efs.rekey import KILL_ENV, snapshot_with_both_keys
from e2efs.vault import LockedVault
from cli import FAST_KDF, KEY_RE, PASSWORD, init_vault, run, tree_snapshot

MIB = 1 << 20


@pytest.fixture
def plain_tree(tmp_path):
    """Nested folders, a long and a unicode name, an empty file, a multi-block
    file, a symlink, a fifo, an empty folder."""
    src = tmp_path / "src"
    (src / "Media" / "Images").mkdir(parents=True)
    (src / "Médias ✓").mkdir()
    (src / "empty-dir").mkdir()
    (src / "msgstore.db").write_bytes(os.urandom(MIB + 17))
    (src / "Media" / "Images" / "IMG-0001.jpg").write_bytes(os.urandom(70000))
    (src / "Médias ✓" / ("n" * 200)).write_bytes(b"long name")
    (src / "Médias ✓" / "empty").write_bytes(b"")
    (src / "Media" / "notes.txt").write_text("secret chat text\n")
    (src / "Media" / "latest").symlink_to("Images/IMG-0001.jpg")
    os.mkfifo(src / "a-fifo")
    os.utime(src / "msgstore.db", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return src


def _key_of(path) -> bytes:
    return crypto.parse_recovery_key(path.read_text())


def _ciphertexts(vault) -> dict:
    """backing path -> bytes of every content file (not the vault files)."""
    out = {}
    for dirpath, _, files in os.walk(vault):
        for name in files:
            if name.startswith("e2efs.vault") or name.endswith(".name"):
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), vault)] = f.read()
    return out


def _without_dir_times(snap: dict) -> dict:
    return {k: (v[:2] if v[0] == "dir" else v) for k, v in snap.items()}


# -- rekey --------------------------------------------------------------------

def test_rekey_end_to_end(tmp_path, plain_tree):
    (plain_tree / "video.mp4").write_bytes(os.urandom(9 * MIB + 5))     # re-encrypted in chunks on threads
    vault, pw, key = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    run("export", vault, tmp_path / "before", "--password-file", pw)
    cipher_before = _ciphertexts(vault)
    new_pw = tmp_path / "new.pw"
    new_pw.write_text("a different, long enough passphrase 77\n")

    done = run("rekey", vault, "--password-file", pw, "--new-password-file", new_pw, *FAST_KDF, "--json")
    result = json.loads(done.stdout)
    new_key = tmp_path / "new.key"
    new_key.write_text(result["recovery_key"] + "\n")
    assert result["files"] == 8 and result["resumed"] is False and result["already_done"] == 0
    assert [s["type"] for s in result["slots"]] == ["password"]

    assert run("ls", vault, "--key-file", key, check=False).returncode == WrongSecret.exit_code
    assert run("ls", vault, "--password-file", pw, check=False).returncode == WrongSecret.exit_code
    run("export", vault, tmp_path / "after", "--key-file", new_key)
    run("ls", vault, "--password-file", new_pw)
    assert tree_snapshot(tmp_path / "after") == tree_snapshot(tmp_path / "before")
    assert tree_snapshot(tmp_path / "after") == tree_snapshot(plain_tree)

    cipher_after = _ciphertexts(vault)
    assert len(cipher_after) == len(cipher_before)
    assert not set(cipher_after) & set(cipher_before), "every backing name changes"
    assert not set(cipher_after.values()) & set(cipher_before.values()), "every ciphertext changes"
    assert "no problems" in run("fsck", vault, "--key-file", new_key).stdout
    assert not [n for n in os.listdir(vault) if n.startswith(".")]


def test_rekey_keeps_the_password_and_drops_other_slots(tmp_path, plain_tree):
    vault, pw, key = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    run("key", "add", vault, "--password-file", pw, "--keyfile-out", tmp_path / "usb.key")
    done = run("rekey", vault, "--password-file", pw)
    assert "Dropped key slots" in done.stdout and "key file" in done.stdout
    new_key = " ".join(KEY_RE.findall(done.stdout))
    assert len(new_key.split()) == 16
    run("ls", vault, "--password-file", pw)                                   # the same password still opens
    # no key-file slot is left, so the file is read as a (malformed) 64-digit key
    assert run("ls", vault, "--key-file", tmp_path / "usb.key", check=False).returncode == 14
    assert run("ls", vault, "--key-file", key, check=False).returncode == 13


def test_rekey_with_the_old_key_needs_a_choice(tmp_path, plain_tree):
    vault, pw, key = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    refused = run("rekey", vault, "--key-file", key, check=False)
    assert refused.returncode == 23 and "--key-only" in refused.stderr
    assert _ciphertexts(vault)                                          # nothing started
    assert LockedVault.read(str(vault)).copies[0].rekey is None
    done = json.loads(run("rekey", vault, "--key-file", key, "--key-only", "--json").stdout)
    assert done["slots"] == [] and [s["type"] for s in done["dropped_slots"]] == ["password"]
    new_key = tmp_path / "new.key"
    new_key.write_text(done["recovery_key"])
    run("export", vault, tmp_path / "out", "--key-file", new_key)
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(plain_tree)


def test_rekey_whose_output_fails_leaves_the_vault_under_the_old_key(tmp_path, plain_tree):
    """With --json the new key is in the one document printed at the end: if that
    cannot be written (a full disk, a closed pipe), the vault must not have
    switched to a key nobody saw."""
    vault, pw, key = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    with open("/dev/full", "w") as full:
        failed = subprocess.run([sys.executable, "-m", "e2efs", "rekey", str(vault), "--key-file", str(key),
                                 "--key-only", "--json"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "still opens with the old secret" in failed.stderr
    assert run("ls", vault, "--key-file", key, check=False).returncode == 27     # under the old key, to be resumed
    done = json.loads(run("rekey", vault, "--key-file", key, "--key-only", "--json").stdout)
    assert done["resumed"]
    new_key = tmp_path / "new.key"
    new_key.write_text(done["recovery_key"])
    run("export", vault, tmp_path / "out", "--key-file", new_key)
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(plain_tree)


def _rekey_killed_after(vault, pw, steps: int):
    env = dict(os.environ, **{KILL_ENV: str(steps)})
    return subprocess.run([sys.executable, "-m", "e2efs", "rekey", str(vault), "--password-file", str(pw)],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


def _new_master(vault, old_master: bytes, stdout: str) -> bytes | None:
    """K' from the rekey state of any copy (under K), else from the key the killed run printed."""
    for copy in LockedVault.read(str(vault)).copies:
        if copy.rekey is not None:
            return copy.rekey.unwrap(old_master)
    printed = KEY_RE.findall(stdout)
    return crypto.parse_recovery_key(" ".join(printed)) if printed else None


def test_rekey_killed_at_every_kind_of_step_then_resumed(tmp_path, plain_tree):
    template, pw, key = init_vault(tmp_path, "template")
    run("import", plain_tree, template, "--password-file", pw)
    old_master = _key_of(key)
    block_size = LockedVault.read(str(template)).block_size
    expected = snapshot_with_both_keys(str(template), old_master, os.urandom(32), block_size)
    assert len(expected) == 11
    # steps: 1 begin + 7 contents + 11 renames + 1 long-name side record + 2 vault file copies = 22
    points = [1, 2, 3, 5, 8, 9, 12, 15, 18, 20, 21, 22]
    for steps in points:
        vault = tmp_path / f"v{steps}"
        shutil.copytree(template, vault, symlinks=True)
        killed = _rekey_killed_after(vault, pw, steps)
        assert killed.returncode == -9, (steps, killed.returncode, killed.stderr)
        new_master = _new_master(vault, old_master, killed.stdout)
        assert new_master is not None, steps
        # a reader holding both keys reads everything, each item under exactly one key
        assert snapshot_with_both_keys(str(vault), old_master, new_master, block_size) == expected, steps
        if steps < 21:
            # the normal commands refuse a half-rekeyed vault instead of reading half of it
            assert run("ls", vault, "--password-file", pw, check=False).returncode == RekeyInProgress.exit_code
        if steps < 22:
            resumed = run("rekey", vault, "--password-file", pw, "--json")
            doc = json.loads(resumed.stdout)
            assert doc["resumed"] is True
            assert crypto.parse_recovery_key(doc["recovery_key"]) == new_master, steps
        else:
            assert run("rekey", vault, "--key-file", key, check=False).returncode == WrongSecret.exit_code
        new_key = tmp_path / f"v{steps}.key"
        new_key.write_text(crypto.format_recovery_key(new_master))
        run("export", vault, tmp_path / f"out{steps}", "--key-file", new_key)
        assert _without_dir_times(tree_snapshot(tmp_path / f"out{steps}")) == \
            _without_dir_times(tree_snapshot(plain_tree)), steps
        assert "no problems" in run("fsck", vault, "--password-file", pw).stdout
        assert run("ls", vault, "--key-file", key, check=False).returncode == WrongSecret.exit_code


def test_rekey_refused_while_mounted(vault_mount):
    vault_mount.mount()
    try:
        before = _ciphertexts(vault_mount.vault)
        with open(os.path.join(vault_mount.vault, "e2efs.vault"), "rb") as f:
            vault_file = f.read()
        done = vault_mount.cli("rekey", vault_mount.vault, "--password-file", vault_mount.password_file,
                               check=False)
        assert done.returncode == VaultMounted.exit_code, done.stderr
        assert "is mounted at" in done.stderr and "unmount" in done.stderr
        assert done.stderr.count("\n") == 1
        assert _ciphertexts(vault_mount.vault) == before
        with open(os.path.join(vault_mount.vault, "e2efs.vault"), "rb") as f:
            assert f.read() == vault_file
        disabled = vault_mount.cli("disable", vault_mount.vault, str(vault_mount.p("..", "plain")),
                                   "--password-file", vault_mount.password_file, "--yes-i-understand", check=False)
        assert disabled.returncode == VaultMounted.exit_code
        assert os.path.isdir(vault_mount.vault)
    finally:
        vault_mount.unmount()


# -- import --in-place --------------------------------------------------------

def test_import_in_place_removes_each_verified_plaintext(tmp_path, plain_tree):
    original = tree_snapshot(plain_tree)
    vault, pw, _ = init_vault(tmp_path)
    done = json.loads(run("import", "--in-place", plain_tree, vault, "--password-file", pw, "--json").stdout)
    assert done["removed"] == 7 and done["kept"] == []
    assert os.path.isdir(plain_tree) and os.listdir(plain_tree) == []
    run("export", vault, tmp_path / "out", "--password-file", pw)
    assert _without_dir_times(tree_snapshot(tmp_path / "out")) == _without_dir_times(original)


def test_import_in_place_keeps_the_plaintext_when_verification_fails(tmp_path, plain_tree, monkeypatch):
    """A ciphertext that does not read back as the source: the source file stays, the import stops."""
    from e2efs import transfer
    from e2efs.tree import Tree
    from e2efs.vault import LockedVault as LV
    vault, pw, _ = init_vault(tmp_path)
    tree = Tree(LV.read(str(vault)).unlock_with_password(PASSWORD.encode()))
    real_write = Tree.write_file

    def corrupting_write(self, d, name, chunks, *a, **kw):
        entry = real_write(self, d, name, chunks, *a, **kw)
        if name == b"msgstore.db":
            with open(self.path(d, entry), "r+b") as f:
                f.seek(100)
                f.write(b"\xff")
        return entry
    monkeypatch.setattr(Tree, "write_file", corrupting_write)
    with pytest.raises(VerificationFailed):
        transfer.import_tree(tree, str(plain_tree), in_place=True)
    assert (plain_tree / "msgstore.db").stat().st_size == MIB + 17


# -- disable ------------------------------------------------------------------

def test_disable_with_typed_confirmation(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    done = run("disable", vault, tmp_path / "plain", "--password-file", pw, input="vault\n")
    assert "verified" in done.stdout and "type the vault folder's name (vault)".lower() in done.stderr.lower()
    assert not vault.exists()
    assert _without_dir_times(tree_snapshot(tmp_path / "plain")) == _without_dir_times(tree_snapshot(plain_tree))


def test_disable_for_scripts_and_json(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    done = json.loads(run("disable", vault, tmp_path / "plain", "--password-file", pw, "--yes-i-understand",
                          "--json").stdout)
    assert done["verified"] and done["vault_removed"] and done["files"] == 7
    assert not vault.exists()


@pytest.mark.parametrize("typed", [None, "wrong-name\n", "\n"])
def test_disable_without_confirmation_changes_nothing(tmp_path, plain_tree, typed):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    before = _ciphertexts(vault)
    done = run("disable", vault, tmp_path / "plain", "--password-file", pw, check=False, input=typed)
    assert done.returncode == NotConfirmed.exit_code, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("e2efs: ")
    assert _ciphertexts(vault) == before and not (tmp_path / "plain").exists()


def test_disable_wrong_password_changes_nothing(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    bad = tmp_path / "bad.pw"
    bad.write_text("not the password\n")
    done = run("disable", vault, tmp_path / "plain", "--password-file", bad, "--yes-i-understand", check=False)
    assert done.returncode == WrongSecret.exit_code
    assert vault.exists() and not (tmp_path / "plain").exists()


def test_disable_refuses_when_verification_fails(tmp_path, plain_tree, monkeypatch, capsys):
    from e2efs.cli import lifecycle, main
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    before = _ciphertexts(vault)
    real_export = lifecycle.export_tree

    def export_then_damage(tree, dest, progress=None):
        stats = real_export(tree, dest, progress)
        with open(os.path.join(dest, "Media", "notes.txt"), "a") as f:
            f.write("changed on the way")
        return stats
    monkeypatch.setattr(lifecycle, "export_tree", export_then_damage)
    code = main.main(["disable", str(vault), str(tmp_path / "plain"), "--password-file", str(pw),
                      "--yes-i-understand"])
    assert code == VerificationFailed.exit_code
    assert "notes.txt" in capsys.readouterr().err
    assert _ciphertexts(vault) == before


def test_disable_refuses_a_destination_inside_the_vault(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    done = run("disable", vault, vault / "plain", "--password-file", pw, "--yes-i-understand", check=False)
    assert done.returncode == 2 and vault.exists()


def _damage_a_name(vault) -> str:
    """Change a character in one entry's backing name: it no longer authenticates."""
    name = next(n for n in sorted(os.listdir(vault)) if not n.startswith((".", "e2efs.")) and not n.endswith(".name")
                and os.path.isfile(vault / n))
    damaged = name[:10] + ("a" if name[10] != "a" else "b") + name[11:]
    os.rename(vault / name, vault / damaged)
    return damaged


@pytest.mark.parametrize("problem", ["damaged name", "foreign file"])
def test_disable_refuses_a_vault_with_what_it_would_not_export(tmp_path, plain_tree, problem):
    """The export leaves out what is not an intact entry, and the whole folder is
    deleted after it: so a vault fsck finds problems in is not disabled."""
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    if problem == "damaged name":
        _damage_a_name(vault)
    else:
        (vault / "NOTES.txt").write_text("mine, not the vault's")
    before = _ciphertexts(vault)
    done = run("disable", vault, tmp_path / "plain", "--password-file", pw, "--yes-i-understand", check=False)
    assert done.returncode == CorruptData.exit_code and "nothing was changed" in done.stderr
    assert _ciphertexts(vault) == before and not (tmp_path / "plain").exists()


def test_export_of_a_vault_with_a_damaged_name_is_refused_whole(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    _damage_a_name(vault)
    done = run("export", vault, tmp_path / "out", "--password-file", pw, check=False)
    assert done.returncode == CorruptData.exit_code and "fsck --repair" in done.stderr
    assert not (tmp_path / "out").exists() and [n for n in os.listdir(tmp_path) if "partial" in n] == []


def test_plaintext_never_goes_into_the_vault_folder(tmp_path, plain_tree):
    vault, pw, _ = init_vault(tmp_path)
    run("import", plain_tree, vault, "--password-file", pw)
    before = _ciphertexts(vault)
    assert run("export", vault, vault / "restored", "--password-file", pw, check=False).returncode == 2
    assert run("import", tmp_path, vault, "--password-file", pw, check=False).returncode == 2   # holds the vault
    assert run("import", vault, vault, "--password-file", pw, check=False).returncode == 2
    assert _ciphertexts(vault) == before and not (vault / "restored").exists()


def test_init_whose_key_cannot_be_shown_leaves_no_vault(tmp_path):
    """A key-only vault whose key nobody saw could never be opened."""
    vault = tmp_path / "vault"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "e2efs", "init", str(vault), "--key-only", *FAST_KDF],
                              stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 18 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert os.listdir(vault) == []


# -- --quiet and --json on every command that prints a result ------------------

def test_quiet_and_json_everywhere(tmp_path, plain_tree):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    new_pw = tmp_path / "new.pw"
    new_pw.write_text("another quite long passphrase 1234\n")
    vault = tmp_path / "vault"
    init = json.loads(run("init", vault, *FAST_KDF, "--password-file", pw, "--json").stdout)
    quiet_init = run("init", tmp_path / "v2", *FAST_KDF, "--password-file", pw, "-q").stdout
    assert len(quiet_init.split()) == 16 and len(init["recovery_key"].split()) == 16
    secret = ["--password-file", pw]
    cases = [
        ["info", vault],
        ["import", plain_tree, vault, *secret],
        ["export", vault, tmp_path / "out-{}", *secret],
        ["ls", vault, *secret],
        ["fsck", vault, *secret],
        ["passwd", vault, *secret, "--new-password-file", pw, *FAST_KDF],
        ["key", "list", vault],
        ["key", "add", vault, *secret, "--keyfile-out", tmp_path / "k-{}"],
    ]
    for mode in ("json", "quiet"):
        for args in cases:
            args = [str(a).replace("{}", mode) for a in args]
            done = run(*args, "--json" if mode == "json" else "-q")
            if mode == "json":
                json.loads(done.stdout)
            else:
                assert done.stdout == "", args
    slot = json.loads(run("key", "list", vault, "--json").stdout)[-2]["id"]
    assert json.loads(run("key", "remove", vault, slot, *secret, "--json").stdout)["removed"] == slot
    shown = run("key", "show-recovery", vault, *secret, "--json")
    assert json.loads(shown.stdout)["recovery_key"] == init["recovery_key"] and "WARNING" in shown.stderr
    assert run("cat", vault, "Media/notes.txt", *secret, "-q").stdout == "secret chat text\n"
    rekeyed = run("rekey", vault, *secret, "-q").stdout
    assert len(rekeyed.split()) == 16 and rekeyed.split() != init["recovery_key"].split()
