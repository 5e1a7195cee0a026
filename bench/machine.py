"""Steady memory while the bench runs: the VM's free-page reporting paused, free memory backed.

A VM whose balloon device reports free pages (virtio-balloon free page
reporting, as this VM's has) hands memory that has been free for a moment
back to the host, and the next program to touch such a page waits for the
host to back it again. Which program pays depends on what ran
before it, not on the program: measured on this 2-core VM, onitufs's writes
into its cache ran at 162-183 MiB/s with reporting on and 400-447 MiB/s with
it off, and a 256 MiB upload to a loopback sshd at 176-245 MiB/s against
265-324 MiB/s, with sshd's CPU time per GiB doubled by copies into pages the
host had taken back. So, as pyperf's `system tune` pins the CPU's frequency,
the bench raises page_reporting_order above the largest block the page
allocator keeps (nothing is reported), touches the free memory once so that
the host backs all of it, and puts the order back at the end, also after an
error or Ctrl-C. `--as-is` measures the machine as it is.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator
from pathlib import Path

from .targets import GIB

REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
BUDDYINFO = Path("/proc/buddyinfo")
MEMINFO = Path("/proc/meminfo")
SPARE = GIB  # free memory left untouched, for everything else running meanwhile


def beyond_largest_block() -> int:
    """An order no free block has: one past the largest the page allocator keeps
    (/proc/buddyinfo has a column per order)."""
    line = BUDDYINFO.read_text().splitlines()[0]
    return len(line.split(maxsplit=4)[4].split())


def free_bytes() -> int:
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{MEMINFO}: no MemFree line")


def touch_free_memory() -> int:
    """Fault in all free memory but SPARE, once, and let it go; the bytes touched."""
    size = max(0, free_bytes() - SPARE) // GIB * GIB
    held = []
    try:
        for _ in range(size // GIB):
            held.append(mmap.mmap(-1, GIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                                  | mmap.MAP_POPULATE))
    finally:
        for block in held:
            block.close()
    return size


@contextlib.contextmanager
def steady_memory(as_is: bool) -> Iterator[str]:
    """Free-page reporting paused inside, and restored after; yields a line for the report
    saying what was done."""
    if as_is:
        yield "memory: the machine as it is (--as-is)"
        return
    try:
        before = REPORTING_ORDER.read_text().strip()
    except FileNotFoundError:
        yield "memory: this machine reports no free pages to a host"
        return
    try:
        REPORTING_ORDER.write_text(str(beyond_largest_block()))
    except OSError as error:
        yield f"memory: free-page reporting left on, figures may vary ({REPORTING_ORDER}: {error})"
        return
    try:
        start = time.monotonic()
        touched = touch_free_memory()
        yield (f"memory: free-page reporting paused for the run, {touched / GIB:.0f} GiB of free "
               f"memory touched in {time.monotonic() - start:.0f} s (see bench/machine.py)")
    finally:
        REPORTING_ORDER.write_text(before)
