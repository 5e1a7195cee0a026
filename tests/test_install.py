"""onitufs installed as a user installs it: `pip install` into a fresh virtualenv, and
`make install`.

The virtualenv's own `onitufs` command mounts a local and an SSH remote (both drivers come
with onitufs); a third-party driver whose library is missing is met with the one command
that adds it; `make install` puts the command, the man pages and the systemd unit where
they belong, twice over, and `make uninstall` takes them away. Both build from a copy of
the checkout, since a build writes build/ and onitufs.egg-info into the tree it builds.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import is_mounted
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

CHECKOUT = Path(__file__).resolve().parent.parent
# What is not the project's: the tests' virtualenv, git's data, what builds and tools leave.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                    ".*_cache", "Cloud", "demo")
# The installed command must find nothing of the checkout or of the tests' virtualenv.
ENV = {name: value for name, value in os.environ.items()
       if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def sh(*command: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(arg) for arg in command], cwd=cwd, env=ENV, text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, command))} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("install") / "onitufs"
    shutil.copytree(CHECKOUT, copy, ignore=NOT_COPIED, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def venv(checkout: Path) -> Path:
    """A fresh virtualenv with the checkout pip-installed into it, as a user would."""
    folder = checkout.parent / "venv"
    sh(sys.executable, "-m", "venv", folder, cwd=checkout.parent)
    sh(folder / "bin" / "pip", "install", "--disable-pip-version-check", "-q", checkout,
       cwd=checkout.parent)
    return folder


def test_the_installed_command_mounts_a_local_and_an_ssh_remote(
        venv: Path, make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    onitufs = venv / "bin" / "onitufs"
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)})
    sh(onitufs, "mount", cloud.mountpoint, cloud.config, cwd=cloud.root)
    assert is_mounted(cloud.mountpoint)
    cloud.pid = int(cloud.status()["pid"])
    (cloud.mountpoint / "hello.txt").write_text("written through the installed onitufs\n")
    cloud.wait_synced()
    sh(onitufs, "umount", cloud.mountpoint, cwd=cloud.root)
    assert not is_mounted(cloud.mountpoint)
    for remote in cloud.remotes.values():
        assert (remote / "hello.txt").read_text() == "written through the installed onitufs\n"


# A third-party driver distribution: `pigeon` has its library in an extra named after it,
# `crow` names its library nowhere; neither library is installed.
DRIVER_PROJECT = {
    "pyproject.toml": """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "onitufs-birds"
version = "1.0"
dependencies = ["onitufs"]

[project.optional-dependencies]
pigeon = ["onitufs-test-pigeon-post"]

[project.entry-points."onitufs.drivers"]
pigeon = "onitufs_pigeon"
crow = "onitufs_crow"

[tool.setuptools]
packages = ["onitufs_pigeon", "onitufs_crow"]
""",
    "onitufs_pigeon/__init__.py": "import onitufs_test_pigeon_post\n",
    "onitufs_crow/__init__.py": "from onitufs_test_crow_call.voice import caw\n",
}


def test_a_driver_missing_its_library_names_the_command_that_adds_it(
        venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "birds"
    for name, text in DRIVER_PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    sh(venv / "bin" / "pip", "install", "--disable-pip-version-check", "-q", project, cwd=tmp_path)
    (tmp_path / "mnt").mkdir()
    config = tmp_path / "cloud.toml"

    def refusal(driver: str) -> tuple[str, list[str]]:
        """What mounting a remote of that driver says (one line), and its command."""
        config.write_text(f'[remotes.x]\ndriver = "{driver}"\npath = "{tmp_path}"\n')
        result = sh(venv / "bin" / "onitufs", "mount", tmp_path / "mnt", config, cwd=tmp_path,
                    check=False)
        assert result.returncode != 0
        assert not is_mounted(tmp_path / "mnt")
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        line = result.stderr.strip()
        return line, shlex.split(line.rpartition(": ")[2])

    line, command = refusal("pigeon")
    assert line.startswith(f"onitufs: {config}: remotes.x: the driver 'pigeon' needs the "
                           "Python package 'onitufs_test_pigeon_post', which is not installed: ")
    # the Python that runs this onitufs: its pip installs where this onitufs looks
    assert Path(command[0]).parent == venv / "bin"
    assert command[1:] == ["-m", "pip", "install", "onitufs-birds[pigeon]"]
    line, command = refusal("crow")
    assert "the driver 'crow' needs the Python package 'onitufs_test_crow_call'" in line
    assert command[1:] == ["-m", "pip", "install", "onitufs_test_crow_call"]
    line, command = refusal("carrier-pigeon")
    assert ("no driver named 'carrier-pigeon' is installed (installed: annex, crow, dropbox, "
            "local, pigeon, ssh)") in line
    assert "a third-party one is a package of its own" in line


def test_make_install_and_uninstall(checkout: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    prefix = stage / "usr" / "local"
    make: list[str | Path] = ["make", "-C", checkout, f"PYTHON={sys.executable}",
                              f"DESTDIR={stage}", "PREFIX=/usr/local"]
    sh(*make, "install", cwd=tmp_path)
    sh(*make, "install", cwd=tmp_path)  # safe to run twice
    command = prefix / "bin" / "onitufs"
    assert os.readlink(command) == "../lib/onitufs/bin/onitufs"
    assert os.readlink(prefix / "bin" / "git-annex-remote-onitufs") \
        == "../lib/onitufs/bin/git-annex-remote-onitufs"
    # staged, the virtualenv already names where it will be, never the stage
    assert command.read_text().startswith("#!/usr/local/lib/onitufs/bin/python")
    for script in (prefix / "lib" / "onitufs" / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert str(stage) not in script.read_text(errors="replace"), script
    python = prefix / "lib" / "onitufs" / "bin" / "python"
    assert sh(python, command, "--version", cwd=tmp_path).stdout.startswith("onitufs ")

    pages = [page for suffix in ("1", "5", "7") for page in (checkout / "man").glob(f"*.{suffix}")]
    assert {page.name for page in pages} >= {"onitufs.1", "onitufs.toml.5", "onitufs-drivers.7"}
    for page in pages:
        installed = prefix / "share" / "man" / f"man{page.suffix[1:]}" / page.name
        assert installed.read_bytes() == page.read_bytes()
    unit = checkout / "systemd" / "onitufs@.service"
    # the same unit, but for the command named by its installed path: systemd looks nowhere else
    installed_unit = (prefix / "lib" / "systemd" / "user" / unit.name).read_text()
    assert "\nExecStart=/usr/local/bin/onitufs mount " in installed_unit
    assert installed_unit == unit.read_text().replace("ExecStart=onitufs ",
                                                      "ExecStart=/usr/local/bin/onitufs ")
    for shell, completion in [("bash", "bash-completion/completions/onitufs"),
                              ("zsh", "zsh/site-functions/_onitufs")]:
        made = sh(python, command, "completion", shell, cwd=tmp_path).stdout
        assert made and (prefix / "share" / completion).read_text() == made

    sh(*make, "uninstall", cwd=tmp_path)
    assert [path for path in stage.rglob("*") if not path.is_dir()] == []
