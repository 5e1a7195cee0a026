"""A clean stop gives the cache's disk back: an index file that is mostly free pages (files
deleted, or evicted once uploaded) is rewritten without them, and the next start trusts it
as the clean stop left it. A kill during the copy leaves the old file whole; a disk
without room for the copy, one the copy finds full, or one gone from under the cache
leaves the file as it is, and the stop ends all the same."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from onitufs.compaction import COPY

from .conftest import (
    ONITUFS,
    Cloud,
    MakeCloud,
    fill,
    is_mounted,
    run,
    small_disk,
    snapshot,
    wait_for,
)
from .test_clean_stop import UNCLEAN, stopped_cleanly
from .test_full_disk import log as log_beside
from .test_full_disk import mount as mount_logging_beside

MIB = 1024 * 1024
CHECK_SKIPPED = "the index file is as the last clean stop left it"


def data_file(cloud: Cloud) -> Path:
    return cloud.cache / "data.mdb"


def write_and_delete(cloud: Cloud, kept: int, deleted: int) -> bytes:
    """A file of `kept` MiB stays; `deleted` MiB of files are written, uploaded and
    deleted, leaving their pages free in the index file. Returns what was kept."""
    content = os.urandom(kept * MIB)
    (cloud.mountpoint / "kept").write_bytes(content)
    for n in range(deleted // 16):
        (cloud.mountpoint / f"gone{n}").write_bytes(os.urandom(16 * MIB))
    cloud.wait_synced(60)
    for n in range(deleted // 16):
        (cloud.mountpoint / f"gone{n}").unlink()
    return content


def assert_kept(cloud: Cloud, content: bytes) -> None:
    """The mount and every remote hold the kept file, and nothing else."""
    assert os.listdir(cloud.mountpoint) == ["kept"]
    assert (cloud.mountpoint / "kept").read_bytes() == content
    cloud.wait_synced()
    for remote in cloud.remotes.values():
        assert snapshot(remote) == {"kept": ("file", content)}


def test_a_clean_stop_compacts_an_index_file_that_is_mostly_free(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    content = write_and_delete(cloud, kept=8, deleted=160)
    grown = os.stat(data_file(cloud)).st_size
    assert grown >= 168 * MIB
    cloud.umount()
    assert "was compacted from" in cloud.log
    assert os.stat(data_file(cloud)).st_size < 24 * MIB
    assert not (cloud.cache / COPY).exists()
    assert stopped_cleanly(cloud)
    before = len(cloud.log)
    cloud.mount()
    assert UNCLEAN not in cloud.log[before:]
    assert CHECK_SKIPPED in cloud.log[before:]
    assert cloud.status()["cache_bytes"] >= 8 * MIB  # served from the copy's blocks
    assert_kept(cloud, content)
    (cloud.mountpoint / "after").write_bytes(b"written into the copy")
    cloud.umount()
    before = len(cloud.log)
    cloud.mount()  # the copy's transaction numbers started again: its marks still hold
    assert UNCLEAN not in cloud.log[before:]
    assert (cloud.mountpoint / "after").read_bytes() == b"written into the copy"
    cloud.umount()


def test_a_file_larger_than_the_cache_leaves_no_large_index_file_once_evicted(
        make_cloud: MakeCloud) -> None:
    """Written whole into the cache, uploaded, then evicted down to cache.size: the stop
    gives the disk back, and the file reads back whole from the remotes."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, cache_size="32 MiB")
    cloud.mount()
    content = cloud.write_evicted("big", 160 * MIB)
    compacted = re.search(r"was compacted from (\d+) MiB to (\d+) MiB", cloud.log)
    assert compacted is not None
    assert int(compacted[1]) >= 150  # the whole file was in the cache once
    assert int(compacted[2]) < 48
    assert os.stat(data_file(cloud)).st_size < 48 * MIB
    cloud.mount()
    assert (cloud.mountpoint / "big").read_bytes() == content
    cloud.umount()


def test_a_file_mostly_in_use_is_not_copied(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    write_and_delete(cloud, kept=48, deleted=32)
    cloud.umount()
    assert "compact" not in cloud.log
    assert os.stat(data_file(cloud)).st_size >= 80 * MIB


def test_a_kill_during_the_copy_leaves_the_old_file_whole(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    content = write_and_delete(cloud, kept=96, deleted=192)
    cloud.wait_synced()
    grown = os.stat(data_file(cloud)).st_size
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGTERM)  # unmounts, flushes, then compacts as it closes
    copy = cloud.cache / COPY
    wait_for(copy.exists, timeout=60, interval=0.0002, what="the compacting copy to begin")
    os.kill(cloud.pid, signal.SIGSTOP)  # held still: a busy machine could let the copy end
    assert os.stat(copy).st_size < 96 * MIB  # caught before its end
    cloud.kill9()
    assert os.stat(data_file(cloud)).st_size >= grown  # LMDB never shrinks its file
    assert not is_mounted(cloud.mountpoint)
    before = len(cloud.log)
    cloud.mount()
    assert not (cloud.cache / COPY).exists()
    assert CHECK_SKIPPED not in cloud.log[before:]  # nothing vouched for the file: checked
    assert_kept(cloud, content)
    cloud.umount()  # this time the copy is made
    assert "was compacted from" in cloud.log[before:]
    assert os.stat(data_file(cloud)).st_size < 112 * MIB


def test_umount_says_so_of_a_daemon_stopped_after_the_unmount(make_cloud: MakeCloud) -> None:
    """The daemon is stopped (Ctrl-Z, SIGSTOP) while it closes its cache after the unmount:
    `onitufs umount` waited for it to exit for ever. Now it says so and ends; continued,
    the daemon finishes its stop, and nothing is lost."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    content = write_and_delete(cloud, kept=96, deleted=192)
    cloud.wait_synced()
    pid = cloud.pid
    assert pid is not None
    umount = subprocess.Popen([*ONITUFS, "umount", str(cloud.mountpoint)], stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for((cloud.cache / COPY).exists, timeout=60, interval=0.0002,
                 what="the compacting copy to begin")
        os.kill(pid, signal.SIGSTOP)
        try:
            assert os.stat(cloud.cache / COPY).st_size < 96 * MIB  # caught before its end
            _, said = umount.communicate(timeout=10)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        if umount.poll() is None:  # a failed check above: it outlives no test
            umount.kill()
            umount.communicate()
    assert umount.returncode == 1, said
    assert said == (f"onitufs: {cloud.mountpoint}: unmounted, but its daemon (pid {pid}) is "
                    f"stopped before closing its cache: `kill -CONT {pid}` lets it finish\n")
    assert not is_mounted(cloud.mountpoint)
    cloud.wait_daemon_exit()
    assert "was compacted from" in cloud.log
    before = len(cloud.log)
    cloud.mount()
    assert CHECK_SKIPPED in cloud.log[before:]  # the stop it finished was a clean one
    assert_kept(cloud, content)
    cloud.umount()


def test_a_disk_without_room_for_the_copy_keeps_the_file(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, write_buffer="16 MiB")
    with small_disk(cloud, cloud.cache, "256m"):
        cloud.mount()
        content = write_and_delete(cloud, kept=16, deleted=128)
        grown = os.stat(data_file(cloud)).st_size
        disk = os.statvfs(cloud.cache)
        filler = cloud.cache / "filler"  # another program's, on the same disk
        subprocess.run(["fallocate", "-l", str(disk.f_bavail * disk.f_frsize - 16 * MIB),
                        filler], check=True)
        cloud.umount()
        assert "a compacting copy needs: left as it is" in cloud.log
        assert os.stat(data_file(cloud)).st_size >= grown  # LMDB never shrinks its file
        filler.unlink()
        before = len(cloud.log)
        cloud.mount()
        assert CHECK_SKIPPED in cloud.log[before:]
        assert_kept(cloud, content)
        cloud.umount()  # with room again
        assert "was compacted from" in cloud.log[before:]


def test_a_disk_filled_during_the_copy_keeps_the_file(make_cloud: MakeCloud) -> None:
    """Another program takes the disk's last bytes as the copy begins: the copy fails, what
    it wrote goes, and the file stays as it was, still trusted as the clean stop left it.
    (The daemon is held still while the disk fills: a busy machine could otherwise let
    the copy of 128 MiB end before the filler runs.)"""
    cloud = make_cloud({"a": "rw"})
    with small_disk(cloud, cloud.cache, "448m"):
        mount_logging_beside(cloud)  # the log must not need the disk that fills
        content = write_and_delete(cloud, kept=128, deleted=128)
        grown = os.stat(data_file(cloud)).st_size
        pid = cloud.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        wait_for((cloud.cache / COPY).exists, timeout=60, interval=0.0002,
                 what="the compacting copy to begin")
        os.kill(pid, signal.SIGSTOP)
        try:
            assert os.stat(cloud.cache / COPY).st_size < 128 * MIB  # caught before its end
            fill(cloud.cache / "filler")
        finally:
            os.kill(pid, signal.SIGCONT)
        cloud.wait_daemon_exit()
        assert "was not compacted" in log_beside(cloud)
        assert os.stat(data_file(cloud)).st_size >= grown
        assert not (cloud.cache / COPY).exists()
        (cloud.cache / "filler").unlink()
        before = len(log_beside(cloud))
        mount_logging_beside(cloud)
        assert UNCLEAN not in log_beside(cloud)[before:]
        assert_kept(cloud, content)
        cloud.umount()


def test_a_copy_that_finds_the_disk_full_keeps_the_file(make_cloud: MakeCloud) -> None:
    """The disk has room in bytes but no inode left (a tmpfs's nr_inodes): the copy's
    folder cannot be made, the error is one line, and the file stays as it was."""
    cloud = make_cloud({"a": "rw"})
    with small_disk(cloud, cloud.cache, "256m,nr_inodes=64"):
        cloud.mount()
        content = write_and_delete(cloud, kept=16, deleted=96)
        grown = os.stat(data_file(cloud)).st_size
        fillers = cloud.cache / "fillers"
        fillers.mkdir()
        n = 0
        try:
            while True:
                (fillers / str(n)).touch()
                n += 1
        except OSError:
            pass
        cloud.umount()
        assert "was not compacted: [Errno 28] No space left on device" in cloud.log
        assert os.stat(data_file(cloud)).st_size >= grown  # LMDB never shrinks its file
        assert not (cloud.cache / COPY).exists()
        subprocess.run(["rm", "-rf", str(fillers)], check=True)
        cloud.mount()
        assert_kept(cloud, content)
        cloud.umount()


def test_a_cache_disk_gone_at_the_stop_leaves_the_daemon_to_exit(make_cloud: MakeCloud) -> None:
    """The cache's disk is detached under the daemon (its open files still work, no path
    does): the stop cannot weigh a copy, says so in one line, and the daemon exits, with
    every remote holding what the mount held; `onitufs umount` says it cannot tell what is
    still queued instead of reading a new, empty cache in the folder under the disk."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    with small_disk(cloud, cloud.cache, "256m"):
        mount_logging_beside(cloud)
        content = write_and_delete(cloud, kept=8, deleted=96)
        cloud.wait_synced()
        subprocess.run(["umount", "-l", str(cloud.cache)], check=True)
        result = run("umount", cloud.mountpoint, check=False)
        assert "was not compacted: [Errno 2] No such file or directory" in log_beside(cloud)
        assert not is_mounted(cloud.mountpoint)
        # nor does onitufs umount take the folder left under the disk for an empty cache
        assert result.returncode == 2
        assert result.stderr == (f"onitufs: {cloud.cache}: the cache cannot be read any more; "
                                 "whether changes are still queued is unknown\n")
        assert os.listdir(cloud.cache) == []
        for remote in cloud.remotes.values():
            assert snapshot(remote) == {"kept": ("file", content)}
