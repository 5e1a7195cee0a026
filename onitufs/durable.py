"""A rename that survives a power loss: the new name's folder is synced after it (the
file's own content must be synced before)."""

from __future__ import annotations

import os
from pathlib import Path


def replace(source: Path, target: Path) -> None:
    """Rename source over target, in the same folder, and make the rename durable."""
    os.replace(source, target)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
