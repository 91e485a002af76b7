"""Each command is parsed by its own module alone, so it imports nothing it does
not run; ``e2efs --help`` and completion still see every command."""

import subprocess
import sys

from e2efs.cli.completion import _subparsers
from e2efs.cli.main import COMMANDS, build_parser
from cli import run


def _helps() -> dict[str, str]:
    return {a.dest: a.help for a in _subparsers(build_parser())._choices_actions}


def test_the_command_table_lists_every_command_in_help_order():
    assert list(_helps()) == list(COMMANDS)


def test_a_command_alone_has_the_same_parser_as_in_the_whole():
    whole = _subparsers(build_parser()).choices
    for name in COMMANDS:
        alone = _subparsers(build_parser(name)).choices
        assert alone[name].format_help() == whole[name].format_help(), name


def test_help_lists_every_command_with_its_help():
    for args in (["--help"], ["-v", "--help"]):
        out = " ".join(run(*args).stdout.split())
        for name, text in _helps().items():
            assert f" {name} {' '.join(text.split())}" in out, (args, name)


def test_options_before_the_command_and_unknown_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("E2EFS_RUNTIME_DIR", str(tmp_path))
    assert run("--version").stdout.startswith("e2efs ")
    assert run("-v", "status").returncode == 0
    done = run("nosuch", check=False)
    assert done.returncode == 2 and "invalid choice: 'nosuch'" in done.stderr and "status" in done.stderr


HEAVY = {"cryptography", "pyfuse3", "trio"}


def _heavy_imports(*argv, env=None) -> set[str]:
    """Which of HEAVY ``e2efs ARGV`` imported, from its -X importtime log (a
    forked daemon sends its own to /dev/null)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "e2efs", *argv], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    assert "e2efs.cli.main" in modules
    return HEAVY & {m.split(".")[0] for m in modules}


def test_status_imports_no_crypto_and_no_fuse(monkeypatch, tmp_path):
    monkeypatch.setenv("E2EFS_RUNTIME_DIR", str(tmp_path))
    assert _heavy_imports("status") == set()


def test_mount_command_leaves_fuse_to_the_daemon(vault_mount):
    """The process the user waits for never loads pyfuse3 and trio: only the
    forked daemon does."""
    m = vault_mount
    assert _heavy_imports("mount", m.vault, m.path, "--password-file", m.password_file, "--log", m.log,
                          env=m.env) == {"cryptography"}
    with open(m.p("chat.txt"), "w") as f:
        f.write("served by the daemon")
    m.cli("unmount", m.path)
    m.mount()
    with open(m.p("chat.txt")) as f:
        assert f.read() == "served by the daemon"
