"""The folder a local remote's changes go to: the one that held the remote's marker.

An unplugged disk leaves its empty mount point at the remote's path. The core reads the
marker again before it changes a remote, but only when its last look is older than a
second, and a change made just after the disk went would land in the mount point's own
folder. Recorded as made on the remote, it would read as deleted there once the disk is
back, and that delete would travel to the mount and every other remote.

So the driver pins the root folder it changes (listing.folder_id) together with the
marker it held, and before and after each change that makes or deletes an entry makes sure
the path leads there. A path that leads elsewhere is taken if it is the same folder through
another mount (the disk plugged in again), else only if that folder holds a marker, the same
one (the disk back under another device number) or any where none was pinned (a disk absent
when the remote started). Once onitufs knows the remote's marker (Plug.marked), a folder
without one is never taken, the one pinned included: a remote started while its disk was
away pinned the empty mount point. Only the marker's own upload may go to such a folder,
one that holds something: the core writes it again where a person deleted it, having found
there what the remote held, which an empty mount point never holds. The core writing the
marker pins the folder it went to: it writes one only where it judged the listing to be the
remote's. A folder and its marker are read through the folder held open (held_folder): read
by path, a disk plugged in between the two would have the empty mount point pinned with the
disk's marker.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

from onitufs.plug import MARKER, MARKER_MAX, TEMP_SUFFIX, RemoteUnavailable

from .listing import FolderId, held_folder


class Pin:
    """The root folder changes go to, and the marker it held; thread-safe."""

    def __init__(self, root: str, marked: Callable[[], bool]) -> None:
        self.root = root
        self._marked = marked  # whether onitufs knows the remote's marker (Plug.marked)
        self._lock = threading.Lock()
        self._folder: FolderId | None = None
        self._marker: bytes | None = None

    @contextlib.contextmanager
    def _look(self) -> Iterator[tuple[str, FolderId]]:
        """The folder the root's path leads to, held (held_folder)."""
        try:
            with held_folder(self.root) as found:
                yield found
        except (FileNotFoundError, NotADirectoryError):
            raise RemoteUnavailable(f"{self.root} is missing (unmounted disk?)") from None

    @staticmethod
    def _read_marker(held: str) -> bytes | None:
        try:
            with open(os.path.join(held, MARKER), "rb") as file:
                return file.read(MARKER_MAX)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    @staticmethod
    def _holds_something(held: str) -> bool:
        """Whether the folder holds an entry besides uploads' temp files."""
        with os.scandir(held) as entries:
            return any(not entry.name.endswith(TEMP_SUFFIX) for entry in entries)

    def confirm(self, for_marker: bool = False) -> FolderId:
        """Before a change (`for_marker`: the marker's own upload): RemoteUnavailable unless
        the root's path leads to the pinned folder, or to one that may be pinned instead
        (the first call pins it); returns the folder, for unchanged() after the change."""
        with self._look() as (held, folder), self._lock:
            if folder == self._folder and self._marker is not None:
                return folder  # every change: one look at the root, no read
            marker = self._read_marker(held)
            if marker is None and self._marked():
                if for_marker and self._holds_something(held):
                    self._folder, self._marker = folder, None  # (marker_written reads it)
                    return folder
                # (the mount point of a disk absent when the remote started, pinned then)
                raise RemoteUnavailable(f"{self.root} holds no marker {MARKER}, and the "
                                        "remote has one (unmounted disk?)")
            if self._folder is None or folder[:2] == self._folder[:2]:
                # (the same folder, maybe through another mount: the disk plugged in again,
                # under the same device number, marked or not)
                self._folder, self._marker = folder, marker
                return folder
            if marker is None or (self._marker is not None and marker != self._marker):
                raise RemoteUnavailable(
                    f"{self.root} is no longer the folder that held this remote's marker "
                    f"{MARKER} (unmounted disk?)")
            self._folder, self._marker = folder, marker
            return folder

    def unchanged(self, since: FolderId) -> None:
        """After a change begun where confirm() found `since`: RemoteUnavailable unless the
        root's path still leads there. A disk unplugged and plugged in again during the
        change is another mount, with the same marker: what the change did by path may
        have gone to the mount point's own folder meanwhile."""
        with self._look() as (_, folder):
            if folder != since:
                raise RemoteUnavailable(f"{self.root} led elsewhere during a change "
                                        "(unmounted disk?)")

    def marker_written(self) -> None:
        """The core wrote the marker: the folder it went to is the remote's."""
        with self._look() as (held, folder), self._lock:
            self._folder, self._marker = folder, self._read_marker(held)
