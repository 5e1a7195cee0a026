"""Unmount waits for what was just written, however long the writing took.

`head -c 4G /dev/zero > MNT/z.bin` took a minute, and `onitufs umount` right after gave
up at once ("a: 1 changes still queued (None)", exit 2) with one healthy local remote:
the file was queued for upload when it was made, its upload waited for the writer all
that minute, and the replicator took that minute without progress for a stall (60 s).
The test makes the stall time short ([sync] stall) and the copy last longer than it.
"""

from __future__ import annotations

import os
import time

from onitufs.index import Index
from onitufs.remotes import Remote
from onitufs.replicator import Replicator

from .conftest import MakeCloud, MiB, run

GiB = 1024**3
# The copy lasts longer than a stall, whatever the speed of the machine: it pauses (for
# less than a second at a time, never long enough for an idle file to get a revision)
# where it is ahead of this pace.
STALL = 4.0
COPY_SECONDS = STALL + 3


def test_umount_at_once_after_a_long_copy_waits_for_it(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, cache_size="512 MiB", upload_delay="2s",
                       stall=f"{STALL}s")  # a file twice the cache, written longer than a stall
    cloud.mount()
    zeros = bytes(MiB)
    started = time.monotonic()
    with open(cloud.mountpoint / "z.bin", "wb") as copy:  # head -c 1G /dev/zero, paced
        for written in range(1, 1024 + 1):
            copy.write(zeros)
            ahead = started + COPY_SECONDS * written / 1024 - time.monotonic()
            if ahead > 0:
                time.sleep(min(ahead, 0.5))
    assert time.monotonic() - started >= STALL
    result = run("umount", cloud.mountpoint, check=False)
    assert result.returncode == 0, result.stderr
    assert "still queued" not in result.stderr
    held = cloud.remotes["a"] / "z.bin"
    assert held.stat().st_size == GiB
    fd = os.open(held, os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, GiB - MiB) == zeros
    finally:
        os.close(fd)


def test_a_change_that_is_not_due_yet_is_no_stall(
        one_remote: tuple[Index, Remote, Replicator]) -> None:
    """Nothing is asked of a remote before a change settles (upload_delay) or is flushed:
    that time is not a stall, so umount does not give up on a change it just flushed."""
    index, remote, replicator = one_remote
    stall = replicator.stall
    with index.write() as txn:
        replicator.schedule(txn, 5, 600.0, None)  # upload_delay = "10 min"
    remote.health.last_progress = time.monotonic() - 2 * stall
    assert not replicator.stalled(remote)  # due in 10 minutes
    replicator.start_flush(everything=True)  # the unmount: due now
    assert not replicator.stalled(remote)
    replicator._flushed_at -= 2 * stall  # flushed long ago, nothing done since
    assert replicator.stalled(remote)
    assert "nothing done there for" in replicator.stall_reason(remote)
