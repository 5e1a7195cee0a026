"""Gives the cache's disk back: at a clean stop, the index file is rewritten without its
free pages when they are most of it.

LMDB never shrinks its file. The pages deleted blocks leave are reused, but a block needs
a run of contiguous pages, and as small files' blocks of every size come and go the free
space fragments and the file keeps growing past what it holds; a file larger than the
cache, written and then uploaded, leaves it that large for good. A compacting copy
(mdb_env_copy2 with MDB_CP_COMPACT) writes only the pages in use.

The copy is made beside the file, made durable, then renamed over it: a crash
at any point leaves the old file or the whole new one, and a copy a crash left half made
is removed at the next open. It needs room on the disk for what is in use; without it, or
if the copy fails, the file stays as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lmdb

from . import durable

log = logging.getLogger(__name__)

COPY = "data.mdb.compacting"  # beside data.mdb: the copy while it is made; + "-lock", its lock
MIN_FREE = 64 * 1024**2  # free pages worth a copy, when at least what is in use
RESERVE = 8 * 1024**2  # left free on the disk after the copy, for whatever else writes there
MIB = 1024**2


def discard_leftover(folder: Path) -> None:
    """Remove a copy that a crash or a failure left in the index's folder (one that cannot
    be removed only keeps the next copy from being made, which says so)."""
    for name in (COPY, COPY + "-lock"):
        with contextlib.suppress(OSError):
            (folder / name).unlink()


def compacted_copy(env: lmdb.Environment, folder: Path, in_use: Callable[[], int],
                   mark: Callable[[Path], None]) -> Path | None:
    """A compacted copy of the index file in `folder`, made when its free pages are at
    least what it uses and MIN_FREE, then marked by `mark` (called with the copy's path:
    the copy's transaction numbers start again at 1); None when not worth it, or not
    possible (said in the log: a disk failing here leaves the file as it is)."""
    try:
        return _copy(env, folder, in_use(), mark)
    except (OSError, lmdb.Error) as error:
        log.warning("the cache file %s was not compacted: %s", folder / "data.mdb", error)
        discard_leftover(folder)
        return None


def _copy(env: lmdb.Environment, folder: Path, in_use: int,
          mark: Callable[[Path], None]) -> Path | None:
    found = os.stat(folder / "data.mdb")
    free = found.st_size - in_use
    if free < max(in_use, MIN_FREE):
        return None
    disk = os.statvfs(folder)
    if disk.f_bavail * disk.f_frsize < in_use + RESERVE:
        log.warning("the cache file %s holds %d MiB of free pages, but its disk lacks the "
                    "%d MiB a compacting copy needs: left as it is", folder / "data.mdb",
                    free // MIB, (in_use + RESERVE) // MIB)
        return None
    log.info("the cache file %s holds %d MiB of free pages: copying the %d MiB in use to "
             "compact it", folder / "data.mdb", free // MIB, in_use // MIB)
    target = folder / COPY  # none left: the open of the index removed any
    copy = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, found.st_mode & 0o777)
    try:
        env.copyfd(copy, compact=True)
    finally:
        os.close(copy)
    mark(target)
    return target


def swap_in(copy: Path, data_file: Path) -> None:
    """Put the copy in place of data_file, which nothing may have open, durably."""
    try:
        sizes = os.stat(data_file).st_size // MIB, os.stat(copy).st_size // MIB
        durable.replace(copy, data_file)
    except OSError as error:
        log.warning("putting the compacted cache file %s in place failed: %s", data_file, error)
    else:
        log.info("the cache file %s was compacted from %d MiB to %d MiB", data_file, *sizes)
    discard_leftover(data_file.parent)
