"""The replicator gives way to people using the mount (Replicator._yield_to_foreground).

While the mount serves requests, changes in line wait: a git clone into three
remotes that replicated alongside it at full pace ran nine times slower. A change
alone in line with nothing running is no burst of files (a big file just closed):
it waits only for a moment of quiet, not the whole busy window, which took a
quarter of a 256 MiB upload's time over SSH. The figures are in `make bench`;
this pins the rule.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

from onitufs.config import Options, RemoteConfig
from onitufs.index import Index
from onitufs.remotes import Remote
from onitufs.replicator import ALONE_QUIET, BUSY_WINDOW, MAX_YIELD, Replicator

MiB = 1024**2


def test_changes_wait_while_the_mount_is_used(tmp_path: Path) -> None:
    index = Index(tmp_path / "cache", 2**30, MiB)
    try:
        config = RemoteConfig("a", "none", "rw", Options({}, "remotes.a", tmp_path))
        remote = Remote(config, index.remote_id("a"), types.ModuleType("none"))
        replicator = Replicator(index, [remote], MiB, 60.0)
        idle = 0.0
        replicator.foreground_idle = lambda: idle
        with index.write() as txn:
            replicator.schedule(txn, 5, 0.0, None)
        first = replicator._ready[remote.rid][0]

        def waits(running: int, pending: int, ready: tuple[float, int, int] = first) -> bool:
            return replicator._yield_to_foreground(ready, running, pending)

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
        overdue = (time.time() - MAX_YIELD - 1, first[1], first[2])
        assert not waits(0, 2, overdue)  # waited long enough: one at a time while busy
        assert waits(1, 2, overdue)
        replicator.start_flush(everything=True)
        assert not waits(1, 2)  # an unmount, or fsync, waits for nobody
    finally:
        index.close()
