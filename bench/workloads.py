"""The four measured workloads, run in a folder of the filesystem under test.

Each returns the seconds it took and checks what it read, so a filesystem
that answers fast but wrong fails instead of winning. Before every read the
kernel's page cache for the file is dropped (POSIX_FADV_DONTNEED), so the
read is served by the filesystem itself: for a FUSE filesystem, by its daemon.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

MIB = 1024 * 1024
CHUNK = MIB  # the size of each write and read of the sequential file, as dd bs=1M
SMALL = 4096  # the size of each small file
BIG_NAME = "big.bin"
SMALL_DIR = "small"
_HEADER = struct.Struct(">Q")
FULL_CHECK_EVERY = 16  # blocks of the big file compared in full; the others by their header


class WrongData(Exception):
    """A file read back differs from what was written."""


def _pattern(size: int) -> bytes:
    return os.urandom(size)


class Data:
    """The content written: random bytes, each block stamped with its number."""

    def __init__(self) -> None:
        self.block = _pattern(CHUNK)
        self.small = _pattern(SMALL)

    def small_file(self, number: int) -> bytes:
        return _HEADER.pack(number) + self.small[_HEADER.size:]


def small_path(root: Path, number: int) -> str:
    return str(root / SMALL_DIR / f"f{number:06d}")


def drop_page_cache(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def sequential_write(root: Path, data: Data, size_mib: int) -> tuple[float, float]:
    """Write size_mib MiB in 1 MiB writes, then fsync: seconds of the writes, and of the fsync.

    The writes alone are what dd reports; the fsync is where a filesystem that keeps
    its data on a disk pays for durability, which a filesystem in memory never does."""
    buffer = bytearray(data.block)
    fd = os.open(root / BIG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for number in range(size_mib):
            buffer[:_HEADER.size] = _HEADER.pack(number)
            written = os.write(fd, buffer)
            if written != CHUNK:
                raise OSError(f"short write: {written} of {CHUNK} bytes")
        written_at = time.perf_counter()
        os.fsync(fd)
        return written_at - start, time.perf_counter() - written_at
    finally:
        os.close(fd)


def sequential_read(root: Path, data: Data, size_mib: int) -> float:
    """Read the file of sequential_write back in 1 MiB reads, page cache dropped first."""
    fd = os.open(root / BIG_NAME, os.O_RDONLY)
    try:
        drop_page_cache(fd)
        start = time.perf_counter()
        blocks = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            if chunk[:_HEADER.size] != _HEADER.pack(blocks) or len(chunk) != CHUNK or (
                    blocks % FULL_CHECK_EVERY == 0 and chunk[_HEADER.size:] != data.block[_HEADER.size:]):
                raise WrongData(f"{BIG_NAME}: block {blocks} differs from what was written")
            blocks += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    if blocks != size_mib:
        raise WrongData(f"{BIG_NAME}: read {blocks} MiB back, wrote {size_mib}")
    return elapsed


def create_files(root: Path, data: Data, count: int) -> float:
    """Create `count` files of 4 KiB, each with open, one write, close; seconds."""
    (root / SMALL_DIR).mkdir()
    contents = [data.small_file(number) for number in range(count)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter()
    for number, content in enumerate(contents):
        fd = os.open(small_path(root, number), flags, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
    return time.perf_counter() - start


def read_files(root: Path, data: Data, count: int) -> float:
    """Read back every file of create_files (open, drop its page cache, read, close); seconds."""
    paths = [small_path(root, number) for number in range(count)]
    wrong = []
    start = time.perf_counter()
    for number, path in enumerate(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            drop_page_cache(fd)
            content = os.read(fd, 2 * SMALL)
        finally:
            os.close(fd)
        if len(content) != SMALL or content[:_HEADER.size] != _HEADER.pack(number):
            wrong.append(number)
    elapsed = time.perf_counter() - start
    wrong += [number for number in range(0, count, 97) if
              Path(paths[number]).read_bytes() != data.small_file(number)]
    if wrong:
        raise WrongData(f"{len(wrong)} of the {count} small files differ from what was written "
                        f"(first: {Path(paths[wrong[0]]).name})")
    return elapsed
