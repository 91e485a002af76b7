"""Shell completion generated from the parser: valid scripts that know every command."""

import shutil
import subprocess

import pytest

from e2efs.cli.completion import _commands, _options
from e2efs.cli.main import build_parser
from cli import run


def _all_commands():
    return [path for path, _, _ in _commands(build_parser()) if path]


def test_bash_script_is_valid_and_names_every_subcommand_and_option(tmp_path):
    script = run("completion", "bash").stdout
    path = tmp_path / "e2efs.bash"
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    commands = _all_commands()
    assert {"rekey", "disable", "completion", "key", "mount"} <= {p[0] for p in commands}
    for cmd in commands:
        assert f'"{" ".join(cmd)}")' in script, cmd
    for _, parser, _ in _commands(build_parser()):
        for strings, _, _ in _options(parser):
            for option in strings:
                assert option in script, option


def _complete(script_path, *words) -> list[str]:
    words = ["e2efs", *words]
    line = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(["bash", "-c", f"source {script_path}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                                         '_e2efs; printf "%s\\n" "${COMPREPLY[@]}"'],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completes_commands_actions_and_options(tmp_path):
    path = tmp_path / "e2efs.bash"
    path.write_text(run("completion", "bash").stdout)
    assert "rekey" in _complete(path, "re")
    assert _complete(path, "key", "") == ["list", "add", "remove", "show-recovery"]
    assert "--keyfile-out" in _complete(path, "key", "add", "--keyf")
    assert "--yes-i-understand" in _complete(path, "disable", "vault", "--yes")
    assert _complete(path, "completion", "") == ["bash", "zsh"]
    # the value of an option is not taken for the command
    assert "--new-password-file" in _complete(path, "rekey", "--password-file", "pw", "--new-password-f")


def test_zsh_script_names_every_command():
    script = run("completion", "zsh").stdout
    assert script.startswith("#compdef e2efs\n")
    for cmd in _all_commands():
        assert "_e2efs_" + "_".join(c.replace("-", "_") for c in cmd) + "()" in script
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed: syntax not checked")
    done = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
