"""Key life cycle on the vault file: passwd and key slots never touch file data."""

import hashlib
import json
import os

from e2efs.errors import LastKeySlot, WrongSecret
from cli import FAST_KDF, run, init_vault

NEW_PASSWORD = "purple elephant dances quietly"


def _ciphertext_digest(vault) -> dict:
    """sha256 of every backing file except the vault files themselves."""
    out = {}
    for dirpath, _, files in os.walk(vault):
        for name in files:
            if not name.startswith("e2efs.vault"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[os.path.join(dirpath, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _vault_with_data(tmp_path):
    vault, pw, key = init_vault(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "msgstore.db").write_bytes(os.urandom(200_000))
    run("import", src, vault, "--password-file", pw)
    return vault, pw, key


def _secret(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def test_passwd_with_old_password_changes_only_the_vault_file(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    before = _ciphertext_digest(vault)
    new = _secret(tmp_path, "new.pw", NEW_PASSWORD)
    out = run("passwd", vault, "--password-file", pw, "--new-password-file", new, *FAST_KDF)
    assert "rekey" in out.stdout and "Old copies" in out.stdout
    assert _ciphertext_digest(vault) == before
    assert run("ls", vault, "--password-file", pw, check=False).returncode == WrongSecret.exit_code
    assert "msgstore.db" in run("ls", vault, "--password-file", new).stdout
    assert len(json.loads(run("key", "list", vault, "--json").stdout)) == 2      # one password + the recovery key


def test_passwd_with_the_key_when_the_password_is_forgotten(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    new = _secret(tmp_path, "new.pw", NEW_PASSWORD)
    run("passwd", vault, "--key-file", key, "--new-password-file", new, *FAST_KDF)
    assert run("ls", vault, "--password-file", pw, check=False).returncode == WrongSecret.exit_code
    assert run("ls", vault, "--password-file", new).returncode == 0


def test_passwd_refuses_a_weak_new_password(tmp_path):
    vault, pw, _ = _vault_with_data(tmp_path)
    weak = _secret(tmp_path, "weak.pw", "qwerty123")
    result = run("passwd", vault, "--password-file", pw, "--new-password-file", weak, *FAST_KDF, check=False)
    assert result.returncode == 15
    assert run("ls", vault, "--password-file", pw).returncode == 0


def test_slots_add_keyfile_and_password_then_remove(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    before = _ciphertext_digest(vault)
    keyfile = tmp_path / "usb.key"
    run("key", "add", vault, "--password-file", pw, "--keyfile-out", keyfile)
    assert oct(os.stat(keyfile).st_mode & 0o777) == "0o600"
    second = _secret(tmp_path, "second.pw", NEW_PASSWORD)
    run("key", "add", vault, "--password-file", pw, "--new-password-file", second, *FAST_KDF)
    slots = json.loads(run("key", "list", vault, "--json").stdout)
    assert [s["type"] for s in slots] == ["password", "keyfile", "password", "key"]
    for option, secret in (("--key-file", keyfile), ("--password-file", second), ("--password-file", pw)):
        assert run("ls", vault, option, secret).returncode == 0
    run("key", "remove", vault, slots[0]["id"], "--key-file", keyfile)
    assert run("ls", vault, "--password-file", pw, check=False).returncode == WrongSecret.exit_code
    assert run("ls", vault, "--password-file", second).returncode == 0
    assert _ciphertext_digest(vault) == before


def test_a_key_file_whose_slot_could_not_be_saved_is_not_left_behind(tmp_path, monkeypatch):
    from e2efs.cli import main
    from e2efs.vault import Vault
    vault, pw, _ = _vault_with_data(tmp_path)

    def read_only(self):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Vault, "save", read_only)
    keyfile = tmp_path / "usb.key"
    code = main.main(["key", "add", str(vault), "--password-file", str(pw), "--keyfile-out", str(keyfile)])
    assert code == 18 and not keyfile.exists()


def test_passwd_slot_names_the_password_replaced_and_a_wrong_one_is_refused(tmp_path):
    vault, pw, _ = _vault_with_data(tmp_path)
    second = _secret(tmp_path, "second.pw", NEW_PASSWORD)
    run("key", "add", vault, "--password-file", pw, "--new-password-file", second, *FAST_KDF)
    first_id, second_id = [s["id"] for s in json.loads(run("key", "list", vault, "--json").stdout)][:2]
    third = _secret(tmp_path, "third.pw", "yet another long passphrase 4321")
    assert run("passwd", vault, "--password-file", pw, "--new-password-file", third, "--slot", "zz",
               *FAST_KDF, check=False).returncode == 2
    done = json.loads(run("passwd", vault, "--password-file", pw, "--new-password-file", third,
                          "--slot", second_id, *FAST_KDF, "--json").stdout)
    assert done["replaced"] == second_id
    assert run("ls", vault, "--password-file", second, check=False).returncode == WrongSecret.exit_code
    for secret in (pw, third):
        assert run("ls", vault, "--password-file", secret).returncode == 0


def test_one_secret_option_at_a_time(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    assert run("ls", vault, "--password-file", pw, "--key-file", key, check=False).returncode == 2


def test_removing_the_last_slot_is_refused(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    slot_id = json.loads(run("key", "list", vault, "--json").stdout)[0]["id"]
    result = run("key", "remove", vault, slot_id, "--password-file", pw, check=False)
    assert result.returncode == LastKeySlot.exit_code and "--leave-key-only" in result.stderr
    assert run("ls", vault, "--password-file", pw).returncode == 0
    run("key", "remove", vault, slot_id, "--key-file", key, "--leave-key-only")
    assert run("ls", vault, "--key-file", key).returncode == 0


def test_show_recovery_needs_a_secret_and_warns(tmp_path):
    vault, pw, key = _vault_with_data(tmp_path)
    shown = run("key", "show-recovery", vault, "--password-file", pw)
    assert shown.stdout.split() == key.read_text().split()
    assert "WARNING" in shown.stderr
    bad = _secret(tmp_path, "bad.pw", "definitely not it")
    refused = run("key", "show-recovery", vault, "--password-file", bad, check=False)
    assert refused.returncode == WrongSecret.exit_code and refused.stdout == ""
