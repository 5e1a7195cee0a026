"""Files dated before 1970, at the epoch itself, or past 2262 (what an inode's 64-bit
nanoseconds hold), on a remote or set in the mount: each shows and travels, at the
nearest time the place it goes to can hold.

A file dated past 2262 on a remote stopped that remote's driver (struct.error), the
epoch read as "no time" (the file showed as made now), and SFTP's 32-bit times stopped
an upload of a file dated before 1970 or after 2106."""

from __future__ import annotations

import os

from .conftest import MakeCloud, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

S = 10**9
INODE_MAX_NS = 2**63 - 1  # 2262-04-11
BEFORE_1970 = -315_619_200 * S  # 1960-01-01
AFTER_2262 = 10_413_792_000 * S  # 2300-01-01
AFTER_2106 = 7_258_118_400 * S  # 2200-01-01

# name -> (time set, time the mount keeps)
DATES = {"1960": (BEFORE_1970, BEFORE_1970), "epoch": (0, 0),
         "2300": (AFTER_2262, INODE_MAX_NS)}


def test_files_dated_before_1970_at_the_epoch_and_after_2262_on_a_remote(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    for name, (stamp, _) in DATES.items():
        (cloud.remotes["a"] / name).write_bytes(name.encode())
        os.utime(cloud.remotes["a"] / name, ns=(stamp, stamp))
    cloud.mount()
    wait_for(lambda: all((cloud.remotes["b"] / name).exists() for name in DATES),
             what="every file on b")
    for name, (_, kept) in DATES.items():
        assert os.stat(cloud.mountpoint / name).st_mtime_ns == kept, name
        assert (cloud.mountpoint / name).read_bytes() == name.encode()
        assert os.stat(cloud.remotes["b"] / name).st_mtime_ns == kept, name
    cloud.umount()
    assert "driver stopped" not in cloud.log
    for name, (stamp, _) in DATES.items():  # a's own times stay as they were
        assert os.stat(cloud.remotes["a"] / name).st_mtime_ns == stamp, name


def test_files_dated_before_1970_at_the_epoch_and_after_2262_in_the_mount(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    for name, (stamp, _) in DATES.items():
        # (Until the kernel lets go of the inode, it shows the time it was given: with
        # writeback caching it keeps a file's mtime itself.)
        (cloud.mountpoint / name).write_bytes(name.encode())
        os.utime(cloud.mountpoint / name, ns=(stamp, stamp))
    cloud.umount()
    for name, (_, kept) in DATES.items():
        assert os.stat(cloud.remotes["a"] / name).st_mtime_ns == kept, name
    cloud.mount()  # as the index kept them
    for name, (_, kept) in DATES.items():
        assert os.stat(cloud.mountpoint / name).st_mtime_ns == kept, name
    cloud.umount()


def test_files_dated_before_1970_and_after_2106_reach_an_ssh_server(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """SFTP v3 carries whole seconds from 1970 to 2106: such a file goes at the nearest."""
    cloud = make_ssh_cloud({}, {"s": SshRemote(sshd)})
    cloud.mount()
    for name, stamp in (("1960", BEFORE_1970), ("2200", AFTER_2106)):
        (cloud.mountpoint / name).write_bytes(name.encode())
        os.utime(cloud.mountpoint / name, ns=(stamp, stamp))
    cloud.umount()
    assert "driver stopped" not in cloud.log
    server = cloud.remotes["s"]
    assert (server / "1960").read_bytes() == b"1960"
    assert os.stat(server / "1960").st_mtime_ns == 0
    assert (server / "2200").read_bytes() == b"2200"
    assert os.stat(server / "2200").st_mtime_ns == (2**32 - 1) * S
