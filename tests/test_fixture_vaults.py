"""Every released format version keeps opening: one committed vault per version."""

import glob
import hashlib
import json
import os
import shutil

import pytest

from cli import run, walk_paths

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "vault-v*.json")))


def _expected(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
        return json.load(f)


def _exported_manifest(root) -> dict:
    out = {}
    for rel, path in walk_paths(root):
        if os.path.islink(path):
            out[rel] = "link:" + os.readlink(path)
        elif os.path.isdir(path):
            out[rel] = "dir"
        else:
            with open(path, "rb") as f:
                out[rel] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(params=FIXTURES, ids=lambda p: os.path.basename(p)[:-5])
def fixture_vault(request, tmp_path):
    """A private copy of a committed vault (the tests must never change the original)."""
    vault = tmp_path / "vault"
    shutil.copytree(request.param[:-5], vault, symlinks=True)
    return vault, _expected(request.param)


def test_there_is_a_fixture_for_the_current_version():
    from e2efs.vault import FORMAT_VERSION
    assert any(p.endswith(f"vault-v{FORMAT_VERSION}.json") for p in FIXTURES)


@pytest.mark.parametrize("secret", ["password", "key"])
def test_fixture_exports_what_it_was_made_from(fixture_vault, tmp_path, secret):
    vault, expected = fixture_vault
    secret_file = tmp_path / "secret"
    secret_file.write_text(expected[secret])
    option = "--password-file" if secret == "password" else "--key-file"
    run("export", vault, tmp_path / "out", option, secret_file)
    assert _exported_manifest(tmp_path / "out") == expected["files"]
    assert "no problems" in run("fsck", vault, option, secret_file).stdout
