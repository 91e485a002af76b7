"""`e2efs fsck --repair` as a user runs it: what it moves, cuts, removes and rewrites."""

import json
import os
import subprocess
import sys

from e2efs.errors import CorruptData, UsageError, VaultCorrupt, VaultMounted
from e2efs.names import parse_backing_name
from e2efs.tree import TEMP_PREFIX, Tree
from e2efs.vault import Vault

from cli import PASSWORD, init_vault, run

BLOCK = 4096


class V:
    def __init__(self, tmp_path):
        self.vault, self.pw, self.key = init_vault(tmp_path, "vault", PASSWORD, "--block-size", "4K")
        self.tmp = tmp_path

    def tree(self) -> Tree:
        return Tree(Vault.locked(str(self.vault)).unlock_with_password(PASSWORD.encode()))

    def fsck(self, *extra, code=0):
        done = run("fsck", self.vault, "--password-file", self.pw, *extra, check=False)
        assert done.returncode == code, done.stdout + done.stderr
        return done


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_plain_fsck_is_read_only_and_exit_code_says_corrupt(tmp_path):
    v = V(tmp_path)
    t = v.tree()
    e = t.write_file(t.root, b"bad", [os.urandom(3 * BLOCK)])
    flip(t.path(t.root, e), 24 + BLOCK + 28 + 5)
    open(os.path.join(v.vault, TEMP_PREFIX + "abc"), "wb").close()
    before = sorted(os.listdir(v.vault))
    out = v.fsck(code=CorruptData.exit_code)
    assert "block 1 failed authentication" in out.stdout and "leftover temporary" in out.stdout
    assert "--repair" in out.stderr
    assert sorted(os.listdir(v.vault)) == before
    assert run("fsck", v.vault, "--truncate", "--password-file", v.pw, check=False).returncode == UsageError.exit_code


def test_repair_moves_damaged_file_to_lost_found_and_cleans_leftovers(tmp_path):
    v = V(tmp_path)
    t = v.tree()
    chats = t.subdir(t.root, t.mkdir(t.root, b"chats"))
    good = os.urandom(10_000)
    t.write_file(chats, b"good.db", [good])
    bad = t.write_file(chats, b"bad.db", [os.urandom(3 * BLOCK)])
    flip(t.path(chats, bad), 24 + 2 * (BLOCK + 28) + 40)            # block 2
    long_entry = t.write_file(chats, b"L" * 200, [b"long"])
    long_stem = parse_backing_name(long_entry.backing).stem
    t.remove(chats, long_entry)
    with open(os.path.join(chats.path, long_stem + ".name"), "w") as f:    # an orphaned side record
        f.write("x")
    open(os.path.join(chats.path, TEMP_PREFIX + "0011223344556677"), "wb").close()
    # an entry whose name no longer decrypts (e.g. moved here from another folder)
    stray = t.write_file(t.root, b"stray", [b"stray content"])
    os.rename(t.path(t.root, stray), os.path.join(chats.path, stray.backing))

    out = v.fsck("--repair").stdout
    assert out.count("REPAIRED") == 4, out
    assert "removed temporary file" in out and "removed orphaned long-name record" in out
    assert "to /lost+found/" in out and "chats/bad.db" in out and "no problems" in out
    t = v.tree()
    lf = t.resolve(b"lost+found")[1]
    runs = list(t.entries(t.subdir(t.root, lf)))
    assert len(runs) == 1
    moved = dict((rel, e) for rel, _, e in t.walk())
    stamp = runs[0]
    bad_path = b"lost+found/" + stamp + b"/chats/bad.db"
    assert bad_path in moved
    d, e = t.resolve(bad_path)
    content = t.open_content(t.path(d, e))
    try:
        assert content.read(0, 2 * BLOCK) is not None          # blocks 0 and 1 are still readable
    finally:
        os.close(content.fd)
    unnamed = [rel for rel in moved if rel.startswith(b"lost+found/" + stamp + b"/unnamed-")]
    assert len(unnamed) == 1
    d, e = t.resolve(unnamed[0])
    assert t.read_all(t.path(d, e)) == b"stray content"      # content survives a lost name
    assert t.read_all(t.path(*t.resolve(b"chats/good.db"))) == good
    # a second plain fsck is clean and mentions the quarantine
    out = v.fsck().stdout
    assert "no problems" in out and "lost+found" in out


def test_repair_truncate_keeps_good_blocks(tmp_path):
    v = V(tmp_path)
    t = v.tree()
    data = os.urandom(5 * BLOCK + 100)
    e = t.write_file(t.root, b"msgstore.db", [data])
    flip(t.path(t.root, e), 24 + 3 * (BLOCK + 28) + 50)             # block 3
    cut = t.write_file(t.root, b"cut-mid-block", [data])
    with open(t.path(t.root, cut), "r+b") as f:                     # a sync client's partial upload
        f.truncate(24 + 2 * (BLOCK + 28) + 1000)
    out = v.fsck("--repair", "--truncate").stdout
    assert "truncated" in out and "3 good block(s), 12288 bytes kept" in out, out
    assert "2 good block(s), 8192 bytes kept" in out
    t = v.tree()
    assert t.read_all(t.path(*t.resolve(b"msgstore.db"))) == data[:3 * BLOCK]
    assert t.read_all(t.path(*t.resolve(b"cut-mid-block"))) == data[:2 * BLOCK]
    assert "lost+found" not in [n.decode() for n in t.entries(t.root)]
    v.fsck()


def test_repair_rebuilds_damaged_vault_file_copy(tmp_path):
    v = V(tmp_path)
    main = os.path.join(v.vault, "e2efs.vault")
    backup = os.path.join(v.vault, "e2efs.vault.bak")
    good = open(main, "rb").read()
    with open(backup, "wb") as f:
        f.write(good[:50])                         # torn copy
    out = v.fsck(code=CorruptData.exit_code)
    assert "vault file" in out.stdout
    out = v.fsck("--repair").stdout
    assert "rewrote" in out and "e2efs.vault.bak" in out
    assert json.loads(open(backup).read()) == json.loads(good)
    # now the other way round: the main copy's MAC-covered field modified
    doc = json.loads(good)
    doc["block_size"] = 8192
    with open(main, "w") as f:
        json.dump(doc, f)
    out = v.fsck("--repair").stdout
    assert "rewrote" in out and "fails authentication" in out
    assert json.loads(open(main).read()) == json.loads(good)
    v.fsck()


def test_a_folder_in_place_of_a_vault_file_copy(tmp_path):
    """The other copy opens the vault; repair leaves the folder and its content alone
    and rewrites the copy once the folder is moved away; two folders are a damaged vault."""
    v = V(tmp_path)
    main = v.vault / "e2efs.vault"
    good = main.read_bytes()
    main.unlink()
    main.mkdir()
    (main / "kept.txt").write_text("not ours")
    assert run("ls", v.vault, "--password-file", v.pw).returncode == 0
    out = v.fsck("--repair", code=CorruptData.exit_code).stdout
    assert "is a folder" in out and "move it away" in out
    assert (main / "kept.txt").read_text() == "not ours"
    main.rename(tmp_path / "aside")
    assert "rewrote" in v.fsck("--repair").stdout
    assert json.loads(main.read_bytes()) == json.loads(good)
    main.unlink()
    main.mkdir()
    backup = v.vault / "e2efs.vault.bak"
    backup.unlink()
    backup.mkdir()
    done = run("ls", v.vault, "--password-file", v.pw, check=False)
    assert done.returncode == VaultCorrupt.exit_code and "is a folder" in done.stderr, done.stderr


def test_repair_leaves_placeholders_and_foreign_files_alone(tmp_path):
    v = V(tmp_path)
    t = v.tree()
    e = t.write_file(t.root, b"photo.jpg", [b"jpeg"])
    stub = os.path.join(v.vault, "." + e.backing + ".icloud")
    open(stub, "wb").close()
    empty = t.write_file(t.root, b"partial", [b"x" * 100])
    open(t.path(t.root, empty), "wb").close()                        # zero-length: download not finished
    out = v.fsck("--repair", code=CorruptData.exit_code).stdout
    assert "iCloud placeholder" in out and "empty ciphertext file" in out
    assert os.path.exists(stub) and os.path.exists(t.path(t.root, empty))


def test_repair_refuses_a_mounted_vault(vault_mount):
    m = vault_mount
    m.mount()
    done = m.cli("fsck", m.vault, "--repair", "--password-file", m.password_file, check=False)
    assert done.returncode == VaultMounted.exit_code, done.stderr
    assert "unmount" in done.stderr
    assert m.cli("fsck", m.vault, "--password-file", m.password_file).returncode == 0   # plain fsck is fine
