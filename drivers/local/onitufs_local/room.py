"""Room made on a full disk, or a read-only disk made writable, seen within seconds.

onitufs tries what a remote refused again with backoff, minutes apart after many failures
in a row. A local disk refuses for want of room (ENOSPC, EDQUOT) or of write access (EROFS),
and either can end at any moment: files deleted, a quota raised, the disk remounted
writable. Once a change was refused so, the disk is looked at (statvfs, one system call)
every LOOK_EVERY seconds until it has room again (ROOM more than at the refusal, or free
inodes where it had none) or is writable, and then plug.retry_now() ends the wait. A
refusal arms the look once: room that another program takes again does not make a loop,
and a disk that refuses nothing is not looked at.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

from onitufs.plug import Plug, Stopped

LOOK_EVERY = 2.0  # seconds between looks at a disk that refused a change
ROOM = 1 << 20  # bytes freed since the refusal that count as room made
REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
F = TypeVar("F", bound=Callable[..., Any])


class DiskState(NamedTuple):
    free: int  # bytes an unprivileged writer may use
    free_inodes: int
    read_only: bool


def disk_state(path: str) -> DiskState | None:
    """What the disk at `path` has room for; None where it cannot be looked at (away)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskState(st.f_bavail * st.f_frsize, st.f_favail, bool(st.f_flag & os.ST_RDONLY))


def relieved(refused: DiskState, now: DiskState) -> bool:
    """Whether a disk in state `now` may take what it refused in state `refused`."""
    if now.read_only:
        return False
    return refused.read_only or now.free >= refused.free + ROOM \
        or (refused.free_inodes == 0 and now.free_inodes > 0)


class RoomWatch:
    """Looks at the disk after a refusal for want of room or write access; thread-safe."""

    def __init__(self, plug: Plug, root: str) -> None:
        self._plug = plug
        self._root = root
        self._lock = threading.Lock()
        self._refused: DiskState | None = None  # the disk's state at the last refusal
        self._thread: threading.Thread | None = None

    def watching(self, handler: F) -> F:
        """`handler`, whose refusals for want of room or write access arm the look."""
        @functools.wraps(handler)
        def change(*args: Any) -> Any:
            try:
                return handler(*args)
            except OSError as error:
                if error.errno in REFUSALS:
                    self._arm()
                raise
        return cast(F, change)

    def _arm(self) -> None:
        state = disk_state(self._root)
        if state is None:
            return  # the disk is away: its return is the listing's to see
        with self._lock:
            self._refused = state
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"{self._plug.name}-room")
                self._thread.start()

    def _run(self) -> None:
        """Look until the disk is relieved (then tell the core) or the mount ends."""
        while not self._plug.stopping.wait(LOOK_EVERY):
            with self._lock:
                refused = self._refused
            now = disk_state(self._root)
            if refused is None or now is None or not relieved(refused, now):
                continue
            with self._lock:
                if self._refused is not refused:
                    continue  # refused anew meanwhile: room is counted from then
                self._refused = self._thread = None
            with contextlib.suppress(Stopped):  # (the mount ends: nothing waits)
                self._plug.retry_now()
            return
