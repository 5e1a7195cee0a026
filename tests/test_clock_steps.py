"""A wall clock set back or forward while mounted: an NTP step, a VM resumed, `date -s`.

The daemon runs under libfaketime, whose offset the test moves, so that only the
daemon's clock jumps and not the machine's (nor the times the kernel stamps files
with). Its log's timestamps show that the jump reached it. Before the replicator kept
its times on the monotonic clock, a change queued just before the clock went back an
hour waited that hour to reach the remotes.
"""

from __future__ import annotations

import glob
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, wait_for

LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ", re.MULTILINE)


class DaemonClock:
    """The offset libfaketime gives the daemon's wall clock, read anew at each call."""

    def __init__(self, path: Path) -> None:
        assert LIBFAKETIME, "libfaketime is missing: make test installs the faketime package"
        self.path = path
        self.set("+0")
        self.env = {**os.environ, "LD_PRELOAD": LIBFAKETIME[0],
                    "FAKETIME_TIMESTAMP_FILE": str(path), "FAKETIME_NO_CACHE": "1",
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def set(self, offset: str) -> None:
        self.path.write_text(f"{offset}\n")


def last_logged(cloud: Cloud) -> datetime:
    return datetime.strptime(LOGGED.findall(cloud.log)[-1], "%Y-%m-%d %H:%M:%S")


def reached_every_remote(cloud: Cloud, name: str, content: bytes) -> bool:
    return all((root / name).exists() and (root / name).read_bytes() == content
               for root in cloud.remotes.values())


@pytest.mark.parametrize("step", ["-1h", "+1h"])
def test_changes_reach_the_remotes_in_their_time_across_a_step_of_the_clock(
        make_cloud: MakeCloud, tmp_path: Path, step: str) -> None:
    """A file written just before the step, one written after it, and one changed on a
    remote: each reaches every remote within seconds, and the unmount has nothing left."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="2s")
    clock = DaemonClock(tmp_path / "offset")
    cloud.mount(env=clock.env)
    cloud.wait_listed()
    (cloud.mountpoint / "before.txt").write_bytes(b"written before the step")
    clock.set(step)
    wait_for(lambda: reached_every_remote(cloud, "before.txt", b"written before the step"),
             timeout=15, what="the file written before the step on every remote")
    (cloud.mountpoint / "after.txt").write_bytes(b"written after the step")
    (cloud.remotes["a"] / "there.txt").write_bytes(b"written on a remote")
    wait_for(lambda: reached_every_remote(cloud, "after.txt", b"written after the step")
             and reached_every_remote(cloud, "there.txt", b"written on a remote"),
             timeout=15, what="the files written after the step on every remote")
    assert (cloud.mountpoint / "there.txt").read_bytes() == b"written on a remote"
    cloud.wait_synced(timeout=5)
    moved = last_logged(cloud) - datetime.now()
    assert abs(moved - timedelta(hours=int(step[:-1]))) < timedelta(minutes=5), \
        f"the daemon's clock moved by {moved}, not {step}"
    assert cloud.umount().returncode == 0
    assert "changes still queued" not in cloud.log

