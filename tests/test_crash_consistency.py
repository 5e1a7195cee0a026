"""After a kill -9, the mount shows the old content or the new, never invented zeros, and
the mount and the remotes converge on one version."""

from __future__ import annotations

import contextlib
import mmap
import os

import pytest

from .conftest import Cloud, MakeCloud, snapshot, wait_for
from .delay import DelayProxy
from .sshd import MakeSshCloud, Sshd, SshRemote
from .test_mount import RENAME_EXCHANGE, renameat2

pytest_plugins = ["tests.sshd"]


def remount_after_kill(cloud: Cloud) -> None:
    cloud.kill9()
    cloud.mount()  # over the dead mount, which it clears


def converged(cloud: Cloud) -> dict[str, tuple[str, bytes]]:
    cloud.wait_synced()
    mounted = snapshot(cloud.mountpoint)
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == mounted, f"remote {name} differs from the mount"
    return mounted


@pytest.mark.parametrize("how", ["open O_TRUNC", "ftruncate", "truncate to a block's middle"])
def test_kill9_after_a_cut(make_cloud: MakeCloud, how: str) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    old = os.urandom(3 * 1024 * 1024)
    (cloud.mountpoint / "F").write_bytes(old)
    cloud.wait_synced()
    if how == "open O_TRUNC":
        fd = os.open(cloud.mountpoint / "F", os.O_WRONLY | os.O_TRUNC)
        new = b""
    else:
        fd = os.open(cloud.mountpoint / "F", os.O_WRONLY)
        size = 0 if how == "ftruncate" else 1024 * 1024 + 4321
        os.ftruncate(fd, size)
        new = old[:size]
    remount_after_kill(cloud)
    with pytest.raises(OSError):
        os.close(fd)  # it died with the daemon
    content = (cloud.mountpoint / "F").read_bytes()
    assert content in (old, new), f"{len(content)} bytes, neither the old nor the new content"
    # a file that regrows shows zeros past the cut, not the cut bytes
    with open(cloud.mountpoint / "F", "r+b") as regrown:
        regrown.truncate(len(old))
    expected = content + bytes(len(old) - len(content))
    assert (cloud.mountpoint / "F").read_bytes() == expected
    mounted = converged(cloud)
    assert mounted["F"] == ("file", expected)


def test_kill9_while_blocks_are_stored_before_the_size(make_cloud: MakeCloud) -> None:
    """Full blocks reach the cache before the inode's new size does: a kill in between
    must not leave the mount with content its remotes never get."""
    cloud = make_cloud({"a": "rw"}, upload_delay="1h", write_buffer="2 MiB")
    cloud.mount()
    old = os.urandom(4 * 1024 * 1024)
    (cloud.mountpoint / "G").write_bytes(old)
    cloud.umount()
    cloud.mount()
    # O_DIRECT: the daemon has the data when pwrite returns, not only the kernel's cache
    fd = os.open(cloud.mountpoint / "G", os.O_WRONLY | os.O_DIRECT)
    aligned = mmap.mmap(-1, 3 * 1024 * 1024)
    aligned.write(os.urandom(3 * 1024 * 1024))
    os.pwrite(fd, aligned, 2 * 1024 * 1024)  # full blocks, the last past the old end
    remount_after_kill(cloud)
    with pytest.raises(OSError):
        os.close(fd)
    content = (cloud.mountpoint / "G").read_bytes()
    assert content[:2 * 1024 * 1024] == old[:2 * 1024 * 1024]
    converged(cloud)


@pytest.mark.parametrize("kind", ["local", "local write-only", "ssh"])
@pytest.mark.parametrize("cycle", ["exchange", "three renames", "a folder and a file"])
def test_a_kill9_after_a_swap_stepped_aside_on_a_remote(make_cloud: MakeCloud,
                                                        request: pytest.FixtureRequest,
                                                        kind: str, cycle: str) -> None:
    """A cycle of renames moves one file on each remote to a name aside first: a kill
    between that move and its record leaves the file there under that name, which the
    next mount must take as the step it was, not as a new file to spread."""
    if kind != "ssh":
        cloud = make_cloud({"a": "rw" if kind == "local" else "w", "b": "rw"}, upload_delay="1h")
    else:
        make_ssh_cloud: MakeSshCloud = request.getfixturevalue("make_ssh_cloud")
        cloud = make_ssh_cloud({"b": "rw"}, {"a": SshRemote(request.getfixturevalue("sshd"))},
                               upload_delay="1h")
    cloud.mount()
    root = cloud.mountpoint
    (root / "d").mkdir()
    if cycle == "a folder and a file":
        (root / "d" / "left").mkdir()
        (root / "d" / "left" / "inside").write_bytes(b"inside")
    else:
        (root / "d" / "left").write_bytes(b"was left")
    (root / "d" / "right").write_bytes(b"was right")
    cloud.umount()  # on both remotes
    cloud.mount()
    left_ino = (root / "d" / "left").stat().st_ino
    if cycle == "three renames":
        (root / "d" / "left").rename(root / "d" / "spare")
        (root / "d" / "right").rename(root / "d" / "left")
        (root / "d" / "spare").rename(root / "d" / "right")
    else:
        renameat2(root / "d" / "left", root / "d" / "right", RENAME_EXCHANGE)
    expected = snapshot(root)
    cloud.kill9()  # nothing replicated: upload_delay is an hour
    # the first step of the swap on remote a, whose record the kill cut off
    folder = cloud.remotes["a"] / "d"
    (folder / "left").rename(folder / f".onitufs-swap-{left_ino}")
    cloud.settings["upload_delay"] = "0.1s"
    cloud.write_config()
    cloud.mount()
    assert snapshot(root) == expected
    assert converged(cloud) == expected
    assert f"d/.onitufs-swap-{left_ino} is onitufs's copy of d/left" in cloud.log


@pytest.mark.parametrize("mode", ["rw", "w"])
def test_a_kill9_after_an_upload_landed_and_before_its_record(make_ssh_cloud: MakeSshCloud,
                                                             sshd: Sshd, mode: str) -> None:
    """An upload's last step lands on the server and the daemon is killed before the answer
    comes back (a long link), with the file renamed in the mount meanwhile. The next mount
    finds a version at the old name that the index does not know, and the upload's record:
    that version is ours (the same content), to move on to the new name, not another's to
    keep as a conflict, nor to wait on for ever."""
    proxy = DelayProxy(sshd.port, 0.1)
    try:
        cloud = make_ssh_cloud({"b": "rw"} if mode == "w" else {},
                               {"s": SshRemote(sshd, mode=mode)})
        cloud.config.write_text(cloud.config.read_text()
                                .replace(f"port = {sshd.port}\n", f"port = {proxy.port}\n")
                                .replace(str(sshd.known_hosts),
                                         str(sshd.known_hosts_for(proxy.port))))
        cloud.mount()
        root, server = cloud.mountpoint, cloud.remotes["s"]
        (root / "F").write_bytes(b"old")
        cloud.wait_synced()
        (root / "F").write_bytes(b"new, longer")  # (not taken for the old in the same tick)

        def landed() -> bool:
            with contextlib.suppress(FileNotFoundError):
                return (server / "F").read_bytes() == b"new, longer"
            return False
        wait_for(landed, interval=0.002, what="the upload to land on the server")
        proxy.hold()  # the server's answer, on its way for 0.1 s, never comes
        (root / "F").rename(root / "G")
        cloud.kill9()
        proxy.release()
        cloud.mount()
        expected = {"G": ("file", b"new, longer")}
        assert snapshot(root) == expected
        assert converged(cloud) == expected
        assert "remote s: F: the version there may be our upload of it" in cloud.log
    finally:
        proxy.stop()
