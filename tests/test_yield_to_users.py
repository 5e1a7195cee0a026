"""The replicator gives way to people using the mount (Replicator._yield_to_foreground,
Replicator._give_way).

While the mount serves requests, changes in line wait: a git clone into three
remotes that replicated alongside it at full pace ran nine times slower. A change
alone in line with nothing running is no burst of files (a big file just closed):
it waits only for a moment of quiet, not the whole busy window, which took a
quarter of a 256 MiB upload's time over SSH. An upload under way waits a moment
between two chunks, never long: it is never starved. The figures are in `make
bench`; this pins the rules.
"""

from __future__ import annotations

import os
import threading
import time

import trio

from onitufs.index import Index
from onitufs.plug import GIVE_WAY_LIMIT
from onitufs.remotes import Remote
from onitufs.replicator import ALONE_QUIET, BUSY_WINDOW, MAX_YIELD, Replicator

from .conftest import MakeCloud, MiB, wait_for


def test_changes_wait_while_the_mount_is_used(
        one_remote: tuple[Index, Remote, Replicator]) -> None:
    index, remote, replicator = one_remote
    idle = 0.0
    replicator.foreground_idle = lambda: idle
    with index.write() as txn:
        replicator.schedule(txn, 5, 0.0, None)
    first = replicator._ready[remote.rid][0]

    def waits(running: int, pending: int, ready: tuple[float, int, int] = first) -> bool:
        return replicator._yield_to_foreground(ready, running, pending,
                                               replicator._pending[remote.rid].get(ready[2]))

    idle = ALONE_QUIET / 2
    assert waits(0, 1)  # alone, but the mount is being used this very moment
    idle = ALONE_QUIET
    assert not waits(0, 1)  # alone, after a moment of quiet: it goes
    assert waits(0, 2)  # one of a burst: the mount is still busy
    assert waits(1, 2)
    idle = BUSY_WINDOW
    assert not waits(0, 2)  # the mount is idle
    assert not waits(1, 2)
    idle = 0.0
    overdue = (time.monotonic() - MAX_YIELD - 1, first[1], first[2])
    assert not waits(0, 2, overdue)  # waited long enough: one at a time while busy
    assert waits(1, 2, overdue)
    replicator.expedite(5)
    assert not waits(1, 2)  # an fsync waits for it: it waits for nobody
    with index.write() as txn:
        replicator.schedule(txn, 6, 0.0, None)
    flushed = next(entry for entry in replicator._ready[remote.rid] if entry[2] == 6)
    assert waits(1, 2, flushed)
    replicator.start_flush(everything=True)
    assert not waits(1, 2, flushed)  # an unmount waits for nobody


def test_an_upload_gives_way_between_chunks_but_never_long(
        one_remote: tuple[Index, Remote, Replicator]) -> None:
    index, remote, replicator = one_remote
    looks: list[float] = []
    idle = 0.0

    def foreground_idle() -> float:
        looks.append(idle)
        return idle

    replicator.foreground_idle = foreground_idle
    with index.write() as txn:
        replicator.schedule(txn, 5, 0.0, None)
    long_ago = time.monotonic() - 10  # when the upload began
    began = time.monotonic()
    trio.run(replicator._give_way, remote, 5, long_ago)
    assert GIVE_WAY_LIMIT <= time.monotonic() - began < 5  # waited, then went on anyway
    assert len(looks) > 1
    idle = BUSY_WINDOW
    looks.clear()
    trio.run(replicator._give_way, remote, 5, long_ago)
    assert looks == [BUSY_WINDOW]  # an idle mount: on at once
    # The last request came before the upload began (the file's own close): on at once.
    idle = BUSY_WINDOW / 2
    looks.clear()
    trio.run(replicator._give_way, remote, 5, time.monotonic() - idle / 2)
    assert looks == [BUSY_WINDOW / 2]
    idle = 0.0
    looks.clear()
    replicator.expedite(5)
    trio.run(replicator._give_way, remote, 5, long_ago)
    assert looks == []  # an fsync waits for it: no waiting
    with index.write() as txn:
        replicator.schedule(txn, 6, 0.0, None)
    replicator.start_flush()
    trio.run(replicator._give_way, remote, 6, long_ago)
    assert looks == []  # flushed (a writer waits for room, an unmount): no waiting


def test_a_long_upload_completes_while_the_mount_is_in_use(make_cloud: MakeCloud) -> None:
    """64 chunks, each waiting its moment while a program keeps the mount busy the whole
    time: every remote still gets the file, whole."""
    cloud = make_cloud(block_size="256 KiB")
    cloud.mount()
    content = os.urandom(16 * MiB)
    stop = threading.Event()

    def use_the_mount() -> None:
        while not stop.is_set():
            os.stat(cloud.mountpoint / "big")
            os.listdir(cloud.mountpoint)

    (cloud.mountpoint / "big").write_bytes(content)
    user = threading.Thread(target=use_the_mount)
    user.start()
    try:
        wait_for(lambda: all((remote / "big").exists() for remote in cloud.remotes.values()),
                 60, "the file on every remote while the mount is in use")
    finally:
        stop.set()
        user.join()
    for remote in cloud.remotes.values():
        assert (remote / "big").read_bytes() == content
    cloud.umount()
