"""cache.size bounds what waits for uploads: writers wait while uploads make room, and get
ENOSPC once they get nowhere; a single file larger than the cache is still written."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import Cloud, MakeCloud, small_disk, wait_for

MIB = 1024 * 1024
CACHE = 4 * MIB  # 16 blocks of 256 KiB, the smallest cache there is


@pytest.fixture
def stuck_remote_cloud(make_cloud: MakeCloud) -> Iterator[Cloud]:
    """Remote a, and c on a 1 MiB tmpfs that fills with the first file; unmounted whatever
    happens."""
    cloud = make_cloud({"a": "rw", "c": "rw"}, cache_size="4 MiB", block_size="256 KiB",
                       write_buffer="1 MiB", stall="3s")
    with small_disk(cloud, cloud.remotes["c"], "1m"):
        yield cloud


def test_files_waiting_for_a_stuck_remote_fill_the_cache_then_enospc(
        stuck_remote_cloud: Cloud) -> None:
    cloud = stuck_remote_cloud
    cloud.mount()
    written: dict[str, bytes] = {}
    error: OSError | None = None
    started = time.monotonic()
    for number in range(12):  # three times the cache
        content = os.urandom(MIB)
        try:
            (cloud.mountpoint / f"f{number}.bin").write_bytes(content)
        except OSError as failed:
            error = failed
            break
        written[f"f{number}.bin"] = content
    assert error is not None and error.errno == errno.ENOSPC, error
    assert time.monotonic() - started < 60, "the writer waited past the stall"
    # the bound is the size plus the file being written
    assert 4 <= len(written) <= 6, f"{len(written)} files of 1 MiB went into a 4 MiB cache"
    assert cloud.status()["cache_bytes"] <= CACHE + 2 * MIB, cloud.status()
    assert "the cache is at its size" in cloud.log and "uploads make no room: c:" in cloud.log
    # what was acknowledged stays readable, and deleting files in the mount makes room
    for name, content in written.items():
        assert (cloud.mountpoint / name).read_bytes() == content, name
    for name in written:
        (cloud.mountpoint / name).unlink()
    (cloud.mountpoint / f"f{len(written)}.bin").unlink(missing_ok=True)
    content = os.urandom(MIB)
    (cloud.mountpoint / "after.bin").write_bytes(content)
    wait_for(lambda: (cloud.remotes["a"] / "after.bin").exists()
             and (cloud.remotes["a"] / "after.bin").read_bytes() == content,
             what="a to get the file written after the room was made")


def test_writers_wait_for_uploads_to_make_room(make_cloud: MakeCloud) -> None:
    """With uploads held back for 30 s (upload_delay), a writer that meets the bound sends
    them at once and waits for them rather than failing after the 3 s stall."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="4 MiB", block_size="256 KiB",
                       write_buffer="1 MiB", stall="3s", upload_delay="30s")
    cloud.mount()
    contents = {f"f{number}.bin": os.urandom(MIB) for number in range(12)}
    for name, content in contents.items():
        (cloud.mountpoint / name).write_bytes(content)
    assert cloud.status()["cache_bytes"] <= CACHE + MIB, cloud.status()
    assert "the write waits for uploads" in cloud.log
    cloud.umount()
    for remote in cloud.remotes.values():
        for name, content in contents.items():
            assert (remote / name).read_bytes() == content, (remote, name)


def test_a_file_larger_than_the_cache_is_written_and_then_evicted(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="4 MiB", block_size="256 KiB",
                       write_buffer="1 MiB", stall="3s")
    cloud.mount()
    content = os.urandom(12 * MIB)
    (cloud.mountpoint / "big.bin").write_bytes(content)
    cloud.wait_synced()
    wait_for(lambda: cloud.status()["cache_bytes"] <= CACHE, what="the cache to evict")
    assert (cloud.mountpoint / "big.bin").read_bytes() == content
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "big.bin").read_bytes() == content, remote


def test_a_writer_meeting_the_bound_gets_enospc_while_a_stuck_remote_lacks_what_fills_it(
        stuck_remote_cloud: Cloud) -> None:
    """Files c cannot take fill the cache; then a file is written and kept open. Remote a
    has the file queued, and each try at it waits for the writer, so a counted as busy: the
    writer waited for room that only c could make, for good (its close hung in the kernel)."""
    cloud = stuck_remote_cloud
    cloud.mount()
    with pytest.raises(OSError) as filled:
        for number in range(12):  # three times the cache
            (cloud.mountpoint / f"f{number}.bin").write_bytes(os.urandom(MIB))
    assert filled.value.errno == errno.ENOSPC, filled.value
    outcome: list[OSError | None] = []

    def write() -> None:
        try:
            with open(cloud.mountpoint / "later.bin", "wb") as file:
                os.ftruncate(file.fileno(), 1)  # changed in the daemon at once: a change
                time.sleep(1)  # ...that a tries to upload, and waits for
                file.write(os.urandom(4 * MIB))  # the kernel writes it back at the close
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    writer = threading.Thread(target=write, daemon=True)  # (the cloud's cleanup ends a hang)
    writer.start()
    writer.join(60)
    assert not writer.is_alive(), "the writer waited for room for good"
    assert outcome[0] is not None and outcome[0].errno == errno.ENOSPC, outcome
    failed = [line for line in cloud.log.splitlines() if "/later.bin: a write failed" in line]
    assert failed and "uploads make no room: c: " in failed[0], failed


def test_a_file_being_changed_keeps_its_blocks_while_its_writer_waits_for_room(
        make_cloud: MakeCloud) -> None:
    """f.bin is on the remotes and read whole into the cache; two closed files wait for
    their uploads (held back by upload_delay) and fill the cache past its size. A write
    into f.bin waits for those uploads; meanwhile the only blocks the cache may drop are
    f.bin's own. Dropping them made nothing fit (the writer's file does not count), and
    the write failed: ENOSPC with nothing left to upload, or EIO, the file no longer whole
    in the cache when the write went in."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="4 MiB", block_size="256 KiB",
                       write_buffer="1 MiB", stall="3s", upload_delay="30s")
    original = os.urandom(MIB)
    for remote in cloud.remotes.values():
        (remote / "f.bin").write_bytes(original)
    cloud.mount()
    assert (cloud.mountpoint / "f.bin").read_bytes() == original
    waiting = {f"w{number}.bin": os.urandom(5 * MIB // 2) for number in range(2)}
    for name, content in waiting.items():
        (cloud.mountpoint / name).write_bytes(content)
    fd = os.open(cloud.mountpoint / "f.bin", os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"changed", 300_000) == 7
    finally:
        os.close(fd)
    assert "the write waits for uploads" in cloud.log  # the case this test is about
    expected = original[:300_000] + b"changed" + original[300_007:]
    assert (cloud.mountpoint / "f.bin").read_bytes() == expected
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "f.bin").read_bytes() == expected, remote
        for name, content in waiting.items():
            assert (remote / name).read_bytes() == content, (remote, name)
