"""A dead mount is easy to clean (umount detaches it, mount clears it), one whose daemon
does not answer is said to be so, a wrong path is named for what it is, and a reader that
goes away early (`onitufs status MNT | head -1`) gets no traceback."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onitufs.cli.common import ANSWER_WAIT

from .conftest import ONITUFS, MakeCloud, is_mounted, run, wait_for


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_umount_detaches_a_mount_whose_daemon_died(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="60s")
    cloud.mount()
    (cloud.mountpoint / "queued").write_bytes(b"not uploaded yet")
    wait_for(lambda: cloud.status()["unsaved_bytes"] == 0, what="the write to reach the index")
    cloud.kill9()

    status = run("status", cloud.mountpoint, check=False)
    assert status.returncode == 1
    line = one_line(status)
    assert str(cloud.mountpoint) in line and "daemon" in line and "onitufs umount" in line, line
    assert is_mounted(cloud.mountpoint), "status leaves the mount as it is"

    result = run("umount", cloud.mountpoint, check=False)
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert str(cloud.mountpoint) in line and "detached" in line, line
    assert "resume at the next mount" in line, line
    assert not is_mounted(cloud.mountpoint)
    assert cloud.mountpoint.is_dir() and not any(cloud.mountpoint.iterdir())

    # what the daemon had queued goes out from the next mount
    cloud.mount()
    assert (cloud.mountpoint / "queued").read_bytes() == b"not uploaded yet"
    assert cloud.umount().returncode == 0
    for remote in cloud.remotes.values():
        assert (remote / "queued").read_bytes() == b"not uploaded yet"


def test_mount_right_after_a_kill9_clears_the_dead_mount(make_cloud: MakeCloud) -> None:
    """The kernel keeps answering a stat of the dead mount's root from its cache for a
    minute (the attribute timeout): `onitufs mount` at once must still see the daemon is
    gone, clear its mount and mount, not call it "already a mount point"."""
    cloud = make_cloud({"a": "rw"}, upload_delay="60s")
    cloud.mount()
    (cloud.mountpoint / "queued").write_bytes(b"not uploaded yet")
    os.stat(cloud.mountpoint)  # the root's attributes, cached
    cloud.kill9()
    result = run("mount", cloud.mountpoint, cloud.config)
    assert "clearing the mount left by a daemon that died" in result.stderr, result.stderr
    cloud.pid = int(cloud.status()["pid"])
    assert (cloud.mountpoint / "queued").read_bytes() == b"not uploaded yet"
    assert cloud.umount().returncode == 0
    assert (cloud.remotes["a"] / "queued").read_bytes() == b"not uploaded yet"


def test_umount_and_status_say_that_a_stopped_daemon_is_stopped(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="60s")
    cloud.mount()
    (cloud.mountpoint / "queued").write_bytes(b"not uploaded yet")
    wait_for(lambda: cloud.status()["unsaved_bytes"] == 0, what="the write to reach the index")
    pid = cloud.pid
    assert pid is not None
    watch = subprocess.Popen([*ONITUFS, "status", "--watch", "--json", str(cloud.mountpoint)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watch.stdout is not None and watch.stdout.readline().startswith("{")
    os.kill(pid, signal.SIGSTOP)  # as Ctrl-Z does to `onitufs mount -f`
    try:
        _, said = watch.communicate(timeout=ANSWER_WAIT / 2)
        assert watch.returncode == 1, said  # not taken for an unmount
        assert said.endswith(f"(pid {pid}) is stopped: `kill -CONT {pid}` lets it go on\n"), said
        for command in ("status", "umount", "mount"):
            started = time.monotonic()
            result = run(command, cloud.mountpoint, *([cloud.config] if command == "mount" else []),
                         check=False)
            assert result.returncode == 1, (command, result.stderr)
            assert one_line(result) == (f"onitufs: {cloud.mountpoint}: the daemon of this mount "
                                        f"(pid {pid}) is stopped: `kill -CONT {pid}` lets it go on")
            assert time.monotonic() - started < ANSWER_WAIT / 2, "said at once, not timed out"
            assert is_mounted(cloud.mountpoint), "left as it is"
    finally:
        os.kill(pid, signal.SIGCONT)
        if watch.poll() is None:  # a failed check above: it outlives no test
            watch.kill()
            watch.communicate()
    assert cloud.umount().returncode == 0
    for remote in cloud.remotes.values():
        assert (remote / "queued").read_bytes() == b"not uploaded yet"


def test_status_umount_and_mount_end_where_the_daemon_hangs(tmp_path: Path) -> None:
    """A daemon that took the request and never answers holds whoever made it (no signal
    ends that wait): the commands say so after ANSWER_WAIT and end, the mount left. A
    mount there is refused so, not by a stat that would hang."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = tmp_path / "onitufs.toml"
    config.write_text('[cache]\npath = "cache"\n\n[remotes.a]\ndriver = "local"\npath = "a"\n')
    hung = subprocess.Popen([sys.executable, "-m", "tests.hung_daemon", str(mountpoint),
                             str(config)], cwd=Path(__file__).parent.parent)
    commands: list[subprocess.Popen[str]] = []
    try:
        wait_for(lambda: is_mounted(mountpoint), what="the hung daemon to mount")
        commands = [subprocess.Popen([*ONITUFS, *command], stderr=subprocess.PIPE, text=True)
                    for command in (["status", str(mountpoint)], ["umount", str(mountpoint)],
                                    ["mount", str(mountpoint), str(config)])]
        for command in commands:
            _, stderr = command.communicate(timeout=ANSWER_WAIT + 30)
            assert command.returncode == 1, stderr
            assert stderr == (f"onitufs: {mountpoint}: the daemon of this mount has not answered "
                              f"for {ANSWER_WAIT:.0f} s\n"), stderr
        assert is_mounted(mountpoint) and hung.poll() is None, "left as it is"
    finally:
        # the daemon first: a command it holds (a failed check above) ends only with it
        hung.kill()
        hung.wait()
        for command in commands:
            command.kill()
            command.communicate()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                       capture_output=True)


def test_umount_and_status_name_a_wrong_path_for_what_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "file").write_text("x")
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    try:
        for path, said in ((tmp_path / "missing", "no such folder"),
                           (folder, "not a mount point"),
                           (folder / "file", "not a mount point"),
                           (other, "not an onitufs mount (a tmpfs mount)")):
            for command in ("umount", "status"):
                result = run(command, path, check=False)
                assert result.returncode == 1, (command, path, result.stderr)
                assert one_line(result) == f"onitufs: {path}: {said}", (command, result.stderr)
        assert is_mounted(other)
    finally:
        subprocess.run(["umount", str(other)], check=False)


def closed_stdout(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run onitufs with a standard output whose reader has already gone away."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*ONITUFS, *map(str, args)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_gets_no_traceback(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    for args in (("status", cloud.mountpoint), ("status", "--json", cloud.mountpoint)):
        result = closed_stdout(*args)
        assert result.stderr == "", result.stderr
        assert result.returncode == 141, result.returncode  # as a command killed by SIGPIPE
    # `onitufs status MNT | head -1`, as a shell runs it
    piped = subprocess.run(["bash", "-c", f"{' '.join(ONITUFS)} status {cloud.mountpoint} | head -1"],
                           capture_output=True, text=True, timeout=60)
    assert piped.stderr == "" and piped.stdout.startswith(str(cloud.mountpoint)), piped
    cloud.umount()
    # fsck goes on to the end and exits as it would
    result = closed_stdout("fsck", cloud.config)
    assert result.stderr == "" and result.returncode == 0, (result.returncode, result.stderr)


def test_unsaved_bytes_count_the_hole_a_write_past_the_end_leaves(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, upload_delay="60s", write_buffer="2 MiB")
    cloud.mount()
    block = 1024 * 1024
    content = mmap.mmap(-1, block)  # page-aligned, for O_DIRECT
    content.write(os.urandom(block))
    # O_DIRECT: each write reaches the daemon as it is made, not from the kernel's cache
    fd = os.open(cloud.mountpoint / "holey", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
    try:
        os.pwrite(fd, memoryview(content)[:4096], 0)
        os.pwrite(fd, memoryview(content)[:4096], block - 4096)  # a hole between, in block 0
        assert cloud.status()["unsaved_bytes"] == block
        # past the write buffer: the full blocks go to LMDB, the first with its hole
        os.pwrite(fd, content, block)
        os.pwrite(fd, content, 2 * block)
        assert cloud.status()["unsaved_bytes"] >= 0
    finally:
        os.close(fd)
    wait_for(lambda: cloud.status()["unsaved_bytes"] == 0, what="the buffers to be stored")
    status = run("status", cloud.mountpoint)
    assert "unsaved 0 B" in status.stdout.splitlines()[0], status.stdout
    assert cloud.umount().returncode == 0
    expected = bytes(content[:4096]) + bytes(block - 8192) + bytes(content[:4096]) + 2 * bytes(content)
    assert (cloud.remotes["a"] / "holey").read_bytes() == expected
