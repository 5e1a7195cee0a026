"""Edits of the same size within the same second are never taken for the same file."""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import Cloud, MakeCloud, run, wait_for


def versions(root: Path, stem: str) -> list[bytes]:
    """The contents of `stem` and of its conflict copies in a folder."""
    base = stem.rpartition(".")[0] or stem
    return sorted(path.read_bytes() for path in root.iterdir()
                  if path.name == stem or path.name.startswith(f"{base} (conflict from "))


def test_two_mounts_writing_one_file_in_one_second_keep_both(make_cloud: MakeCloud) -> None:
    first = make_cloud({"shared": "rw", "mine": "rw"})
    second = make_cloud({"shared": "rw", "mine": "rw"})
    second.remotes["shared"].rmdir()
    second.remotes["shared"].symlink_to(first.remotes["shared"])  # one folder, two machines
    first.mount()
    second.mount()
    (first.mountpoint / "f").write_bytes(b"FIRST")
    (second.mountpoint / "f").write_bytes(b"SECON")
    both = [b"FIRST", b"SECON"]
    clouds: list[Cloud] = [first, second]
    for cloud in clouds:
        wait_for(lambda cloud=cloud: versions(cloud.mountpoint, "f") == both,  # type: ignore[misc]
                 timeout=30, what="both versions in each mount")
    for cloud in clouds:
        cloud.wait_synced()
    for cloud in clouds:
        cloud.umount()
    assert versions(first.remotes["shared"], "f") == both
    for cloud in clouds:
        assert versions(cloud.remotes["mine"], "f") == both
    # a later edit in one mount replaces one version, never the other
    first.mount()
    second.mount()
    (first.mountpoint / "f").write_bytes(b"later")
    for cloud in clouds:
        wait_for(lambda cloud=cloud: b"later" in versions(cloud.mountpoint, "f"),  # type: ignore[misc]
                 timeout=30, what="the later edit everywhere")
        assert len(versions(cloud.mountpoint, "f")) == 2
    for cloud in clouds:
        cloud.wait_synced()
        cloud.umount()
    assert len(versions(first.remotes["shared"], "f")) == 2


def test_a_direct_edit_on_a_remote_in_the_same_second_is_kept(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"MOUNT")
    (cloud.remotes["a"] / "f").write_bytes(b"REMOT")
    wait_for(lambda: versions(cloud.mountpoint, "f") == [b"MOUNT", b"REMOT"], timeout=30,
             what="both versions in the mount")
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert versions(remote, "f") == [b"MOUNT", b"REMOT"], name
    result = run("verify", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 damaged" in result.stdout, result.stdout


def test_a_copy_already_on_a_remote_is_recognised_by_its_content(make_cloud: MakeCloud) -> None:
    """A remote that already holds the same file (put there by someone else) is not a
    conflict; one whose same-size file differs is."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    same, other = os.urandom(100_000), os.urandom(100_000)
    (cloud.remotes["a"] / "same.bin").write_bytes(same)
    (cloud.remotes["b"] / "same.bin").write_bytes(same)
    (cloud.remotes["a"] / "other.bin").write_bytes(same)
    (cloud.remotes["b"] / "other.bin").write_bytes(other)
    stamp = (cloud.remotes["a"] / "other.bin").stat().st_mtime_ns
    os.utime(cloud.remotes["b"] / "other.bin", ns=(stamp, stamp))  # same size, same time
    cloud.mount()
    wait_for(lambda: len(versions(cloud.mountpoint, "other.bin")) == 2, timeout=30,
             what="both versions of other.bin")
    assert versions(cloud.mountpoint, "other.bin") == sorted([same, other])
    assert versions(cloud.mountpoint, "same.bin") == [same]
    cloud.wait_synced()
    cloud.umount()
