"""A status you can watch: per remote its state, queued files and bytes, throughput and
ETA, as a table, as JSON of a documented schema, or redrawn live; and progress of long
operations on a terminal, nothing of it elsewhere."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ONITUFS, Cloud, MakeCloud, is_mounted, run, small_disk, wait_for
from .terminal import terminal

MiB = 1024 * 1024
MAN = Path(__file__).parent.parent / "man" / "onitufs.1"
FLUSH = "user.onitufs.flush"


def remote(cloud: Cloud, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in cloud.status()["remotes"] if r["name"] == name)
    return found


def test_json_counts_queued_bytes_and_throughput(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "r": "r"}, upload_delay="1h")
    cloud.mount()
    wait_for(lambda: all(r["state"] == "online" for r in cloud.status()["remotes"]),
             what="the first listings")
    (cloud.mountpoint / "three").write_bytes(os.urandom(3 * MiB))
    (cloud.mountpoint / "folder").mkdir()
    status = json.loads(run("status", "--json", cloud.mountpoint).stdout)
    assert status["schema"] == 1
    a, r = status["remotes"]
    assert (a["state"], a["reason"], a["pending"], a["pending_bytes"]) == ("online", None, 2,
                                                                         3 * MiB), a
    assert (a["bytes_per_second"], a["eta_seconds"]) == (0, None), a  # nothing moves yet
    assert (r["pending"], r["pending_bytes"], r["eta_seconds"]) == (0, 0, 0), r

    os.setxattr(cloud.mountpoint, FLUSH, b"1")  # what umount does: upload now
    cloud.wait_synced()
    a = remote(cloud, "a")
    assert (a["pending"], a["pending_bytes"], a["eta_seconds"], a["bytes_sent"]) == (
        0, 0, 0, 3 * MiB), a
    assert isinstance(a["bytes_per_second"], int) and a["bytes_per_second"] > 0, a
    # not on a terminal: plain lines, nothing cut, no progress on stderr
    table = run("status", cloud.mountpoint).stdout.splitlines()
    assert table[1].split() == ["REMOTE", "DRIVER", "MODE", "STATE", "QUEUED", "BYTES", "RATE",
                                "ETA", "SENT"]
    assert table[2].split()[:5] == ["a", "local", "rw", "online", "0"], table
    assert "\x1b" not in "".join(table)
    result = cloud.umount()
    assert result.stderr == "", result.stderr


def test_queued_bytes_follow_new_revisions_and_deletes(make_cloud: MakeCloud) -> None:
    """The queued bytes are a sum kept as changes are queued and done: a new revision
    counts in place of the one it replaces, a delete counts nothing."""
    cloud = make_cloud({"a": "rw"}, upload_delay="1h")
    cloud.mount()
    one, two = cloud.mountpoint / "one", cloud.mountpoint / "two"
    one.write_bytes(os.urandom(3 * MiB))
    assert remote(cloud, "a")["pending_bytes"] == 3 * MiB
    one.write_bytes(os.urandom(MiB))
    two.write_bytes(os.urandom(2 * MiB))
    a = remote(cloud, "a")
    assert (a["pending"], a["pending_bytes"]) == (2, 3 * MiB), a
    one.unlink()
    assert remote(cloud, "a")["pending_bytes"] == 2 * MiB
    os.setxattr(cloud.mountpoint, FLUSH, b"1")
    cloud.wait_synced()
    a = remote(cloud, "a")
    assert (a["pending"], a["pending_bytes"], a["bytes_sent"]) == (0, 0, 2 * MiB), a
    two.write_bytes(os.urandom(MiB))
    assert remote(cloud, "a")["pending_bytes"] == MiB


def test_every_json_field_is_in_the_manual(cloud: Cloud) -> None:
    status = cloud.status()
    manual = MAN.read_text()
    section = manual[manual.index(".B status"):manual.index(".B fsck \\fICONFIG")]
    for field in [*status, *status["remotes"][0]]:
        assert re.search(rf"^\.BR? {field}\b", section, re.MULTILINE), \
            f"{field} is not described under status in onitufs(1)"


@pytest.fixture
def small_remote(make_cloud: MakeCloud) -> Iterator[Cloud]:
    """Remote a on a 3 MiB tmpfs (b as usual), unmounted whatever happens."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")
    with small_disk(cloud, cloud.remotes["a"], "3m"):
        yield cloud


def test_queued_bytes_leave_out_what_an_upload_cut_short_sent(small_remote: Cloud) -> None:
    cloud = small_remote
    cloud.mount()
    (cloud.mountpoint / "eight").write_bytes(os.urandom(8 * MiB))
    os.setxattr(cloud.mountpoint, FLUSH, b"1")
    wait_for(lambda: remote(cloud, "a")["state"] in ("failing", "stalled"),
             what="the full remote to fail")
    a, b = remote(cloud, "a"), remote(cloud, "b")
    assert "No space left on device" in str(a["reason"]), a
    left = a["pending_bytes"]
    assert isinstance(left, int) and 0 < left < 8 * MiB and left % MiB == 0, a
    assert left == 8 * MiB - a["bytes_sent"], a  # the one upload got that far
    wait_for(lambda: remote(cloud, "b")["pending"] == 0, what="b to be up to date")
    b = remote(cloud, "b")
    assert (b["state"], b["pending_bytes"]) == ("online", 0), b


def test_watch_redraws_on_a_terminal_until_ctrl_c(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, upload_delay="1h")
    cloud.mount()
    with terminal([*ONITUFS, "status", "--watch", str(cloud.mountpoint)]) as watch:
        watch.read_until(r"a\s+local\s+rw\s+online\s+0\s+0 B\s")
        (cloud.mountpoint / "new").write_bytes(os.urandom(MiB))
        watch.read_until(r"a\s+local\s+rw\s+online\s+1\s+1\.0 MiB\s")  # redrawn
        watch.send(b"\x03")  # Ctrl-C
        assert watch.wait() == 0
        assert "Traceback" not in watch.text and "KeyboardInterrupt" not in watch.text


def test_watch_as_json_lines_ends_at_the_unmount(cloud: Cloud) -> None:
    watch = subprocess.Popen([*ONITUFS, "status", "--watch", "--json", str(cloud.mountpoint)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # one object, on one line
        assert first["schema"] == 1 and first["pid"] == cloud.pid
        cloud.umount()
        _, errors = watch.communicate(timeout=20)
        assert watch.returncode == 0, errors
        assert errors == f"onitufs: {cloud.mountpoint}: unmounted\n"
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGKILL)
            watch.wait()


def test_mount_and_umount_on_a_terminal_show_progress(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")
    with terminal([*ONITUFS, "mount", str(cloud.mountpoint), str(cloud.config)]) as mount:
        assert mount.wait() == 0, mount.text
    assert is_mounted(cloud.mountpoint)
    cloud.pid = int(cloud.status()["pid"])
    content = os.urandom(2 * MiB)
    # A file still open for writing is uploaded once closed: umount waits, showing it.
    with open(cloud.mountpoint / "open", "wb") as writing:
        writing.write(content)
        writing.flush()
        with terminal([*ONITUFS, "umount", str(cloud.mountpoint)]) as umount:
            drawn = umount.read_until(r"b\s.*1 file left")
            assert re.search(r"a\s.*1 file left", drawn), drawn
            writing.close()
            assert umount.wait() == 0, umount.text
    assert not is_mounted(cloud.mountpoint)
    for path in cloud.remotes.values():
        assert (path / "open").read_bytes() == content
    # the display is taken away at the end: the last thing drawn erases its lines
    assert umount.raw.rstrip(b"\r\n").endswith((b"\x1b[2K", b"\x1b[?25h")), umount.raw[-80:]

    with terminal([*ONITUFS, "verify", str(cloud.config)]) as verify:
        assert verify.wait() == 0, verify.text
        assert "verify: 2 copies read back, 0 damaged" in verify.text
