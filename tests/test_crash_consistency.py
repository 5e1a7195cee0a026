"""After a kill -9, the mount shows the old content or the new, never invented zeros, and
the mount and the remotes converge on one version."""

from __future__ import annotations

import mmap
import os

import pytest

from .conftest import Cloud, MakeCloud, snapshot


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
