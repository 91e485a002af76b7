"""DESIGN.md §2 tampering through the mount (issue 5, item 4).

Every tamper case is applied to its own victim file, once while the vault is
mounted and once while it is not: reading the victim gives EIO with one log
line naming its ciphertext (never data), every other file reads back, and the
daemon stays alive.  A tampered name hides the entry (with a log line).
"""

import errno
import os

import pytest

from e2efs.blocks import Layout
from e2efs.tree import Tree
from e2efs.vault import Vault

from conftest import PASSWORD

BS = 4096
LAY = Layout(BS)
SIZE = 3 * BS + 1000


def _blk(raw, i):
    return bytes(raw[LAY.block_offset(i):LAY.block_offset(i + 1)])


def _put(raw, i, data):
    raw[LAY.block_offset(i):LAY.block_offset(i) + len(data)] = data
    return raw


def _swap(raw, i, j):
    a, b = _blk(raw, i), _blk(raw, j)
    return _put(_put(raw, i, b), j, a)


def _flip(raw, off):
    raw[off] ^= 0x10
    return raw


CASES = {
    "modified block": lambda raw, other: _flip(raw, LAY.block_offset(1) + 200),
    "modified header": lambda raw, other: _flip(raw, 9),
    "modified tag": lambda raw, other: _flip(raw, LAY.block_offset(3) - 1),
    "reordered blocks": lambda raw, other: _swap(raw, 0, 1),
    "truncated at a block boundary": lambda raw, other: raw[:LAY.block_offset(3)],
    "truncated mid block": lambda raw, other: raw[:-300],
    "truncated to the header": lambda raw, other: raw[:24],
    "extended by a block": lambda raw, other: raw + _blk(raw, 0),
    "extended by a byte": lambda raw, other: raw + b"\0",
    "zeroed block": lambda raw, other: _put(raw, 2, bytes(LAY.stride)),
    "zeroed file": lambda raw, other: bytearray(len(raw)),
    "block from another file": lambda raw, other: _put(raw, 1, _blk(other, 1)),
    "header from another file": lambda raw, other: bytearray(other[:24]) + raw[24:],
    "block size field changed": lambda raw, other: _put_byte(raw, 5, 13),
}


def _put_byte(raw, off, value):
    raw[off] = value
    return raw


def _victims(m):
    for i, case in enumerate(CASES):
        with open(m.p(f"victim-{i}"), "wb") as f:
            f.write(os.urandom(SIZE))
    with open(m.p("other"), "wb") as f:
        f.write(os.urandom(SIZE))
    os.mkdir(m.p("dir"))
    with open(m.p("dir", "renamed-victim"), "wb") as f:
        f.write(b"name tamper")
    bystanders = {}
    for i in range(5):
        bystanders[f"bystander-{i}"] = os.urandom(1000 * i + 10)
        with open(m.p(f"bystander-{i}"), "wb") as f:
            f.write(bystanders[f"bystander-{i}"])
    return bystanders


def _tamper(m):
    tree = Tree(Vault.locked(m.vault).unlock_with_password(PASSWORD))
    path = lambda name: tree.path(*tree.resolve(name.encode()))
    with open(path("other"), "rb") as f:
        other = f.read()
    victims = {}
    for i, (case, edit) in enumerate(CASES.items()):
        p = path(f"victim-{i}")
        with open(p, "rb") as f:
            raw = bytearray(f.read())
        with open(p, "r+b") as f:
            new = edit(raw, other)
            f.write(new)
            f.truncate(len(new))
        victims[f"victim-{i}"] = (case, p)
    named = path("dir/renamed-victim")
    d, base = os.path.split(named)
    os.rename(named, os.path.join(d, ("a" if base[0] != "a" else "b") + base[1:]))   # name no longer authentic
    return victims, os.path.join(d, ("a" if base[0] != "a" else "b") + base[1:])


@pytest.mark.parametrize("when", ["unmounted", "mounted"])
def test_every_tamper_case_gives_eio_and_the_daemon_lives(vault_mount, when):
    m = vault_mount
    m.mount()
    bystanders = _victims(m)
    if when == "unmounted":
        m.unmount()
        victims, bad_name = _tamper(m)
        m.mount()
    else:
        victims, bad_name = _tamper(m)
    for name, (case, cipher_path) in victims.items():
        with pytest.raises(OSError) as e:
            with open(m.p(name), "rb") as f:
                f.read()
        assert e.value.errno == errno.EIO, case
        lines = [l for l in m.log_text().splitlines() if cipher_path in l]
        assert len(lines) == 1, (case, lines)
        assert m.proc.poll() is None, f"daemon died after {case}"
    assert os.listdir(m.p("dir")) == []                     # the tampered name is not shown...
    assert bad_name in m.log_text()                         # ...and is logged
    for name, data in bystanders.items():
        with open(m.p(name), "rb") as f:
            assert f.read() == data
    with open(m.p("new-after-tamper"), "wb") as f:          # and the mount still writes
        f.write(b"ok")
    m.unmount()
