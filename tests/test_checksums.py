"""Every revision's content is checksummed, and a damaged replica is caught and repaired."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest

from .bitrot import loop_disk
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
    with loop_disk(cloud.remotes["a"]) as disk:
        cloud.mount()
        content = cloud.write_evicted("precious", 4 * 1024 * 1024)
        damaged = cloud.remotes["a"] / "precious"
        disk.rot(damaged, 1_000_000, b"\xff" * 100)
        cloud.mount()
        assert (cloud.mountpoint / "precious").read_bytes() == content  # served by b
        assert "precious is damaged there" in cloud.log
        wait_for(lambda: damaged.read_bytes() == content, what="a's copy to be repaired")
        assert (cloud.remotes["b"] / "precious").read_bytes() == content
        cloud.umount()


def test_a_file_written_in_order_has_its_checksum_once_closed(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, upload_delay="1h", block_size="64 KiB")
    cloud.mount()
    content = os.urandom(1024 * 1024 + 5)
    path = cloud.mountpoint / "in-order"
    with open(path, "wb") as handle:
        for start in range(0, len(content), 10_000):
            handle.write(content[start:start + 10_000])
    # known from the writes: no upload has started
    assert cloud.status()["remotes"][0]["pending"] == 1
    assert os.getxattr(path, "user.onitufs.sha256") == hashlib.sha256(content).hexdigest().encode()


def test_checksums_stay_right_through_changes_in_place(make_cloud: MakeCloud) -> None:
    """Block checksums learnt as blocks are written carry over to later revisions where
    the block did not change; a stale one would make a fetched block look damaged."""
    cloud = make_cloud({"a": "rw"}, cache_size="256 KiB", block_size="16 KiB")
    cloud.mount()
    path = cloud.mountpoint / "doc"
    expected = bytearray(os.urandom(2 * 1024 * 1024))
    path.write_bytes(expected)

    def change(how: Callable[[int], object]) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            how(fd)
        finally:
            os.close(fd)
        cloud.wait_synced()
        assert os.getxattr(path, "user.onitufs.sha256") == \
            hashlib.sha256(expected).hexdigest().encode()
        limit = 256 * 1024
        wait_for(lambda: cloud.status()["cache_bytes"] <= limit, what="the cache to evict")
        cloud.umount()  # the kernel forgets what it cached: reads come from the remote
        cloud.mount()
        assert path.read_bytes() == expected
        assert "damaged" not in cloud.log

    change(lambda fd: None)
    patch = os.urandom(100)
    expected[700_000:700_100] = patch
    expected[0:100] = patch

    def patch_in_place(fd: int) -> None:
        os.pwrite(fd, patch, 700_000)
        os.pwrite(fd, patch, 0)
    change(patch_in_place)
    tail = os.urandom(100_000)
    expected += tail
    change(lambda fd: os.pwrite(fd, tail, len(expected) - len(tail)))
    del expected[1_000_000:]
    expected += bytes(500_000)
    expected[1_400_000:1_400_010] = patch[:10]

    def cut_and_grow(fd: int) -> None:
        os.ftruncate(fd, 1_000_000)
        os.ftruncate(fd, 1_500_000)
        os.pwrite(fd, patch[:10], 1_400_000)
    change(cut_and_grow)
    expected[:] = bytes(300_000)

    def empty_and_grow(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, 300_000)
    change(empty_and_grow)


@pytest.mark.parametrize("grow", ["write past it", "truncate"])
def test_a_last_block_grown_without_being_written_is_checked_at_its_new_length(
        make_cloud: MakeCloud, grow: str) -> None:
    """A file whose last block is a piece of one grows past it (a write further on, or a
    truncate) without writing into it: the block, now whole with zeros after the piece,
    kept the checksum of the piece, which the upload had learnt. Fetched again, it did
    not match: "damaged" on every remote, and EIO."""
    cloud = make_cloud({"a": "rw"}, cache_size="256 KiB", block_size="16 KiB")
    cloud.mount()
    path = cloud.mountpoint / "doc"
    expected = bytearray(os.urandom(20_000))  # a block, and 3,616 bytes of the next
    path.write_bytes(expected)
    cloud.wait_synced()
    fd = os.open(path, os.O_RDWR)
    try:
        if grow == "truncate":
            os.ftruncate(fd, 40_000)
            expected += bytes(20_000)
        else:
            os.pwrite(fd, b"end", 40_000)
            expected += bytes(20_000) + b"end"
    finally:
        os.close(fd)
    cloud.wait_synced()
    # written after it, a larger file than the cache pushes the doc's blocks out of it
    (cloud.mountpoint / "other").write_bytes(os.urandom(1024 * 1024))
    cloud.wait_synced()
    wait_for(lambda: cloud.status()["cache_bytes"] <= 256 * 1024, what="the cache to evict")
    cloud.umount()  # the kernel forgets what it cached: reads come from the remote
    cloud.mount()
    assert path.read_bytes() == expected
    assert "damaged" not in cloud.log


def test_a_file_cut_while_written_in_order_gets_the_checksum_of_what_it_holds(
        make_cloud: MakeCloud) -> None:
    # O_DIRECT: each write reaches onitufs at once; a write buffer of 2 blocks: every
    # third block written, the full ones are stored, and hashed in order
    cloud = make_cloud({"a": "rw"}, block_size="64 KiB", write_buffer="128 KiB")
    cloud.mount()
    path = cloud.mountpoint / "cut"
    block = 64 * 1024
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        for _ in range(9):
            os.write(fd, os.urandom(block))
        os.ftruncate(fd, 0)
        os.ftruncate(fd, 9 * block)
    finally:
        os.close(fd)
    cloud.wait_synced()
    zeros = bytes(9 * block)
    assert os.getxattr(path, "user.onitufs.sha256") == hashlib.sha256(zeros).hexdigest().encode()
    assert (cloud.remotes["a"] / "cut").read_bytes() == zeros
