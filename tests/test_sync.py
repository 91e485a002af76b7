"""Sync clients (issue 5, item 3): conflict copies, folders made on two devices,
placeholders, and rclone sync/bisync between two vault copies as two devices.
"""

import errno
import os
import shutil
import subprocess
import time

import pytest

from e2efs import check as chk
from e2efs.names import Kind, parse_backing_name
from e2efs.tree import MTIME_GRAIN_NS, Tree
from e2efs.vault import Vault

from conftest import PASSWORD, Mount
from vaultutil import FAST_KDF

CONFLICT_STYLES = {
    " (1)": "Google Drive / Dropbox numbered copy",
    " (conflicted copy 2026-11-21)": "Dropbox",
    " (Ann's conflicted copy 2026-11-21)": "Dropbox with a device owner",
    ".sync-conflict-20261121-101010-ABCDEFG": "Syncthing",
    " (conflicted copy 2026-11-21 101010)": "Nextcloud / ownCloud",
    "-DESKTOP-AB12CD": "OneDrive",
    " 2": "iCloud Drive",
    "..path1": "rclone bisync (1.60)",
    ".conflict1": "rclone bisync (1.66+)",
}


def tree_of(vault) -> Tree:
    return Tree(Vault.locked(vault).unlock_with_password(PASSWORD))


def new_vault(tmp_path) -> tuple[str, Tree]:
    """A fresh vault folder (fast KDF, 4 KiB blocks) and a Tree on it: a device
    that writes the ciphertext directly, as a sync client delivers it."""
    vault = tmp_path / "v"
    vault.mkdir()
    Vault.create(str(vault), os.urandom(32), PASSWORD, 4096, FAST_KDF)
    return str(vault), tree_of(str(vault))


def decryptions(t: Tree) -> list[str]:
    """The stems ``t`` decrypts from now on, in order (a list that grows)."""
    decrypted = []
    real = t.names.decrypt_stem
    t.names.decrypt_stem = lambda dir_id, stem: decrypted.append(stem) or real(dir_id, stem)
    return decrypted


def backing_of(vault, rel: bytes) -> str:
    t = tree_of(vault)
    d, e = t.resolve(rel)
    return t.path(d, e)


def write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_conflict_copies_appear_readable_and_distinct(mounted):
    m = mounted
    os.mkdir(m.p("Media"))
    write(m.p("chat.db"), b"original")
    write(m.p("Media", "L" * 180), b"long name")           # a long name: hashed name + side record
    os.symlink("chat.db", m.p("latest"))
    m.unmount()
    older = tree_of(m.vault)
    db = backing_of(m.vault, b"chat.db")
    long_file = backing_of(m.vault, b"Media/" + b"L" * 180)
    link = backing_of(m.vault, b"latest")
    media = backing_of(m.vault, b"Media")
    other = b"the other device's chat.db"
    tmp_tree = older
    for i, suffix in enumerate(CONFLICT_STYLES):
        # the other device's version, encrypted under the same name, then renamed by the client
        e = tmp_tree.write_file(tmp_tree.root, f"scratch{i}".encode(), [other + suffix.encode()])
        os.rename(tmp_tree.path(tmp_tree.root, e), db + suffix)
    shutil.copy(long_file, long_file + " (1)")
    shutil.copy(link, link[:-2] + " (1).l")                 # Dropbox puts the copy number before the "extension"
    stem, dir_suffix = os.path.basename(media).split(".")
    shutil.copytree(media, os.path.join(m.vault, f"{stem} (1).{dir_suffix}"))
    m.mount()
    names = set(os.listdir(m.path))
    for suffix, client in CONFLICT_STYLES.items():
        assert "chat.db" + suffix in names, client
        assert read(m.p("chat.db" + suffix)) == other + suffix.encode(), client
    assert read(m.p("chat.db")) == b"original"
    assert read(m.p("Media", "L" * 180 + " (1)")) == b"long name"
    assert os.readlink(m.p("latest (1)")) == "chat.db"
    assert "Media (1)" in names and sorted(os.listdir(m.p("Media (1)"))) == ["L" * 180, "L" * 180 + " (1)"]
    # while mounted: a new conflict copy shows up without a remount
    shutil.copy(db, db + " (5)")
    deadline = time.monotonic() + 3
    while "chat.db (5)" not in os.listdir(m.path):
        assert time.monotonic() < deadline, "a conflict copy made while mounted never appeared"
        time.sleep(0.05)
    assert read(m.p("chat.db (5)")) == b"original"


def test_a_name_missed_while_mounted_is_found_once_synced(mounted):
    """The kernel caches a lookup miss for a second only: a file that a sync
    client delivers later is found by its name, not just by listing."""
    assert not os.path.exists(mounted.p("from-phone.db"))        # a cached miss
    tree = tree_of(mounted.vault)
    tree.write_file(tree.root, b"from-phone.db", [b"synced"])
    deadline = time.monotonic() + 3
    while not os.path.exists(mounted.p("from-phone.db")):
        assert time.monotonic() < deadline, "a synced file stayed hidden behind a cached miss"
        time.sleep(0.05)
    assert read(mounted.p("from-phone.db")) == b"synced"


def test_a_folder_deleted_by_the_sync_client_while_a_file_in_it_is_written(mounted):
    """Another device deleted the folder, and the sync client removes it here while
    an app is still writing a new file into it: the commit's rename has nowhere to
    go.  The app's close reports it, the daemon stays up and says which file was
    lost, nothing is left in the vault, and the rest of the mount works."""
    m = mounted
    os.mkdir(m.p("chats"))
    write(m.p("keep.db"), b"kept")
    folder = backing_of(m.vault, b"chats")
    f = open(m.p("chats", "new.db"), "wb", buffering=0)
    f.write(os.urandom(200_000))
    shutil.rmtree(folder)                             # the sync client applies the deletion
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.ENOENT
    deadline = time.monotonic() + 5                   # release (asynchronous) gives up the file
    while "it was a new file, now lost" not in m.log_text():
        assert time.monotonic() < deadline, m.log_text()
        time.sleep(0.02)
    assert m.proc.poll() is None
    assert read(m.p("keep.db")) == b"kept"
    write(m.p("after.db"), b"still works")
    assert sorted(os.listdir(m.path)) == ["after.db", "keep.db"]
    m.unmount()
    assert chk.check(tree_of(m.vault)).findings == []


def test_change_in_the_same_mtime_tick_is_not_lost(tmp_path):
    """The listing cache trusts directory mtimes; a sync client's change in the same
    tick as ours must still be seen once the directory is quiet."""
    vault, t = new_vault(tmp_path)
    a = t.write_file(t.root, b"a", [b"1"])
    t.entries(t.root)
    st = os.stat(vault)
    shutil.copy(t.path(t.root, a), t.path(t.root, a) + " (1)")     # the sync client, same tick:
    os.utime(vault, ns=(st.st_atime_ns, st.st_mtime_ns))       # mtime unchanged
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    assert b"a (1)" in t.entries(t.root)


def test_listings_are_confirmed_in_a_pause_not_at_the_next_access(tmp_path):
    """``confirm_quiet`` (the mount calls it between requests) does the rescan a
    grain after our last change, so the next create does not wait for it."""
    vault, t = new_vault(tmp_path)
    a = t.write_file(t.root, b"a", [b"1"])
    st = os.stat(vault)
    shutil.copy(t.path(t.root, a), t.path(t.root, a) + " (1)")     # the sync client, same tick:
    os.utime(vault, ns=(st.st_atime_ns, st.st_mtime_ns))       # mtime unchanged
    due = t.confirm_quiet()
    if due is not None:             # (a loaded machine may be past the grain already)
        assert due <= MTIME_GRAIN_NS / 1e9                      # too soon after our change
        time.sleep(due + 0.01)
    assert t.confirm_quiet() is None                            # confirmed: nothing left to wait for
    decrypted = decryptions(t)
    assert b"a (1)" in t.entries(t.root) and decrypted == []    # found by the confirmation


def test_a_listing_is_validated_once_a_step_and_again_in_the_next(tmp_path):
    """The mount validates each listing once per request (``one_step``); another
    device's change shows in the next step, and at once where no step is open
    (offline tools never start one)."""
    vault, t = new_vault(tmp_path)
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)         # our own creation of the vault is confirmed
    phone = tree_of(vault)
    t.one_step()
    assert t.entries(t.root) == {}
    time.sleep(0.02)
    phone.write_file(phone.root, b"a", [b"1"])
    time.sleep(0.02)                                # a later mtime tick than the validation's
    assert t.entries(t.root) == {}                  # the same step: not looked at again
    t.one_step()
    assert set(t.entries(t.root)) == {b"a"}
    offline = tree_of(vault)
    assert set(offline.entries(offline.root)) == {b"a"}
    time.sleep(0.02)
    phone.write_file(phone.root, b"b", [b"2"])
    time.sleep(0.02)
    assert set(offline.entries(offline.root)) == {b"a", b"b"}


def test_a_rescan_after_our_own_removal_shows_what_the_removed_entry_shadowed(tmp_path):
    """Removing one of two entries that show under one name (a file and a folder
    made on two devices; a file and its iCloud placeholder) changes how the other
    shows: the rescan's shortcut must not keep the old listing."""
    vault, t = new_vault(tmp_path)
    t.write_file(t.root, b"x", [b"file"])
    photo = t.write_file(t.root, b"photo.jpg", [b"y"])
    write(os.path.join(vault, "." + photo.backing + ".icloud"), b"")
    phone = tree_of(vault)
    phone.mkdir(phone.root, b"x")
    listing = t.entries(t.root)
    assert sorted(listing)[:2] == [b"photo.jpg", b"x"] and len(listing) == 3
    t.remove(t.root, listing[b"x"] if listing[b"x"].kind is not Kind.DIR else
             next(e for n, e in listing.items() if n.startswith(b"x (e2efs duplicate")))
    t.remove(t.root, listing[b"photo.jpg"])
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    assert t.confirm_quiet() is None
    listing = t.entries(t.root)
    assert sorted(listing) == [b"photo.jpg", b"x"]          # the placeholder, the folder
    assert listing[b"x"].kind is Kind.DIR


def test_a_folder_moved_away_and_back_in_a_pause_is_read_afresh(tmp_path):
    """A confirmation that finds the folder gone forgets its listing, so a
    same-tick change is still found when the folder comes back."""
    vault, t = new_vault(tmp_path)
    p = t.subdir(t.root, t.mkdir(t.root, b"P"))
    a = t.write_file(p, b"a", [b"1"])
    st = os.stat(p.path)
    shutil.copy(t.path(p, a), t.path(p, a) + " (1)")        # the sync client, same tick
    os.utime(p.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(p.path, p.path + "-away")                      # moved away during the pause ...
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    t.confirm_quiet()
    os.rename(p.path + "-away", p.path)                      # ... and back
    assert sorted(t.entries(p)) == [b"a", b"a (1)"]


def test_a_rescan_decrypts_only_the_names_it_has_not_seen(tmp_path):
    """A chat app's media folder holds thousands of files: when a sync client adds
    one, or our own change goes unconfirmed for a grain, the rescan must not
    decrypt every name again (that was ~35 ms per new file in a 5000-file folder)."""
    vault, t = new_vault(tmp_path)
    for i in range(50):
        t.write_file(t.root, b"IMG-%03d.jpg" % i, [b"x"])
    assert len(t.entries(t.root)) == 50
    phone = tree_of(vault)
    phone.write_file(phone.root, b"from-phone.jpg", [b"y"])
    phone.remove(phone.root, phone.lookup(phone.root, b"IMG-000.jpg"))
    decrypted = decryptions(t)
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    listing = t.entries(t.root)
    assert b"from-phone.jpg" in listing and b"IMG-000.jpg" not in listing and len(listing) == 50
    assert len(decrypted) == 1
    assert t.read_all(t.path(t.root, listing[b"from-phone.jpg"])) == b"y"


def test_a_rescan_ignores_what_is_not_an_entry_and_sees_what_was_only_added(tmp_path):
    """The rescan's shortcut (every known entry still there): junk and another
    device's unfinished temp file change nothing, a file that was only added is
    found, and its name is decrypted once."""
    vault, t = new_vault(tmp_path)
    for i in range(20):
        t.write_file(t.root, b"IMG-%03d.jpg" % i, [b"x"])
    before = dict(t.entries(t.root))
    write(os.path.join(vault, "desktop.ini"), b"[.ShellClassInfo]")
    write(os.path.join(vault, ".e2efs-tmp-0123456789abcdef"), b"half")
    decrypted = decryptions(t)
    assert t.entries(t.root) == before and decrypted == []
    phone = tree_of(vault)
    phone.write_file(phone.root, b"from-phone.jpg", [b"y"])
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    listing = t.entries(t.root)
    assert set(listing) == set(before) | {b"from-phone.jpg"} and len(decrypted) == 1


def test_a_rescan_still_reads_long_names_from_their_side_records(tmp_path):
    """A long name is decrypted through its side record: one that the sync client
    lost hides the name on the next rescan, as on a fresh mount, memo or not."""
    vault, t = new_vault(tmp_path)
    long_name = "WhatsApp Video 2026-11-29 at 10.00.00 ".encode() * 6
    t.write_file(t.root, long_name, [b"v"])
    t.write_file(t.root, b"short", [b"s"])
    assert long_name in t.entries(t.root)
    side = [f for f in os.listdir(vault) if f.startswith("_") and f.endswith(".name")]
    assert len(side) == 1, os.listdir(vault)
    os.unlink(os.path.join(vault, side[0]))
    time.sleep(MTIME_GRAIN_NS / 1e9 + 0.02)
    fresh = tree_of(vault)
    assert sorted(t.entries(t.root)) == sorted(fresh.entries(fresh.root)) == [b"short"]


def test_writing_over_a_placeholder_makes_a_real_file(tmp_path):
    """iCloud evicted a file and left '.<backing>.icloud': a new version written
    under that name is a real ciphertext file, and the placeholder goes."""
    vault, t = new_vault(tmp_path)
    old = t.write_file(t.root, b"chat.db", [b"old"])
    stub = os.path.join(vault, f".{old.backing}.icloud")
    os.rename(t.path(t.root, old), stub)
    t.invalidate(t.root)
    assert t.lookup(t.root, b"chat.db").backing == os.path.basename(stub)
    new = t.write_file(t.root, b"chat.db", [b"new"])
    assert new.backing == old.backing and not os.path.exists(stub)
    fresh = tree_of(vault)
    assert fresh.read_all(fresh.path(fresh.root, fresh.lookup(fresh.root, b"chat.db"))) == b"new"


def test_placeholders_are_reported_not_garbage(mounted):
    m = mounted
    write(m.p("photo.jpg"), b"jpeg" * 1000)
    write(m.p("partial.db"), b"x" * 5000)
    write(m.p("short.db"), b"y" * 5000)
    write(m.p("fine"), b"fine")
    m.unmount()
    photo = backing_of(m.vault, b"photo.jpg")
    d, name = os.path.split(photo)
    os.rename(photo, os.path.join(d, f".{name}.icloud"))     # iCloud evicted it
    with open(os.path.join(d, f".{name}.icloud"), "wb") as f:
        f.write(b"bplist00 fake stub")
    open(backing_of(m.vault, b"partial.db"), "wb").close()    # zero-length: download not done
    with open(backing_of(m.vault, b"short.db"), "r+b") as f:
        f.truncate(10)                                       # shorter than a header
    m.mount()
    names = os.listdir(m.path)
    assert "photo.jpg" in names
    for name, words in (("photo.jpg", "iCloud placeholder"), ("partial.db", "empty ciphertext file"),
                        ("short.db", "shorter than an e2efs header")):
        with pytest.raises(OSError) as e:
            read(m.p(name))
        assert e.value.errno == errno.EIO
        assert words in m.log_text(), name
    assert read(m.p("fine")) == b"fine"
    assert m.proc.poll() is None
    report = chk.check(tree_of(m.vault))
    reasons = " | ".join(f.reason for f in report.findings)
    assert "iCloud placeholder" in reasons and "empty ciphertext file" in reasons and "shorter" in reasons


def _rclone(*args):
    done = subprocess.run(["rclone", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def two_devices(tmp_path, vault_mount):
    """Device A is ``vault_mount``; device B is a copy of the vault folder with its own mount."""
    a = vault_mount
    b = Mount.__new__(Mount)
    b.__dict__.update(a.__dict__)
    b.vault, b.path, b.log, b.proc = str(tmp_path / "vaultB"), str(tmp_path / "mntB"), str(tmp_path / "b.log"), None
    os.mkdir(b.path)
    try:
        yield a, b
    finally:
        b.teardown()


def test_rclone_sync_then_bisync_conflicts_and_two_device_folders(two_devices, tmp_path):
    a, b = two_devices
    a.mount()
    os.mkdir(a.p("chats"))
    write(a.p("chats", "msgstore.db"), b"v1 from A" * 1000)
    write(a.p("notes"), b"A's notes")
    a.unmount()
    _rclone("sync", a.vault, b.vault)                           # device B downloads the vault
    b.mount()
    assert read(b.p("chats", "msgstore.db")) == b"v1 from A" * 1000
    b.unmount()
    workdir = str(tmp_path / "bisync-state")
    _rclone("bisync", a.vault, b.vault, "--resync", "--workdir", workdir)
    # both devices edit offline: the same file, and each creates a folder "Media"
    a.mount()
    write(a.p("chats", "msgstore.db"), b"v2 from A")
    os.mkdir(a.p("Media"))
    write(a.p("Media", "from-a.jpg"), b"A photo")
    a.unmount()
    b.mount()
    write(b.p("chats", "msgstore.db"), b"v2 from B")
    os.mkdir(b.p("Media"))
    write(b.p("Media", "from-b.jpg"), b"B photo")
    b.unmount()
    time.sleep(1.1)
    _rclone("bisync", a.vault, b.vault, "--workdir", workdir)
    for dev in (a, b):
        dev.mount()
        versions = {read(dev.p("chats", n)) for n in os.listdir(dev.p("chats"))}
        assert {b"v2 from A", b"v2 from B"} <= versions, os.listdir(dev.p("chats"))
        media = sorted(n for n in os.listdir(dev.path) if n.startswith("Media"))
        assert len(media) == 2, media                               # both folders, no name lost
        photos = {n for d in media for n in os.listdir(dev.p(d))}
        assert photos == {"from-a.jpg", "from-b.jpg"}
        dev.unmount()
    # fsck names the double folder; --repair merges it into one
    out = a.cli("fsck", a.vault, "--password-file", a.password_file, check=False)
    assert out.returncode == 16 and "exists twice" in out.stdout
    out = a.cli("fsck", a.vault, "--repair", "--password-file", a.password_file)
    assert "merged folder Media" in out.stdout, out.stdout
    a.mount()
    assert sorted(os.listdir(a.p("Media"))) == ["from-a.jpg", "from-b.jpg"]
    assert read(a.p("Media", "from-b.jpg")) == b"B photo"
    assert [n for n in os.listdir(a.path) if n.startswith("Media")] == ["Media"]
