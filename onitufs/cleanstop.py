"""A record of the index file as a clean stop left it, so that the next open may skip the
structural check (lmdbcheck) of a file nothing has written to since.

As e2fsck skips a file system its last unmount marked clean, but with proof
rather than a flag: the record holds the file's device, inode number, size,
modification and change times. Nothing but the kernel sets a change time,
and any write, truncation, copy over it or restore from a backup changes
it, so a file that still matches is byte for byte the one onitufs synced
and closed. Damage the disk itself makes without a write (a sector gone
bad) is what this cannot see, as e2fsck cannot; the blocks' own checksums
still guard what is served.

Times have the granularity of the file system's clock (a few milliseconds,
a second on some): a write in the same tick as onitufs's last one would
leave the change time as it was. So a record only counts when the file
that holds it was written in a later tick than the index's change time;
`record` waits a few ticks for that, and leaves none if it cannot.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

NAME = "clean-stop"  # beside data.mdb
TICK_WAIT = 0.005  # seconds between two tries of a record in a later tick
TICK_TRIES = 10


def _fingerprint(found: os.stat_result) -> str:
    return (f"{found.st_dev} {found.st_ino} {found.st_size} {found.st_mtime_ns} "
            f"{found.st_ctime_ns}")


def record(data_file: Path) -> None:
    """Record data_file as it is now, after its last write and sync; nothing when that
    cannot be done in a later tick than the file's change (the next open checks then)."""
    stamp = data_file.with_name(NAME)
    temporary = data_file.with_name(NAME + ".new")
    try:
        found = os.stat(data_file)
        for _ in range(TICK_TRIES):
            temporary.write_text(_fingerprint(found) + "\n")
            if os.stat(temporary).st_mtime_ns > found.st_ctime_ns:
                os.replace(temporary, stamp)
                return
            time.sleep(TICK_WAIT)
    except OSError:
        pass  # a full disk or a read-only folder: the next open checks
    for leftover in (temporary, stamp):
        with contextlib.suppress(OSError):
            leftover.unlink()


def unchanged(data_file: Path) -> bool:
    """Whether data_file is as `record` found it, the record made in a later tick."""
    stamp = data_file.with_name(NAME)
    try:
        recorded = stamp.read_text()
        written = os.stat(stamp).st_mtime_ns
        found = os.stat(data_file)
    except (OSError, UnicodeDecodeError):
        return False
    return recorded == _fingerprint(found) + "\n" and written > found.st_ctime_ns
