"""A full cache disk gives ENOSPC and the mount lives on; nothing cut short is replicated."""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from onitufs.index import Index

from .conftest import (
    Cloud,
    MakeCloud,
    drop_kernel_cache,
    is_mounted,
    run,
    small_disk,
    snapshot,
    wait_for,
)

MIB = 1024 * 1024


@pytest.fixture
def small_disk_cloud(make_cloud: MakeCloud) -> Iterator[Cloud]:
    """Two local remotes and a cache on a 64 MiB tmpfs, unmounted whatever happens."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="1 GiB", write_buffer="16 MiB")
    with small_disk(cloud, cloud.cache, "64m"):
        yield cloud


def mount(cloud: Cloud) -> None:
    """Mount with the log beside the small disk, where it can still be written."""
    run("mount", "--log-level", "debug", "--log", cloud.root / "onitufs.log", cloud.mountpoint,
        cloud.config)
    cloud.pid = int(cloud.status()["pid"])


def log(cloud: Cloud) -> str:
    return (cloud.root / "onitufs.log").read_text()


def write_until_full(path: Path, size: int) -> tuple[int, OSError | None]:
    """Write `size` bytes; returns how many went in and the error that stopped it."""
    written = 0
    try:
        with open(path, "wb") as out:
            while written < size:
                out.write(os.urandom(MIB))
                written += MIB
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:
        return written, error
    return written, None


def test_a_full_cache_disk_gives_enospc_and_the_mount_lives_on(
        small_disk_cloud: Cloud) -> None:
    cloud = small_disk_cloud
    mount(cloud)
    (cloud.mountpoint / "before.txt").write_bytes(b"written before the disk filled")
    cloud.wait_synced()
    _, error = write_until_full(cloud.mountpoint / "big.bin", 200 * MIB)
    assert error is not None and error.errno == errno.ENOSPC, error
    # the daemon still serves: what it has reads back, status answers
    assert (cloud.mountpoint / "before.txt").read_bytes() == b"written before the disk filled"
    assert cloud.status()["pid"] == cloud.pid
    cloud.wait_synced()
    for name, remote in cloud.remotes.items():  # at most the empty file open(O_CREAT) made
        copy = remote / "big.bin"
        assert not copy.exists() or copy.stat().st_size == 0, f"{name} got the file cut short"
    # space freed in the mount is usable again
    (cloud.mountpoint / "big.bin").unlink()
    content = os.urandom(8 * MIB)

    def fits() -> bool:
        try:
            (cloud.mountpoint / "after.bin").write_bytes(content)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            return False
        return True
    wait_for(fits, what="the freed space to be usable", interval=0.5)
    cloud.wait_synced()
    result = cloud.umount()
    assert result.returncode == 0, result.stderr
    assert not is_mounted(cloud.mountpoint)
    for name, remote in cloud.remotes.items():
        assert (remote / "after.bin").read_bytes() == content, name
        assert not (remote / "big.bin").exists(), name
    assert "big.bin: a write failed" in log(cloud)


def test_a_file_cut_short_by_a_full_disk_is_not_replicated_after_a_remount(
        small_disk_cloud: Cloud) -> None:
    cloud = small_disk_cloud
    mount(cloud)
    _, error = write_until_full(cloud.mountpoint / "big.bin", 200 * MIB)
    assert error is not None and error.errno == errno.ENOSPC, error
    cloud.umount()
    mount(cloud)
    cloud.wait_synced()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote).get("big.bin", ("file", b""))[1] == b"", name
    # written anew, it goes
    (cloud.mountpoint / "big.bin").write_bytes(b"small now")
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "big.bin").read_bytes() == b"small now", name


def test_what_every_remote_holds_makes_room_on_a_full_cache_disk(
        small_disk_cloud: Cloud) -> None:
    """A cache whose size is past its disk's: blocks every remote holds go to make room for
    a write, least recently used first, before the disk is called full."""
    cloud = small_disk_cloud
    mount(cloud)
    contents = {name: os.urandom(36 * MIB) for name in ("first.bin", "second.bin")}
    for name, content in contents.items():  # each fills more than half of the disk
        (cloud.mountpoint / name).write_bytes(content)
        cloud.wait_synced()
    for name, content in contents.items():  # the first one read back from the remotes
        assert (cloud.mountpoint / name).read_bytes() == content, name
    result = cloud.umount()
    assert result.returncode == 0, result.stderr
    for remote in cloud.remotes.values():
        for name, content in contents.items():
            assert (remote / name).read_bytes() == content, (remote, name)
    assert "a write failed" not in log(cloud)


def test_a_cache_disk_another_program_filled_serves_reads_and_refuses_changes(
        make_cloud: MakeCloud) -> None:
    """What a remote holds reads back whole while the cache's disk has no room to keep it;
    a change to it, which needs the file here whole, fails with ENOSPC and leaves it as it
    was, not with the blocks it could not keep as zeros."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 GiB", write_buffer="16 MiB")
    content = os.urandom(12 * MIB)
    there = cloud.remotes["a"] / "there.bin"
    there.write_bytes(content)
    written = there.stat().st_mtime_ns
    with small_disk(cloud, cloud.cache, "64m"):
        mount(cloud)
        cloud.wait_synced()
        _, error = write_until_full(cloud.cache / "filler", 200 * MIB)
        assert error is not None and error.errno == errno.ENOSPC, error
        assert (cloud.mountpoint / "there.bin").read_bytes() == content
        assert cloud.status()["pid"] == cloud.pid
        assert log(cloud).count("the disk of the cache is full: what is read from the "
                                "remotes is served but not kept") == 1
        with pytest.raises(OSError) as refused, \
                open(cloud.mountpoint / "there.bin", "r+b") as changed:
            changed.seek(5 * MIB)
            changed.write(b"changed")
            changed.flush()
            os.fsync(changed.fileno())
        assert refused.value.errno == errno.ENOSPC, refused.value
        assert "there.bin: no room on the disk of the cache for the block" in log(cloud)
        result = cloud.umount()
        assert result.returncode == 0, result.stderr
        assert there.stat().st_mtime_ns == written, "the refused change went there"
        assert "driver stopped" not in log(cloud)
        index = Index(cloud.cache, 2**30, MIB)  # what later copies are checked against
        try:
            with index.begin() as txn:
                ino = index.resolve("there.bin", txn)
            assert ino is not None
            inode = index.get_inode(ino)
            assert inode is not None
            assert [index.block_hash(ino, blockno, inode.rev) for blockno in range(12)] == [
                hashlib.sha256(content[blockno * MIB:(blockno + 1) * MIB]).digest()
                for blockno in range(12)]
        finally:
            index.close()
        (cloud.cache / "filler").unlink()
        mount(cloud)
        with open(cloud.mountpoint / "there.bin", "r+b") as changed:
            changed.write(b"changed")
        result = cloud.umount()
        assert result.returncode == 0, result.stderr
        assert there.read_bytes() == b"changed" + content[7:]


def test_what_goes_on_while_the_cache_disk_is_full_goes_on_once_there_is_room(
        make_cloud: MakeCloud) -> None:
    """What a remote made, and what the mount made and sends only now: neither can be
    recorded while another program holds the whole disk of the cache. One line says so
    of each, and everything goes once there is room."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")
    with small_disk(cloud, cloud.cache, "64m"):
        mount(cloud)
        for number in range(300):
            (cloud.mountpoint / f"here{number}").mkdir()
        _, error = write_until_full(cloud.cache / "filler", 200 * MIB)
        assert error is not None and error.errno == errno.ENOSPC, error
        made = cloud.remotes["a"] / "made"
        made.mkdir()
        for number in range(500):
            (made / f"{number}.txt").write_text(f"file {number} made on a")
        os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
        for said in (r"remote a: driver stopped: cannot write the index: .*No space left",
                     r"remote [ab]: /here\d+: cannot write the index: .*No space left"):
            wait_for(lambda said=said: re.search(said, log(cloud)) is not None,  # type: ignore[misc]
                     what=f"{said!r} in the log")
        assert "Traceback" not in log(cloud)
        # not once for each of 300 folders on each remote
        assert len(re.findall(r"onitufs.replicator: .*cannot write the index", log(cloud))) < 10
        (cloud.cache / "filler").unlink()
        wait_for(lambda: (cloud.mountpoint / "made").is_dir()
                 and len(os.listdir(cloud.mountpoint / "made")) == 500, timeout=60,
                 what="what a made to reach the mount")
        os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")  # b waits an hour else
        cloud.wait_synced(timeout=60)
        result = cloud.umount()
        assert result.returncode == 0, result.stderr
        assert snapshot(cloud.remotes["b"]) == snapshot(cloud.remotes["a"])
        assert (cloud.remotes["b"] / "here299").is_dir()


def test_a_read_on_a_cache_disk_full_to_its_last_page_is_served(make_cloud: MakeCloud) -> None:
    """Blocks every remote holds fill the cache, and another program the rest of its
    disk: dropping them cannot be recorded either. A read is served all the same; a write
    is refused as on any full disk, the file not uploaded until it is written anew."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 GiB", write_buffer="16 MiB")
    first, second = os.urandom(30 * MIB), os.urandom(12 * MIB)
    (cloud.remotes["a"] / "first.bin").write_bytes(first)
    (cloud.remotes["a"] / "second.bin").write_bytes(second)
    with small_disk(cloud, cloud.cache, "64m"):
        mount(cloud)
        cloud.wait_synced()
        assert (cloud.mountpoint / "first.bin").read_bytes() == first  # kept in the cache
        _, error = write_until_full(cloud.cache / "filler", 200 * MIB)
        assert error is not None and error.errno == errno.ENOSPC, error
        with open(cloud.cache / "last pages", "wb", buffering=0) as last, \
                pytest.raises(OSError) as full:
            while True:
                last.write(bytes(4096))
        assert full.value.errno == errno.ENOSPC, full.value
        drop_kernel_cache()
        assert (cloud.mountpoint / "second.bin").read_bytes() == second
        assert (cloud.mountpoint / "first.bin").read_bytes() == first
        with pytest.raises(OSError) as refused, \
                open(cloud.mountpoint / "first.bin", "r+b") as changed:
            changed.write(os.urandom(MIB))
            changed.flush()
            os.fsync(changed.fileno())
        assert refused.value.errno == errno.ENOSPC, refused.value
        # said so, and not uploaded cut short: the remote keeps the last whole version
        assert "/first.bin: a write failed" in log(cloud)
        for filler in ("filler", "last pages"):
            (cloud.cache / filler).unlink()
        result = cloud.umount()
        assert result.returncode == 0, result.stderr
        assert (cloud.remotes["a"] / "first.bin").read_bytes() == first


@pytest.mark.parametrize("cut", ["truncate", "unlink"])
def test_a_change_refused_by_a_full_cache_disk_leaves_the_file_as_it_was(
        make_cloud: MakeCloud, cut: str) -> None:
    """A truncate (or an unlink) whose commit finds the disk full fails with ENOSPC, and
    the file is as it was: the block the cut went through was cut in memory all the
    same, and the file then read, and went to the remotes, with zeros in its place."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 GiB", upload_delay="1h")
    content = os.urandom(6 * MIB + 12345)
    with small_disk(cloud, cloud.cache, "64m"):
        mount(cloud)
        path = cloud.mountpoint / "f.bin"
        with open(path, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
            _, error = write_until_full(cloud.cache / "filler", 200 * MIB)
            assert error is not None and error.errno == errno.ENOSPC, error
            with pytest.raises(OSError) as refused:
                if cut == "truncate":
                    os.truncate(out.fileno(), 3 * MIB + MIB // 2)
                else:
                    path.unlink()
            assert refused.value.errno == errno.ENOSPC, refused.value
            (cloud.cache / "filler").unlink()
        drop_kernel_cache()
        assert path.read_bytes() == content
        os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
        cloud.wait_synced()
        result = cloud.umount()
        assert result.returncode == 0, result.stderr
        assert (cloud.remotes["a"] / "f.bin").read_bytes() == content


@pytest.mark.parametrize("free", [0, 4, 64, 92, 112], ids=lambda kib: f"{kib} KiB")
def test_a_new_cache_on_a_full_disk_is_refused_in_one_line(make_cloud: MakeCloud,
                                                           free: int) -> None:
    """LMDB maps its lock file: a page of it first written once the disk was full killed
    the daemon (SIGBUS), and the mount said only that it stopped; with 92 KiB free LMDB's
    first commit said "Input/output error" (the disk took part of its pages), with 112 KiB
    the mount's own first commits failed with no line at all. Now the mount names the
    cache and the full disk, mounts nothing and leaves nothing of its own behind."""
    cloud = make_cloud({"a": "rw"})
    with small_disk(cloud, cloud.cache, "1m"):
        filler = cloud.cache / "filler"
        _, error = write_until_full(filler, 2 * MIB)
        assert error is not None and error.errno == errno.ENOSPC, error
        os.truncate(filler, max(0, filler.stat().st_size - free * 1024))
        result = run("mount", cloud.mountpoint, cloud.config, check=False)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"onitufs: {cloud.cache}: cannot " in result.stderr, result.stderr
        assert result.stderr.endswith(": No space left on device\n"), result.stderr
        assert not is_mounted(cloud.mountpoint)
        assert [path.name for path in cloud.cache.iterdir()] == ["filler"]
