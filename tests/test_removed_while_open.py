"""A file removed on a remote's disk while a program there holds it open.

A disk that libfuse serves (exfat-fuse, as most USB disks are here; ntfs-3g; sshfs) keeps
such a file under `.fuse_hidden` and 16 hex digits until its last close, the NFS client
under `.nfs` and 24: the removed version's content, under a name nobody gave it. The
remove is a delete like any other, and nothing of the hidden name comes into the mount or
reaches another remote, from a remote that is a local folder or one behind an SSH server,
in a first listing as in the changes after it.
"""

from __future__ import annotations

import pytest

from .conftest import Cloud, MakeCloud, snapshot, wait_for
from .exfat import exfat_disk
from .sshd import SshRemote

pytest_plugins = ["tests.sshd"]


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_file_removed_while_open_on_a_remote_is_deleted_and_its_hidden_name_stays_there(
        kind: str, request: pytest.FixtureRequest, make_cloud: MakeCloud) -> None:
    if kind == "local":
        cloud: Cloud = make_cloud({"a": "rw", "b": "rw"})
    else:
        cloud = request.getfixturevalue("make_ssh_cloud")(
            {"a": "rw"}, {"b": SshRemote(request.getfixturevalue("sshd"))})
    disk = cloud.remotes["b"]
    with exfat_disk(cloud, disk):
        cloud.mount()
        mnt = cloud.mountpoint
        (mnt / "notes.txt").write_bytes(b"the version removed")
        (mnt / "kept.txt").write_bytes(b"kept")
        cloud.wait_synced()
        assert snapshot(disk) == snapshot(cloud.remotes["a"]) == snapshot(mnt)
        with (disk / "notes.txt").open("rb"):  # a program on b's machine reads it
            (disk / "notes.txt").unlink()
            hidden = [entry.name for entry in disk.iterdir()
                      if entry.name.startswith(".fuse_hidden")]
            assert hidden, "the disk kept no hidden name: this test would prove nothing"
            expected = {"kept.txt": ("file", b"kept")}
            # (a walk may list notes.txt and find it gone: an error entry, not yet equal)
            wait_for(lambda: snapshot(mnt, errors=True) == expected
                     == snapshot(cloud.remotes["a"], errors=True), what="the delete everywhere")
            cloud.umount()
            cloud.mount()  # a first listing, whole
            cloud.wait_listed()
            (mnt / "after.txt").write_bytes(b"after")
            cloud.wait_synced()
            expected["after.txt"] = ("file", b"after")
            assert snapshot(mnt) == expected
            assert snapshot(cloud.remotes["a"]) == expected
            assert sorted(snapshot(disk)) == [*hidden, "after.txt", "kept.txt"]
        wait_for(lambda: snapshot(disk, errors=True) == expected, what="the hidden name gone at the close")
        assert "a file removed while open" in cloud.log
