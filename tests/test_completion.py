"""Shell completion: `onitufs completion bash|zsh` prints a script that completes the
commands, their options, the mount points of running onitufs mounts and config files, in
the shell itself."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, run
from .terminal import terminal

# What bash does on <TAB>: the completion function with the words of the line, the last
# being the one completed; what it offers is in COMPREPLY (quoted for the line later).
BASH_COMPLETE = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_shtab_onitufs
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    script = tmp_path / "onitufs.bash"
    script.write_text(run("completion", "bash").stdout)
    return script


def bash_complete(script: Path, line: str, cwd: Path | str = "/") -> list[str]:
    words = line.split(" ")
    result = subprocess.run(["bash", "-c", BASH_COMPLETE, "bash", str(script), *words],
                            cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    assert result.stderr == "", result.stderr
    return [offer for offer in result.stdout.split("\n") if offer]


def test_bash_completes_commands_options_and_files(bash_script: Path, tmp_path: Path) -> None:
    assert bash_complete(bash_script, "onitufs um") == ["umount"]
    assert set(bash_complete(bash_script, "onitufs ")) >= {"mount", "umount", "status", "fsck",
                                                             "verify", "completion"}
    assert set(bash_complete(bash_script, "onitufs status --")) >= {"--json", "--watch"}
    assert bash_complete(bash_script, "onitufs completion ") == ["bash", "zsh"]
    (tmp_path / "cloud.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "folder").mkdir()
    for command in ("fsck", "verify"):  # configs, and folders to look in
        assert sorted(bash_complete(bash_script, f"onitufs {command} ", tmp_path)) == [
            "cloud.toml", "folder"]
    assert bash_complete(bash_script, "onitufs mount ", tmp_path) == ["folder"]
    # nothing but onitufs mounts for umount: /proc is a mount point, of another kind
    assert bash_complete(bash_script, "onitufs umount /pro") == []


def test_bash_offers_the_running_mounts_for_umount_and_status(bash_script: Path,
                                                              cloud: Cloud) -> None:
    point = str(cloud.mountpoint)
    for command in ("umount", "status"):
        assert point in bash_complete(bash_script, f"onitufs {command} ")
        assert bash_complete(bash_script, f"onitufs {command} {point[:-1]}") == [point]
        # below the current folder: as a path relative to it
        assert bash_complete(bash_script, f"onitufs {command} m", cloud.root) == ["mnt"]
    assert bash_complete(bash_script, f"onitufs status --json {point[:-1]}") == [point]


@pytest.fixture
def spaced_mount(make_cloud: MakeCloud) -> Iterator[Path]:
    """A mount whose path has a space, which /proc/self/mountinfo writes as \\040."""
    cloud = make_cloud({"a": "rw"})
    point = cloud.root / "with space" / "mnt"
    point.mkdir(parents=True)
    run("mount", point, cloud.config)
    try:
        yield point
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(point)], capture_output=True, check=False)


def test_bash_quotes_a_mount_point_with_a_space(bash_script: Path, spaced_mount: Path) -> None:
    assert str(spaced_mount) in bash_complete(bash_script, "onitufs umount ")
    # typed into an interactive bash, the rest of the path is completed, quoted
    home = str(spaced_mount.parent.parent)
    with terminal(["bash", "--norc", "--noprofile", "-i"], cwd=home) as shell:
        shell.send(f"PS1='$ '; source {bash_script}; echo LOADED\n".encode())
        shell.read_until(r"\nLOADED")
        shell.send(b"onitufs umount wi\t")
        shell.read_until(r"onitufs umount with\\ space/mnt/")
        shell.send(b"\x03exit\n")
    run("umount", spaced_mount)


def test_zsh_loads_the_script_and_completes(cloud: Cloud, tmp_path: Path) -> None:
    assert shutil.which("zsh"), "zsh is not installed (`make deps` installs it)"
    functions = tmp_path / "site-functions"
    functions.mkdir()
    (functions / "_onitufs").write_text(run("completion", "zsh").stdout)
    parsed = subprocess.run(["zsh", "-n", str(functions / "_onitufs")], capture_output=True,
                            text=True, timeout=30)
    assert parsed.returncode == 0 and parsed.stderr == "", parsed.stderr
    # as installed: found through $fpath by compinit, and used at <TAB>
    for line, completed in (("onitufs um", r"onitufs umount "),
                            ("onitufs umount m", r"umount mnt/"),
                            ("onitufs status --wa", r"status --watch ")):
        with terminal(["zsh", "-f", "-i"], cwd=str(cloud.root)) as shell:
            shell.send(f"PS1='$ '; fpath=({functions} $fpath); autoload -Uz compinit; "
                       "compinit -u -D; print LOA''DED\n".encode())
            shell.read_until(r"\nLOADED")
            shell.send(line.encode() + b"\t")
            shell.read_until(completed)
