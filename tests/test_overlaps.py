"""A configuration whose folders overlap cannot work, and is refused with one line.

A remote at the mount point, inside it or around it, two remotes in one folder,
or a cache in the mount or in a remote: written data would reach no remote, or
the cache would be copied as content. `onitufs mount` (and `onitufs fsck`)
refuse it before anything is mounted and before the cache folder is made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import daemons_of, is_mounted, run, tree, wait_for

MakeConfig = Callable[..., Path]


@pytest.fixture
def make_config(tmp_path: Path) -> Iterator[MakeConfig]:
    """Writes onitufs.toml in tmp_path: the cache at `cache`, each remote at its path
    (relative to tmp_path); leaves nothing mounted or running whatever the test did."""
    config = tmp_path / "onitufs.toml"
    (tmp_path / "mnt").mkdir()

    def make(remotes: dict[str, str], cache: str = "cache") -> Path:
        lines = ["[cache]", f'path = "{cache}"', 'size = "64 MiB"', "", "[sync]",
                 'upload_delay = "0.1s"', ""]
        for name, path in remotes.items():
            lines += [f"[remotes.{name}]", 'driver = "local"', f'path = "{path}"',
                      'poll_interval = "0.3s"', ""]
        config.write_text("\n".join(lines))
        return config

    yield make
    real = os.path.realpath(tmp_path)
    with open("/proc/self/mounts") as mounts:
        mounted = [line.split()[1] for line in mounts]
    for point in reversed(mounted):
        if point == real or point.startswith(real + "/"):
            subprocess.run(["fusermount3", "-u", "-z", point], check=False, capture_output=True)
    for pid in daemons_of(config):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(),  # type: ignore[misc]
                 what="the daemon to die")


def refused(command: str, target: Path, config: Path, message: str, status: int = 1) -> None:
    """`onitufs COMMAND [TARGET] CONFIG` fails with one line holding `message`, and leaves
    nothing mounted and nothing new on disk."""
    root = config.parent
    before = tree(root)
    args = (command, target, config) if command == "mount" else (command, config)
    result = run(*args, check=False)
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith(f"onitufs: {config}: "), result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not is_mounted(Path(os.path.realpath(target)))
    assert tree(root) == before  # no cache folder, no log, no index


# name: (folders to make, remotes, cache path, mount point, what the line says)
CASES: dict[str, tuple[list[str], dict[str, str], str, str, str]] = {
    "remote is the mount point": (
        ["b"], {"a": "mnt", "b": "b"}, "cache", "mnt",
        "remotes.a ({root}/mnt) is the mount point itself: "),
    "remote inside the mount point": (
        ["mnt/sub"], {"a": "mnt/sub"}, "cache", "mnt",
        "remotes.a ({root}/mnt/sub) is inside the mount point ({root}/mnt): "),
    "mount point inside a remote": (
        ["a/mnt"], {"a": "a"}, "cache", "a/mnt",
        "the mount point ({root}/a/mnt) is inside remotes.a ({root}/a): "),
    "remote through a symbolic link to the mount point": (
        ["link->mnt"], {"a": "link"}, "cache", "mnt",
        "remotes.a ({root}/link, that is {root}/mnt) is the mount point itself: "),
    "mount point through a symbolic link to a remote": (
        ["a", "link->a"], {"a": "a"}, "cache", "link",
        "remotes.a ({root}/a) is the mount point itself: "),
    "remote through '..' to the mount point": (
        ["a"], {"a": "a/../mnt"}, "cache", "mnt",
        "remotes.a ({root}/a/../mnt, that is {root}/mnt) is the mount point itself: "),
    "two remotes in one folder": (
        ["a"], {"a": "a", "b": "a"}, "cache", "mnt",
        "remotes.b ({root}/a) is the folder of remotes.a ({root}/a) too: "),
    "two remotes in one folder by two names": (
        ["a", "other->a"], {"a": "a", "b": "other"}, "cache", "mnt",
        "remotes.b ({root}/other, that is {root}/a) is the folder of remotes.a ({root}/a) too: "),
    "remote inside another": (
        ["a/b"], {"a": "a", "b": "a/b"}, "cache", "mnt",
        "remotes.b ({root}/a/b) is inside remotes.a ({root}/a): "),
    "remote around another": (
        ["a/b"], {"b": "a/b", "a": "a"}, "cache", "mnt",
        "remotes.b ({root}/a/b) is inside remotes.a ({root}/a): "),
    "cache inside the mount point": (
        ["a"], {"a": "a"}, "mnt/cache", "mnt",
        "cache.path ({root}/mnt/cache) is inside the mount point ({root}/mnt): "),
    "cache is the mount point": (
        ["a"], {"a": "a"}, "mnt", "mnt",
        "cache.path ({root}/mnt) is the mount point itself: "),
    "cache inside a remote": (
        ["a"], {"a": "a"}, "a/cache", "mnt",
        "cache.path ({root}/a/cache) is inside remotes.a ({root}/a): "),
    "cache is a remote's folder": (
        ["a"], {"a": "a"}, "a", "mnt",
        "cache.path ({root}/a) is the folder of remotes.a ({root}/a) too: "),
    "remote inside the cache": (
        ["cache/a"], {"a": "cache/a"}, "cache", "mnt",
        "remotes.a ({root}/cache/a) is inside cache.path ({root}/cache): "),
}


@pytest.mark.parametrize("name", list(CASES))
def test_overlapping_folders_are_refused(make_config: MakeConfig, tmp_path: Path,
                                         name: str) -> None:
    folders, remotes, cache, mountpoint, message = CASES[name]
    for folder in folders:
        path, _, target = folder.partition("->")
        if target:
            (tmp_path / path).symlink_to(target)
        else:
            (tmp_path / path).mkdir(parents=True)
    config = make_config(remotes, cache)
    refused("mount", tmp_path / mountpoint, config, message.format(root=tmp_path))


def test_the_mount_point_is_checked_at_every_mount(make_config: MakeConfig,
                                                  tmp_path: Path) -> None:
    """A mount point that was fine last time says nothing of this one."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = make_config({"a": "a", "b": "b"})
    run("mount", tmp_path / "mnt", config)
    assert is_mounted(tmp_path / "mnt")
    (tmp_path / "mnt" / "note").write_text("kept")
    run("umount", tmp_path / "mnt")
    assert (tmp_path / "a" / "note").read_text() == "kept"
    assert (tmp_path / "b" / "note").read_text() == "kept"
    refused("mount", tmp_path / "b", config,
            f"remotes.b ({tmp_path}/b) is the mount point itself: ")


def test_fsck_and_verify_refuse_two_remotes_in_one_folder(make_config: MakeConfig,
                                                         tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    config = make_config({"a": "a", "b": "a"})
    for command in ("fsck", "verify"):
        refused(command, tmp_path / "mnt", config,
                f"remotes.b ({tmp_path}/a) is the folder of remotes.a ({tmp_path}/a) too: ",
                status=8)


def test_sibling_folders_mount(make_config: MakeConfig, tmp_path: Path) -> None:
    """Folders that only share a parent, or a name prefix, are fine."""
    for name in ("a", "ab", "mnt2"):
        (tmp_path / name).mkdir()
    config = make_config({"a": "a", "ab": "ab", "m": "mnt2"}, cache="mntcache")
    run("mount", tmp_path / "mnt", config)
    assert is_mounted(tmp_path / "mnt")
    (tmp_path / "mnt" / "note").write_text("kept")
    run("umount", tmp_path / "mnt")
    for name in ("a", "ab", "mnt2"):
        assert (tmp_path / name / "note").read_text() == "kept"
