"""Bit rot on a remote: bytes of a file changed on its disk, under its file system.

A write through the file system moves the file's change time (ctime), which onitufs
takes for an edit made there; rot moves nothing. So the remote's folder gets an ext4
file system of its own, in an image on a loop device, and the bytes are changed in the
image, where the kernel says the file's extents lie (FIEMAP). The same disk serves for a
remote frozen (fsfreeze), mounted anew on another loop device, or as a power loss left it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1  # the file's dirty pages written first, so every extent has a place
# extents whose bytes are not plainly at their physical offset
NOT_IN_PLACE = 0x2 | 0x4 | 0x8 | 0x200 | 0x800  # unknown, delalloc, encoded, inline, unwritten
_HEAD = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, flags
MOST_EXTENTS = 64


def extents(path: Path) -> list[tuple[int, int, int]]:
    """(logical, physical, length) of each extent of the file, in bytes."""
    buffer = bytearray(_HEAD.pack(0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, MOST_EXTENTS, 0)
                       + bytes(_EXTENT.size * MOST_EXTENTS))
    with path.open("rb") as file:
        fcntl.ioctl(file.fileno(), FS_IOC_FIEMAP, buffer)
    mapped = _HEAD.unpack_from(buffer)[3]
    found = []
    for number in range(mapped):
        logical, physical, length, flags = _EXTENT.unpack_from(
            buffer, _HEAD.size + number * _EXTENT.size)
        assert not flags & NOT_IN_PLACE, f"{path}: an extent not in place (flags {flags:#x})"
        found.append((logical, physical, length))
    return found


class LoopDisk:
    """The ext4 file system at `folder`, in the image `image`."""

    def __init__(self, folder: Path, image: Path) -> None:
        self.folder, self.image = folder, image

    def rot(self, path: Path, offset: int, data: bytes) -> None:
        """The file's bytes at `offset` become `data` on the disk; its times do not move."""
        before = path.stat()
        changed = 0
        with self.image.open("r+b") as image:
            for logical, physical, length in extents(path):
                start, end = max(offset, logical), min(offset + len(data), logical + length)
                if start < end:
                    changed += os.pwrite(image.fileno(), data[start - offset:end - offset],
                                         physical + start - logical)
            os.fsync(image.fileno())
        assert changed == len(data), f"{path}: only {changed} of {len(data)} bytes on the disk"
        fd = os.open(path, os.O_RDONLY)
        try:  # what the kernel kept of the file is read from the disk again
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        after = path.stat()
        assert (after.st_ctime_ns, after.st_mtime_ns, after.st_size) == \
            (before.st_ctime_ns, before.st_mtime_ns, before.st_size)


    def kept(self) -> Path:
        """A copy of what the disk holds now: what the loop device wrote so far, not the
        pages still dirty in memory."""
        copy = self.image.with_name(f"{self.image.name}.{time.monotonic_ns()}")
        shutil.copyfile(self.image, copy)
        return copy

    def power_loss(self, kept: Path | None = None) -> None:
        """The disk as a power loss leaves it: what the kernel had not written to it yet is
        gone (by default now; or when `kept` was made, where nothing was made durable
        since), and the journal is replayed at the next mount."""
        left = kept or self.kept()
        # (what is dirty goes to the old image, which stays while a daemon has files open)
        subprocess.run(["umount", "--lazy", str(self.folder)], check=True)
        os.replace(left, self.image)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.folder)], check=True)

    def replug(self) -> None:
        """Unmounted, and mounted again on another loop device (as a USB disk plugged in
        elsewhere gets another /dev/sdX): another device number, the same inode numbers."""
        device = subprocess.run(["findmnt", "--noheadings", "--output", "SOURCE",
                                 str(self.folder)], check=True, capture_output=True,
                                text=True).stdout.strip()
        subprocess.run(["umount", str(self.folder)], check=True)
        placeholder = self.image.with_name(self.image.name + ".placeholder")
        placeholder.write_bytes(bytes(4096))
        try:
            # The device it had is held meanwhile, once the unmount let it go (where
            # another test took it first, that one holds it): the mount takes another.
            held = False
            for _ in range(20):
                held = subprocess.run(["losetup", device, str(placeholder)],
                                      capture_output=True).returncode == 0
                if held:
                    break
                time.sleep(0.1)
            try:
                subprocess.run(["mount", "-o", "loop", str(self.image), str(self.folder)],
                               check=True)
            finally:
                if held:
                    subprocess.run(["losetup", "--detach", device], check=True)
        finally:
            placeholder.unlink()


@contextlib.contextmanager
def loop_disk(folder: Path, size: int = 64 << 20) -> Iterator[LoopDisk]:
    """An ext4 file system of its own at `folder` (an empty folder), empty (no lost+found);
    unmounted after the block, lazily, so that a daemon left by a failed test does not keep
    it."""
    image = folder.with_name(folder.name + ".img")
    with image.open("wb") as file:
        file.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True)
    try:
        (folder / "lost+found").rmdir()
        yield LoopDisk(folder, image)
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
        image.unlink()
