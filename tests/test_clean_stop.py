"""A clean stop marks the index so that the next start skips the crash recovery, which
reads the whole index; any other stop, or a change made after the mark, leaves the
recovery to run; a remote changed while unmounted is still caught at the next mount.

The mark also vouches for a fingerprint of what each remote holds, kept up to date
through the next session: a first listing that matches it is not compared path by
path; one that does not, or one after any other stop, is."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from onitufs.daemon import MAP_SIZE
from onitufs.index import Index

from .conftest import Cloud, MakeCloud, snapshot, wait_for

UNCLEAN = "the last stop was not a clean one"


def unchanged(remote: str) -> str:
    return f"remote {remote}: its listing holds what the index says it holds"


def stopped_cleanly(cloud: Cloud) -> bool:
    index = Index(cloud.cache, MAP_SIZE, 1024 * 1024)
    try:
        return index.stopped_cleanly
    finally:
        index.close()


def nameless_inodes(cloud: Cloud) -> list[int]:
    index = Index(cloud.cache, MAP_SIZE, 1024 * 1024)
    try:
        with index.begin() as txn:
            return [inode.ino for inode in index.all_inodes(txn) if inode.nlink == 0]
    finally:
        index.close()


def test_a_clean_stop_is_marked_and_the_next_start_skips_recovery(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    assert UNCLEAN not in cloud.log  # a new cache: nothing to recover
    (cloud.mountpoint / "F").write_bytes(b"one")
    cloud.umount()
    assert stopped_cleanly(cloud), cloud.log[-3000:]
    before = len(cloud.log)
    cloud.mount()
    assert UNCLEAN not in cloud.log[before:]
    assert (cloud.mountpoint / "F").read_bytes() == b"one"
    for remote in ("a", "b"):
        wait_for(lambda remote=remote: unchanged(remote) in cloud.log[before:],  # type: ignore[misc]
                 what=f"the first listing of {remote} to be found as it was")
    (cloud.mountpoint / "F2").write_bytes(b"two")  # a change made after a quick start
    cloud.umount()
    before = len(cloud.log)
    cloud.mount()
    assert (cloud.mountpoint / "F2").read_bytes() == b"two"
    for remote in ("a", "b"):
        wait_for(lambda remote=remote: unchanged(remote) in cloud.log[before:],  # type: ignore[misc]
                 what=f"the first listing of {remote} to be found as it was")
        assert (cloud.remotes[remote] / "F2").read_bytes() == b"two"
    cloud.umount()


def test_a_change_after_the_mark_voids_it(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    cloud.umount()
    index = Index(cloud.cache, MAP_SIZE, 1024 * 1024)
    try:
        assert index.stopped_cleanly
        index.set_identity("a", "someone else's write", None)  # as an older onitufs would
    finally:
        index.close()
    assert not stopped_cleanly(cloud)


def test_a_file_unlinked_while_open_goes_at_the_stop_which_stays_clean(
        make_cloud: MakeCloud) -> None:
    """SIGTERM while a program holds a file it unlinked: the daemon detaches the busy mount,
    purges that file's inode at its stop, and marks the stop clean; no nameless inode is
    left for the next start."""
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "kept").write_bytes(b"kept")
    held = open(cloud.mountpoint / "gone", "wb")  # noqa: SIM115 (held across the stop)
    try:
        held.write(b"unlinked while open")
        held.flush()
        os.unlink(cloud.mountpoint / "gone")
        assert cloud.pid is not None
        os.kill(cloud.pid, signal.SIGTERM)
        cloud.wait_daemon_exit()
    finally:
        with contextlib.suppress(OSError):  # the mount is gone under it
            held.close()
    subprocess.run(["fusermount3", "-u", "-z", str(cloud.mountpoint)], check=False)
    assert stopped_cleanly(cloud)
    assert nameless_inodes(cloud) == []
    cloud.mount()
    assert sorted(os.listdir(cloud.mountpoint)) == ["kept"]
    cloud.umount()


def test_files_removed_right_before_a_stop_or_a_kill_leave_no_nameless_inode(
        make_cloud: MakeCloud) -> None:
    """An inode rm -rf leaves nameless goes once the kernel forgets it: a stop right after
    purges those the kernel still held and stays clean; after a kill -9 right after (one
    file still held open, so that something is surely left), the next start purges them.
    The files stay removed, in the mount and on every remote, and their blocks leave the
    cache."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "kept").write_bytes(b"kept")
    for stop in ("umount", "kill -9"):
        folder = cloud.mountpoint / "tree"
        for n in range(300):
            (folder / str(n % 10)).mkdir(parents=True, exist_ok=True)
            (folder / str(n % 10) / f"f{n}").write_bytes(os.urandom(8192))
        cloud.wait_synced()
        assert cloud.status()["cache_bytes"] >= 300 * 8192
        held = open(folder / "0" / "f0", "rb")  # noqa: SIM115 (held across the kill)
        try:
            subprocess.run(["rm", "-rf", str(folder)], check=True)
            if stop == "umount":
                held.close()
                cloud.umount()
                assert stopped_cleanly(cloud)
                assert nameless_inodes(cloud) == []
            else:
                cloud.kill9()
                assert not stopped_cleanly(cloud)
                assert nameless_inodes(cloud) != []  # at least the one held open
        finally:
            with contextlib.suppress(OSError):  # after the kill the mount is gone under it
                held.close()
        cloud.mount()
        assert sorted(os.listdir(cloud.mountpoint)) == ["kept"]
        assert cloud.status()["cache_bytes"] < 300 * 8192
        cloud.wait_synced()
        for remote in cloud.remotes.values():
            assert snapshot(remote) == {"kept": ("file", b"kept")}
    cloud.umount()
    assert nameless_inodes(cloud) == []


def test_a_kill_after_a_clean_start_leaves_the_recovery_to_run(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")
    cloud.mount()
    cloud.umount()
    cloud.mount()  # starts from a clean stop
    content = os.urandom(3 * 1024 * 1024)
    with open(cloud.mountpoint / "G", "wb") as file:
        file.write(content)
        os.fsync(file.fileno())  # stored in the cache; its upload waits an hour
    cloud.kill9()
    assert not stopped_cleanly(cloud)
    before = len(cloud.log)
    cloud.mount()
    assert UNCLEAN in cloud.log[before:]
    assert (cloud.mountpoint / "G").read_bytes() == content
    # a listing found as it was at a clean stop is logged so at once
    cloud.wait_listed()
    assert "its listing holds what the index says it holds" not in cloud.log[before:]
    cloud.umount()  # uploads what the recovery queued
    for remote in cloud.remotes.values():
        assert (remote / "G").read_bytes() == content


def test_a_remote_changed_while_unmounted_is_caught_after_a_clean_stop(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "F").write_bytes(b"old")
    (cloud.mountpoint / "H").write_bytes(b"gone soon")
    cloud.wait_synced()
    cloud.umount()
    (cloud.remotes["a"] / "F").write_bytes(b"changed on a")
    (cloud.remotes["a"] / "H").unlink()
    (cloud.remotes["a"] / "N").write_bytes(b"new on a")
    before = len(cloud.log)
    cloud.mount()
    wait_for(lambda: (cloud.mountpoint / "F").read_bytes() == b"changed on a"
             and not (cloud.mountpoint / "H").exists()
             and (cloud.mountpoint / "N").exists(), what="the changes of a to show")
    assert unchanged("a") not in cloud.log[before:]
    cloud.umount()
    remote_b = cloud.remotes["b"]
    assert (remote_b / "F").read_bytes() == b"changed on a"
    assert (remote_b / "N").read_bytes() == b"new on a"
    assert not (remote_b / "H").exists()
