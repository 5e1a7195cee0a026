"""Unmounting flushes, crashes resume, remounts need no remote."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onitufs.plug import TEMP_SUFFIX

from .conftest import ONITUFS, Cloud, MakeCloud, is_mounted, snapshot, wait_for


def write_tree(root: Path, files: int = 40) -> dict[str, tuple[str, bytes]]:
    (root / "folder").mkdir()
    for index in range(files):
        (root / "folder" / f"file{index}").write_bytes(bytes([index]) * (1000 * index + 1))
    (root / "large").write_bytes(os.urandom(8 * 1024 * 1024))
    return snapshot(root)


def test_umount_waits_until_every_remote_has_everything(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(upload_delay="1h")  # nothing would upload on its own
    cloud.mount()
    expected = write_tree(cloud.mountpoint)
    assert cloud.status()["remotes"][0]["pending"] > 0
    for remote in cloud.remotes.values():
        assert snapshot(remote) == {}
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name


@pytest.mark.parametrize("how", ["fusermount", "sigterm", "sigint"])
def test_other_ways_to_unmount_flush_too(make_cloud: MakeCloud, how: str) -> None:
    cloud = make_cloud(upload_delay="1h")
    cloud.mount()
    expected = write_tree(cloud.mountpoint, files=10)
    pid = cloud.pid
    assert pid is not None
    if how == "fusermount":
        subprocess.run(["fusermount3", "-u", str(cloud.mountpoint)], check=True)
    else:
        os.kill(pid, signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    cloud.wait_daemon_exit()
    assert not is_mounted(cloud.mountpoint)
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name
    assert "all remotes up to date" in cloud.log


def test_kill9_during_upload_resumes_from_saved_offset(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, block_size="256 KiB")
    remote = cloud.remotes["a"]
    # The remote's disk fills part way, so the upload stops there whatever the speed of
    # the machine; the kill comes while it waits to try again, and the disk grows after.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(remote)],
                   check=True)
    try:
        cloud.mount()
        content = os.urandom(100 * 1024 * 1024)
        (cloud.mountpoint / "huge").write_bytes(content)

        def partial_upload() -> bool:
            parts = [p for p in remote.iterdir() if p.name.endswith(TEMP_SUFFIX)]
            return bool(parts) and parts[0].stat().st_size > 40 * 1024 * 1024
        wait_for(partial_upload, timeout=60, what="an upload half done")
        wait_for(lambda: "No space left on device" in cloud.log, what="the disk to fill")
        cloud.kill9()
        # at most the empty file that open(O_CREAT) made, when the machine is slow
        assert not (remote / "huge").exists() or not (remote / "huge").stat().st_size
        subprocess.run(["mount", "-o", "remount,size=256m", str(remote)], check=True)
        cloud.mount()  # clears the dead mount and resumes
        cloud.wait_synced(timeout=120)
        after_remount = cloud.log.rpartition("INFO onitufs.daemon: mounted")[2]
        offsets = [int(m) for m in re.findall(r"resuming huge at byte (\d+)", after_remount)]
        assert offsets and offsets[0] > 40 * 1024 * 1024 - 256 * 1024, cloud.log
        assert (remote / "huge").read_bytes() == content
        assert (cloud.mountpoint / "huge").read_bytes() == content
        assert not [p for p in remote.iterdir() if p.name.endswith(TEMP_SUFFIX)]
        cloud.umount()
    finally:
        cloud.cleanup()
        subprocess.run(["umount", "-l", str(remote)], check=False)


def test_fsynced_data_survives_kill9(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, upload_delay="1h")
    cloud.mount()
    fd = os.open(cloud.mountpoint / "journal", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"committed entry\n")
    os.fsync(fd)
    cloud.kill9()  # with the file still open: no close, no flush, no release
    with pytest.raises(OSError):
        os.close(fd)
    cloud.mount()
    assert (cloud.mountpoint / "journal").read_bytes() == b"committed entry\n"
    cloud.umount()
    assert (cloud.remotes["a"] / "journal").read_bytes() == b"committed entry\n"


def test_remount_shows_the_tree_without_any_remote(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()
    expected = write_tree(cloud.mountpoint, files=10)
    cloud.umount()
    hidden = {name: path.with_name(name + ".away") for name, path in cloud.remotes.items()}
    for name, path in cloud.remotes.items():
        path.rename(hidden[name])  # no remote can be listed or read
    try:
        cloud.mount()
        assert snapshot(cloud.mountpoint) == expected  # names and cached content
        wait_for(lambda: all(not r["online"] for r in cloud.status()["remotes"]),
                 what="the remotes to show as offline")
        cloud.umount()
    finally:
        for name, path in cloud.remotes.items():
            hidden[name].rename(path)
    cloud.mount()
    assert snapshot(cloud.mountpoint) == expected
    for remote in cloud.remotes.values():
        assert snapshot(remote) == expected


def test_evicted_blocks_come_back_from_a_remote(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "w"}, cache_size="1 MiB", block_size="64 KiB")
    cloud.mount()
    content = cloud.write_evicted("bigger-than-cache", 6 * 1024 * 1024)
    cloud.mount()  # a fresh kernel page cache: reads must go to the remote
    assert (cloud.mountpoint / "bigger-than-cache").read_bytes() == content
    assert cloud.status()["cache_bytes"] <= 2 * 1024 * 1024


# Holds a write lease on a file, as Samba does for an oplock, until a program opening the
# file asks for it (SIGIO), then lets go a moment later.
LEASE_HOLDER = """
import fcntl, os, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
signal.sigwait({signal.SIGIO})
time.sleep(0.5)
print("asked", flush=True)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
"""


def test_a_read_waits_for_a_lease_on_the_remote_s_copy_to_be_let_go(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB")
    cloud.mount()
    content = cloud.write_evicted("leased", 4 * 1024 * 1024)
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, cloud.remotes["a"] / "leased"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        cloud.mount()
        assert (cloud.mountpoint / "leased").read_bytes() == content
        assert holder.stdout.readline() == "asked\n"
        assert holder.wait(10) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_chmod_does_not_wait_for_a_lease_on_the_remote_s_copy(make_cloud: MakeCloud) -> None:
    """The driver makes the new mode durable through a descriptor of the file: a lease
    another program holds on it, which it may keep for the kernel's lease-break-time (45 s),
    does not hold the change up meanwhile."""
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "leased").write_bytes(b"content")
    cloud.wait_synced()
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER.replace(
        "time.sleep(0.5)", "time.sleep(60)"), cloud.remotes["a"] / "leased"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        (cloud.mountpoint / "leased").chmod(0o600)
        wait_for(lambda: stat.S_IMODE((cloud.remotes["a"] / "leased").stat().st_mode) == 0o600,
                 timeout=10, what="the mode on the remote")
        cloud.wait_synced(timeout=10)
    finally:
        holder.kill()
        holder.wait()


def test_cache_never_evicts_what_is_not_uploaded(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB", upload_delay="1h")
    cloud.mount()
    content = os.urandom(4 * 1024 * 1024)
    (cloud.mountpoint / "pending").write_bytes(content)
    assert cloud.status()["cache_bytes"] >= len(content)  # over the limit, but kept
    cloud.umount()
    assert (cloud.remotes["a"] / "pending").read_bytes() == content


def test_status_command_lists_every_remote(cloud: Cloud) -> None:
    (cloud.mountpoint / "x").write_bytes(b"x")
    cloud.wait_synced()
    result = subprocess.run([*ONITUFS, "status", str(cloud.mountpoint)], capture_output=True,
                            text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[1].split()[:4] == ["REMOTE", "DRIVER", "MODE", "STATE"]
    assert [line.split()[0] for line in lines[2:]] == ["a", "b", "c"]
    assert all(" online " in line for line in lines[2:])


def test_fsync_waits_for_replicas_when_asked(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(upload_delay="1h", fsync="replicas:2")
    cloud.mount()
    fd = os.open(cloud.mountpoint / "ledger", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"entry 1\n")
        os.fsync(fd)  # returns once two remotes hold it, upload_delay or not
        holding = [name for name, remote in cloud.remotes.items()
                   if (remote / "ledger").exists() and (remote / "ledger").read_bytes() == b"entry 1\n"]
        assert len(holding) >= 2, holding
        for name, remote in cloud.remotes.items():
            remote.rename(remote.with_name(name + ".away"))
        wait_for(lambda: not any(r["online"] for r in cloud.status()["remotes"]),
                 what="the remotes to go offline")
        os.write(fd, b"entry 2\n")
        with pytest.raises(OSError) as caught:
            os.fsync(fd)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)
        for name, remote in cloud.remotes.items():
            if remote.with_name(name + ".away").exists():
                remote.with_name(name + ".away").rename(remote)
    assert "fewer than 2 remotes can hold it now" in cloud.log
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "ledger").read_bytes() == b"entry 1\nentry 2\n"


def test_reading_with_no_replica_reachable_fails_with_eio(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB")
    cloud.mount()
    cloud.write_evicted("far away", 4 * 1024 * 1024)
    away = cloud.remotes["a"].with_name("a.away")
    cloud.remotes["a"].rename(away)
    try:
        cloud.mount()
        with pytest.raises(OSError) as caught:
            (cloud.mountpoint / "far away").read_bytes()
        assert caught.value.errno == errno.EIO
        assert "cannot read /far away" in cloud.log
        assert (cloud.mountpoint / "far away").stat().st_size == 4 * 1024 * 1024
    finally:
        away.rename(cloud.remotes["a"])


def test_a_read_only_mount_unmounts_cleanly(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    (cloud.remotes["a"] / "seen.txt").write_bytes(b"from the remote")
    cloud.mount("ro")
    wait_for(lambda: (cloud.mountpoint / "seen.txt").exists(), what="the remote's file")
    with pytest.raises(OSError):
        (cloud.mountpoint / "new.txt").write_bytes(b"refused")
    result = cloud.umount()
    assert result.returncode == 0, result.stderr
    assert not result.stderr, result.stderr


def test_a_first_mount_of_remotes_holding_the_same_files_sends_nothing(
        make_cloud: MakeCloud) -> None:
    """Each remote's first listing is taken in whole (its files compared with those another
    remote listed first) before anything is sent to it: nothing goes twice, no conflict."""
    cloud = make_cloud({"a": "rw", "b": "rw", "c": "rw"})
    tree = {f"d{n % 7}/f{n}.txt": os.urandom(n * 97 % 5000) for n in range(150)}
    for remote in cloud.remotes.values():
        for path, data in tree.items():
            (remote / path).parent.mkdir(exist_ok=True)
            (remote / path).write_bytes(data)
            os.utime(remote / path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    cloud.mount()
    wait_for(lambda: all(r["state"] == "online" for r in cloud.status()["remotes"]),
             what="every remote's first listing")
    cloud.wait_synced()
    assert {(cloud.mountpoint / path).read_bytes() == data for path, data in tree.items()} \
        == {True}
    assert [(r["name"], r["bytes_sent"], r["done"]) for r in cloud.status()["remotes"]] \
        == [("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]
    assert "Conflict" not in cloud.log
    cloud.umount()


def test_the_daemon_holds_nothing_of_its_caller_open(make_cloud: MakeCloud) -> None:
    """The daemon is a fork of `onitufs mount`: a pipe its caller passed down (a shell's
    other descriptors, make's jobserver) is not held for as long as the mount lasts, nor
    is the caller's terminal or output ($(onitufs mount ...) returns)."""
    cloud = make_cloud()
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run([*ONITUFS, "mount", cloud.mountpoint, cloud.config],
                                stdin=subprocess.PIPE, capture_output=True, text=True,
                                pass_fds=(write_end,), timeout=120)
        assert result.returncode == 0, result.stderr
        assert is_mounted(cloud.mountpoint)
        daemon = int(cloud.status()["pid"])
        held = {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in os.listdir(f"/proc/{daemon}/fd")}
        os.close(write_end)
        write_end = -1
        os.set_blocking(read_end, False)  # held open elsewhere, a read fails at once
        try:
            assert os.read(read_end, 1) == b""
        except BlockingIOError:
            raise AssertionError("the daemon holds the caller's pipe open") from None
        assert os.readlink(f"/proc/{daemon}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{daemon}/fd/1") == str(cloud.cache / "onitufs.log"), held
        assert os.getsid(daemon) == daemon  # a session of its own: no terminal's signals
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    cloud.umount()


def test_the_daemon_keeps_no_folder_of_its_caller_busy(make_cloud: MakeCloud,
                                                        tmp_path: Path) -> None:
    """A mount made from a folder on another disk (a USB stick, say) leaves that disk free
    to be unmounted while the mount lasts: the daemon works from / , as daemons do."""
    cloud = make_cloud()
    stick = tmp_path / "stick"
    stick.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(stick)], check=True)
    try:
        result = subprocess.run([*ONITUFS, "mount", cloud.mountpoint, cloud.config],
                                cwd=stick, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        daemon = int(cloud.status()["pid"])
        assert os.readlink(f"/proc/{daemon}/cwd") == "/"
        gone = subprocess.run(["umount", str(stick)], capture_output=True, text=True)
        assert gone.returncode == 0, f"the stick stays busy: {gone.stderr}"
        (cloud.mountpoint / "after.txt").write_text("still here")
        cloud.umount()
        assert (cloud.remotes["a"] / "after.txt").read_text() == "still here"
    finally:
        cloud.cleanup()
        subprocess.run(["umount", "-l", str(stick)], check=False, capture_output=True)

