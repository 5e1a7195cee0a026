"""Every revision's content is checksummed, and a damaged replica is caught and repaired."""

from __future__ import annotations

import hashlib
import os

from .conftest import MakeCloud, wait_for


def test_sha256_of_each_revision(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    path = cloud.mountpoint / "doc"
    for content in (os.urandom(3 * 1024 * 1024 + 5), b"", b"second revision"):
        path.write_bytes(content)
        cloud.wait_synced()
        wait_for(lambda content=content: os.getxattr(path, "user.onitufs.sha256")  # type: ignore[misc]
                 == hashlib.sha256(content).hexdigest().encode(), what="the checksum")


def test_a_damaged_replica_is_detected_and_repaired(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="1 MiB", block_size="64 KiB")
    cloud.mount()
    content = cloud.write_evicted("precious", 4 * 1024 * 1024)
    damaged = cloud.remotes["a"] / "precious"
    stamp = damaged.stat()
    with open(damaged, "r+b") as handle:  # bit rot: the bytes change, size and time do not
        handle.seek(1_000_000)
        handle.write(b"\xff" * 100)
    os.utime(damaged, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    cloud.mount()
    assert (cloud.mountpoint / "precious").read_bytes() == content  # served by b
    assert "precious is damaged there" in cloud.log
    wait_for(lambda: damaged.read_bytes() == content, what="a's copy to be repaired")
    assert (cloud.remotes["b"] / "precious").read_bytes() == content
