"""A remote's folder on exFAT, as on most USB disks: a folder that ignores case.

exFAT answers to `a.txt` with the `A.txt` it holds, and holds one of the two. The kernel
here has no exFAT of its own, so exfat-fuse serves it (whose inode numbers also change as
the kernel forgets and looks names up again): a loop device over an image file.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .conftest import Cloud


@contextlib.contextmanager
def exfat_disk(cloud: Cloud | None, folder: Path, size: int = 32 << 20) -> Iterator[Path]:
    """`folder` (a remote's, emptied) on an exFAT file system of its own; the cloud's mount
    and daemons (if any) go first, then the file system and its loop device, whatever
    happens."""
    image = folder.with_name(folder.name + ".exfat")
    with image.open("wb") as file:
        file.truncate(size)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        for entry in folder.iterdir():  # the onitufs marker a fresh cloud leaves, if any
            entry.unlink()
        subprocess.run(["mount.exfat-fuse", "-o", "allow_other", device, str(folder)],
                       check=True, capture_output=True)
        try:
            yield folder
        finally:
            if cloud is not None:
                cloud.cleanup()
            subprocess.run(["umount", "--lazy", str(folder)], check=False)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink()
