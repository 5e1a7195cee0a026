"""A remote whose files are numbered anew: the same files are read as the same, and a file
saved anew is still told from them.

A file system's device number is not its own (a disk plugged in elsewhere, an NFS or a
btrfs mount at each mount gets another), and a folder put back from a copy has new inode
numbers: neither is a new version of every file, to upload everywhere again.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .bitrot import loop_disk
from .conftest import Cloud, MakeCloud


def write_tree(cloud: Cloud) -> dict[str, bytes]:
    """Three files written in the mount and on every remote, the cloud unmounted: their
    contents."""
    contents = {name: os.urandom(100_000) for name in ("f0", "f1", "sub/f2")}
    cloud.mount()
    (cloud.mountpoint / "sub").mkdir()
    for name, content in contents.items():
        (cloud.mountpoint / name).write_bytes(content)
    cloud.wait_synced()
    cloud.umount()
    return contents


def test_a_remote_s_disk_mounted_on_another_device_is_the_same_remote(
        make_cloud: MakeCloud) -> None:
    """Its file system gets another device number (another loop device here): nothing of
    it is read, uploaded or kept aside again."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    with loop_disk(cloud.remotes["a"]) as disk:
        contents = write_tree(cloud)
        device = cloud.remotes["a"].stat().st_dev
        disk.replug()
        assert cloud.remotes["a"].stat().st_dev != device
        before = len(cloud.log)
        cloud.mount()
        cloud.wait_listed()
        cloud.wait_synced()
        for name, content in contents.items():
            assert (cloud.mountpoint / name).read_bytes() == content, name
        cloud.umount()
        after = cloud.log[before:]
        for call in ("start_upload", "get_chunk", "move_file", "conflict"):
            assert call not in after, f"{call}:\n{after}"


def test_a_remote_folder_put_back_from_a_copy_is_compared_and_nothing_goes_again(
        make_cloud: MakeCloud) -> None:
    """`cp -a` gives every file a new inode number, its time and size kept: each is read
    and compared, and only one whose content differs (written with the same size and
    its time put back) is a new version, which reaches the other remote."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    contents = write_tree(cloud)
    folder = cloud.remotes["a"]
    copy = folder.with_name("a.copy")
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    shutil.rmtree(folder)
    copy.rename(folder)
    changed = os.urandom(100_000)
    times = (folder / "f1").stat()
    (folder / "f1").write_bytes(changed)
    os.utime(folder / "f1", ns=(times.st_atime_ns, times.st_mtime_ns))
    before = len(cloud.log)
    cloud.mount()
    cloud.wait_listed()
    cloud.wait_synced()
    assert (cloud.mountpoint / "f1").read_bytes() == changed
    for name in ("f0", "sub/f2"):
        assert (cloud.mountpoint / name).read_bytes() == contents[name], name
    cloud.umount()
    after = cloud.log[before:]
    assert after.count("start_upload") == 1 and "start_upload f1\n" in after, after
    assert "conflict" not in after, after
    for remote in cloud.remotes.values():
        assert (remote / "f1").read_bytes() == changed
        assert sorted(path.name for path in remote.iterdir() if not path.name.startswith(".")) \
            == ["f0", "f1", "sub"]
