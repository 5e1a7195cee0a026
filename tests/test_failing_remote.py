"""A remote that keeps failing, or whose disk hangs, backs off or stalls, says why once, and
unmount names the reason."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import onitufs_local
import pytest

from onitufs import room
from onitufs.plug import MARKER
from onitufs.testing.backdoor import FolderBackdoor
from onitufs.testing.harness import started

from .bitrot import loop_disk
from .conftest import (
    Cloud,
    MakeCloud,
    failed,
    run,
    small_disk,
    snapshot,
    umount_leaves_queued,
    unmarked_once,
    wait_for,
)
from .sshd import MakeSshCloud, SshRemote

pytest_plugins = ["tests.sshd"]


@pytest.fixture
def full_remote_cloud(make_cloud: MakeCloud) -> Iterator[Cloud]:
    """Remotes a and b, and c on a 4 MiB tmpfs; unmounted whatever happens."""
    cloud = make_cloud({"a": "rw", "b": "rw", "c": "rw"})
    with small_disk(cloud, cloud.remotes["c"], "4m"):
        yield cloud


def test_a_full_remote_backs_off_and_unmount_says_why(full_remote_cloud: Cloud) -> None:
    cloud = full_remote_cloud
    cloud.mount()
    content = os.urandom(8 * 1024 * 1024)
    (cloud.mountpoint / "big.bin").write_bytes(content)
    wait_for(lambda: (cloud.remotes["b"] / "big.bin").exists(), what="the others to get it")
    time.sleep(12)
    attempts = re.findall(r"remote c: (?:start_upload|restart_upload) big\.bin", cloud.log)
    assert 1 <= len(attempts) <= 5, f"{len(attempts)} attempts in 12 s: no backoff"
    warnings = re.findall(r"WARNING onitufs\.remotes: remote c: .*No space left", cloud.log)
    assert len(warnings) == 1, warnings
    state = next(r for r in cloud.status()["remotes"] if r["name"] == "c")
    assert "No space left on device" in str(state["last_error"]), state
    assert state["stalled"], state
    umount_leaves_queued(cloud, r"onitufs: c: .*No space left on device.*; 1 changes still queued")
    for name in ("a", "b"):
        assert (cloud.remotes[name] / "big.bin").read_bytes() == content, name


@pytest.mark.parametrize(("kind", "how"), [("local", "room made"), ("local", "made writable"),
                                         ("ssh", "room made"), ("ssh", "made writable")])
def test_a_disk_relieved_of_what_it_refused_for_is_tried_again_within_seconds(
        make_cloud: MakeCloud, request: pytest.FixtureRequest, kind: str, how: str) -> None:
    """After failures in a row, what a remote refused waits out a backoff that grows to
    minutes; a disk that refused it for want of room, or of write access, is tried again
    within seconds of having them (onitufs.room), not after the backoff, here or on an SSH
    server: an upload on a full disk made room on; the marker of a disk read-only at the
    first mount (judged again with a listing, which no event from the disk brings)
    remounted writable."""
    if kind == "local":
        cloud = make_cloud({"a": "rw", "b": "rw", "c": "rw"})
    else:
        make_ssh_cloud: MakeSshCloud = request.getfixturevalue("make_ssh_cloud")
        cloud = make_ssh_cloud({"a": "rw", "b": "rw"},
                               {"c": SshRemote(request.getfixturevalue("sshd"))})
    c = cloud.remotes["c"]
    with small_disk(cloud, c, "4m"):
        relieved_in_seconds(cloud, c, how)


def relieved_in_seconds(cloud: Cloud, c: Path, how: str) -> None:
    if how == "made writable":
        subprocess.run(["mount", "-o", "remount,ro", str(c)], check=True)
    cloud.mount()
    content = os.urandom((8 if how == "room made" else 1) * 1024 * 1024)  # (the disk: 4 MiB)
    (cloud.mountpoint / "big.bin").write_bytes(content)
    refused = "big.bin" if how == "room made" else MARKER
    # The fifth try fails about 15 s in (a chunk, the marker's start), and the next would
    # wait 16 s more: a copy within 12 s of the disk's relief is no try after the backoff.
    began = time.monotonic()
    wait_for(lambda: failed(cloud, "c", refused) >= 5, 60, f"five tries of {refused} on c")
    # (not sooner: the room an upload's abort gives back is no room made)
    assert time.monotonic() - began > 10, "no backoff"
    subprocess.run(["mount", "-o", "remount,size=16m" if how == "room made" else "remount,rw",
                    str(c)], check=True)
    wait_for(lambda: (c / "big.bin").exists() and (c / "big.bin").read_bytes() == content, 12,
             "remote c to get it once it can")
    cloud.umount()
    assert snapshot(c) == snapshot(cloud.remotes["a"])


def test_the_local_driver_tells_of_room_made_once_per_refusal(tmp_path: Path) -> None:
    """Room made after a refusal is told once (Plug.retry_now); room made again without a
    new refusal is not: nothing waits for it, and another program's room that comes and
    goes would make a loop."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "files").mkdir()
        table = {"driver": "local", "path": str(disk / "files"), "poll_interval": "1h"}
        backdoor = FolderBackdoor(disk / "files", disk / "ballast")
        with started(onitufs_local, table, backdoor, base_dir=tmp_path) as harness:
            def retries() -> int:
                with harness.sink.cond:
                    return harness.sink.retries

            def told_at_least(count: int) -> bool:  # (called under the sink's lock)
                return harness.sink.retries >= count

            for told in (1, 2):
                # The ballast goes at the block's end: room made after the refusal.
                with backdoor.disk_full(), pytest.raises(OSError, match="No space left"):
                    harness.upload(f"refused{told}", os.urandom(1 << 20))
                harness.sink.wait(functools.partial(told_at_least, told), 10, "the room told")
                assert retries() == told
                subprocess.run(["mount", "-o", f"remount,size={2 + 2 * told}m", str(disk)],
                               check=True)  # room made, with no refusal since
                time.sleep(2 * room.LOOK_EVERY + 1)
                assert retries() == told
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_remote_whose_disk_is_full_at_its_first_mount_is_unavailable_until_there_is_room(
        make_cloud: MakeCloud) -> None:
    """A new remote on a disk with no room even for its marker: it is unavailable, said in
    one line, its marker tried again with backoff, not in a loop, and nothing of its
    listing is applied. Once there is room, the same mount marks it and sends it all."""
    cloud = make_cloud({"a": "rw", "c": "rw"})
    c = cloud.remotes["c"]
    with small_disk(cloud, c, "1m"):
        with pytest.raises(OSError, match="No space left on device"), \
                open(c / "ballast", "wb") as ballast:
            while True:
                ballast.write(bytes(65536))
                ballast.flush()
        cloud.mount()
        (cloud.mountpoint / "new.txt").write_bytes(b"new")
        wait_for(lambda: (cloud.remotes["a"] / "new.txt").exists(), what="remote a to get it")
        unmarked_once(cloud, "c", "No space left on device")
        assert sorted(os.listdir(cloud.mountpoint)) == ["new.txt"]
        (c / "ballast").unlink()
        wait_for(lambda: (c / "new.txt").exists(), 60, "remote c to get it once there is room")
        cloud.umount()
        assert snapshot(c) == snapshot(cloud.remotes["a"]) == {"new.txt": ("file", b"new")}


def test_a_disk_that_hangs_under_a_local_remote_stalls_it_and_the_stop_ends(
        make_cloud: MakeCloud) -> None:
    """The disk under remote b stops taking writes (frozen: each write waits in the kernel,
    uninterruptibly, as on a disk that stopped answering). Its upload waits, the remote
    stalls, `onitufs umount` says so and ends. The daemon's process cannot end while its
    write waits, but it has let go of the cache: a new mount comes up at once, and once
    the disk is back it finishes the upload."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, stall="5s")
    frozen = cloud.remotes["b"]
    with loop_disk(frozen):
        cloud.mount()
        (cloud.mountpoint / "before.txt").write_bytes(b"before")
        cloud.wait_synced()
        content = os.urandom(4 * 1024 * 1024)
        subprocess.run(["fsfreeze", "--freeze", frozen], check=True)
        try:
            (cloud.mountpoint / "during.bin").write_bytes(content)
            wait_for(lambda: (cloud.remotes["a"] / "during.bin").exists(),
                     what="the other remote to get it")
            old = cloud.pid
            result = run("umount", cloud.mountpoint, check=False)
            assert result.returncode == 2, result.stderr
            assert result.stderr == "onitufs: b: 1 changes still queued; they resume at the next " \
                "mount\n", result.stderr
            cloud.mount()
            assert not (frozen / "during.bin").exists()
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", frozen], check=False)
        wait_for(lambda: not os.path.exists(f"/proc/{old}"), what="the old daemon to end")
        cloud.wait_synced()
        assert (frozen / "during.bin").read_bytes() == content
        assert (frozen / "before.txt").read_bytes() == b"before"
        assert (cloud.remotes["a"] / "during.bin").read_bytes() == content
        cloud.umount()


def test_a_folder_that_refuses_a_link_keeps_only_that_link_back(make_cloud: MakeCloud) -> None:
    """A folder on remote b that takes no new entry (`chattr +i`: symlink(2) fails with
    EPERM, as on a disk that holds no links at all): that link waits, and reaches b once
    the folder lets go; links anywhere else on b go on reaching it meanwhile."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "locked").mkdir()
    (mnt / "f").write_bytes(b"f")
    cloud.wait_synced()
    locked = cloud.remotes["b"] / "locked"
    subprocess.run(["chattr", "+i", locked], check=True)
    try:
        (mnt / "locked" / "in").symlink_to("../f")
        wait_for(lambda: re.search(r"remote b: .*locked/in.*Operation not permitted",
                                   cloud.log) is not None, what="b to refuse the link")
        (mnt / "out").symlink_to("f")
        wait_for(lambda: (cloud.remotes["b"] / "out").is_symlink(), what="a link elsewhere")
        assert not (locked / "in").is_symlink()
    finally:
        subprocess.run(["chattr", "-i", locked], check=True)
    assert "holds no symbolic links" not in cloud.log
    cloud.umount()
    every = {"f": ("file", b"f"), "locked": ("dir", b""), "locked/in": ("symlink", b"../f"),
             "out": ("symlink", b"f")}
    assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"]) == every


def test_a_tree_deeper_than_the_remotes_can_hold_stalls_there_in_one_short_line(
        make_cloud: MakeCloud) -> None:
    """A tree made with relative calls can be deeper than a remote's folder takes in one
    path (PATH_MAX, 4096 bytes): what lies deeper waits, said in a line of status and of
    umount that is not the whole path, every other change goes on, and once the tree is
    removed the remotes hold what the mount holds."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    folder = os.open(cloud.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(45):  # 4,545 bytes below the mount's root
            os.mkdir("d" * 100, dir_fd=folder)
            deeper = os.open("d" * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = deeper
        file = os.open("deepest.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
        os.write(file, b"deep")
        os.close(file)
    finally:
        os.close(folder)
    (cloud.mountpoint / "plain.txt").write_bytes(b"plain")
    for remote in cloud.remotes.values():
        wait_for(lambda remote=remote: (remote / "plain.txt").exists(),  # type: ignore[misc]
                 what="a change beside the deep tree")
    wait_for(lambda: all(remote["stalled"] for remote in cloud.status()["remotes"]),
             what="the remotes to stall on the deep tree")
    for remote in cloud.status()["remotes"]:
        assert "[Errno 36] File name too long: " in remote["reason"], remote
        assert len(remote["reason"]) <= 400, remote["reason"]
    result = run("umount", cloud.mountpoint, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(
        "File name too long" in line and "changes still queued" in line and len(line) < 500
        for line in lines), result.stderr
    cloud.wait_daemon_exit()
    cloud.mount()
    shutil.rmtree(cloud.mountpoint / ("d" * 100))
    cloud.umount()
    for remote in cloud.remotes.values():
        assert snapshot(remote) == {"plain.txt": ("file", b"plain")}, remote
