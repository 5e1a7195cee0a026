"""A wall clock set back or forward while mounted: an NTP step, a VM resumed, `date -s`.

The daemon runs with tests/clockshift.c preloaded, whose offset the test moves, so
that only the daemon's wall clock jumps, and not its monotonic clock, nor the
machine's clocks (nor the times the kernel stamps files with). Its log's timestamps
show that the jump reached it. Before the replicator kept its times on the
monotonic clock, a change queued just before the clock went back an hour waited
that hour to reach the remotes; before a driver's listing said when it began on
that clock too, a file written while the clock went back and a listing ran was
taken for deleted.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, everywhere, wait_for
from .delay import DelayProxy
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ", re.MULTILINE)
SHIM = Path(__file__).with_name("clockshift.c")


class DaemonClock:
    """The daemon's wall clock, moved by tests/clockshift.c (preloaded) by the offset
    kept in a file of its own, which it maps: a write moves the clock at once."""

    def __init__(self, root: Path) -> None:
        library, self.path = root / "clockshift.so", root / "clock-offset"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(SHIM), "-ldl"],
                       check=True)
        self.path.write_bytes(struct.pack("=q", 0))
        self.env = {**os.environ, "LD_PRELOAD": str(library), "CLOCK_OFFSET_FILE": str(self.path)}

    def set(self, seconds: int) -> None:
        with self.path.open("r+b") as file:  # in place: the mapping must not see it cut
            file.write(struct.pack("=q", seconds * 10**9))


def last_logged(cloud: Cloud) -> datetime:
    return datetime.strptime(LOGGED.findall(cloud.log)[-1], "%Y-%m-%d %H:%M:%S")


def reads(path: Path, content: bytes) -> bool:
    """Whether the file reads as `content` (a read that fails, as one that finds the
    remote changed does once, is no)."""
    try:
        return path.read_bytes() == content
    except OSError:
        return False


@pytest.mark.parametrize("step", [-3600, 3600])
def test_changes_reach_the_remotes_in_their_time_across_a_step_of_the_clock(
        make_cloud: MakeCloud, tmp_path: Path, step: int) -> None:
    """A file written just before the step, one written after it, and one changed on a
    remote: each reaches every remote within seconds, and the unmount has nothing left."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="2s")
    clock = DaemonClock(tmp_path)
    cloud.mount(env=clock.env)
    cloud.wait_listed()
    (cloud.mountpoint / "before.txt").write_bytes(b"written before the step")
    clock.set(step)
    wait_for(lambda: everywhere(cloud, "before.txt", b"written before the step"),
             timeout=15, what="the file written before the step on every remote")
    (cloud.mountpoint / "after.txt").write_bytes(b"written after the step")
    (cloud.remotes["a"] / "there.txt").write_bytes(b"written on a remote")
    wait_for(lambda: everywhere(cloud, "after.txt", b"written after the step")
             and everywhere(cloud, "there.txt", b"written on a remote"),
             timeout=15, what="the files written after the step on every remote")
    cloud.wait_synced(timeout=5)
    moved = last_logged(cloud) - datetime.now()
    assert abs(moved - timedelta(seconds=step)) < timedelta(minutes=5), \
        f"the daemon's clock moved by {moved}, not {step}"
    assert cloud.umount().returncode == 0
    assert "changes still queued" not in cloud.log


def test_a_file_written_as_the_clock_goes_back_during_a_listing_is_no_delete(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd, tmp_path: Path) -> None:
    """An SSH server's whole listing, slowed by a long link (100 ms round trips) and a
    tree 12 folders deep, is asked for by a read that finds a file changed there. As it
    begins, the daemon's clock goes back an hour, and a file is written and fsynced in
    the mount: it is uploaded after the listing read the root folder, and the listing
    misses it. onitufs wrote it after the listing began, which the listing says nothing
    of: the file stays, in the mount and on the server."""
    proxy = DelayProxy(sshd.port, 0.05)
    try:
        cloud = make_ssh_cloud({}, {"s": SshRemote(sshd)}, poll_interval="1h")
        cloud.config.write_text(cloud.config.read_text()
                                .replace(f"port = {sshd.port}\n", f"port = {proxy.port}\n")
                                .replace(str(sshd.known_hosts), str(sshd.known_hosts_for(proxy.port))))
        server = cloud.remotes["s"]
        (server / "changed.txt").write_bytes(b"before")
        (server / "/".join(f"d{level}" for level in range(12))).mkdir(parents=True)
        clock = DaemonClock(tmp_path)
        cloud.mount(env=clock.env)
        cloud.wait_listed()
        wait_for(lambda: "no change; next listing in 4s" in cloud.log, timeout=60,
                 what="the poll to back off to 4 s")
        (server / "changed.txt").write_bytes(b"after, longer")
        listings = cloud.log.count("remote s: listed in ")
        with pytest.raises(OSError) as failed:
            (cloud.mountpoint / "changed.txt").read_bytes()
        assert failed.value.errno == errno.EIO  # and the whole listing begins
        clock.set(-3600)
        with open(cloud.mountpoint / "written.txt", "wb") as file:
            file.write(b"written during the listing")
            os.fsync(file.fileno())
        wait_for(lambda: (server / "written.txt").exists(), timeout=10,
                 what="the upload to the server")
        wait_for(lambda: cloud.log.count("remote s: listed in ") > listings, timeout=30,
                 what="the whole listing to be taken in")
        log = cloud.log
        assert log.index("end_upload written.txt") < log.index("remote s: listed in ", log.index(
            "get_chunk changed.txt")), "the upload did not land while the listing ran"
        assert reads(cloud.mountpoint / "changed.txt", b"after, longer")
        assert (cloud.mountpoint / "written.txt").exists(), "taken for deleted on the server"
        assert (cloud.mountpoint / "written.txt").read_bytes() == b"written during the listing"
        cloud.wait_synced()
        assert (server / "written.txt").read_bytes() == b"written during the listing"
        assert last_logged(cloud) < datetime.now() - timedelta(minutes=55)
        assert cloud.umount().returncode == 0
        assert (server / "written.txt").read_bytes() == b"written during the listing"
    finally:
        proxy.stop()
