"""For drivers: room made on a remote's full disk, or its read-only disk made writable,
seen within seconds.

onitufs tries what a remote refused again with backoff, minutes apart after many failures
in a row. A disk refuses for want of room or of write access, and either can end at any
moment: files deleted, a quota raised, the disk remounted writable. Once a change was
refused so, the driver's look at the disk (statvfs, or what the remote has for it) is
taken every LOOK_EVERY seconds (or as often as the driver says) until the disk has room
again (ROOM more than at the refusal and what a refused upload had left to write, or free
inodes where it had none) or is writable, and then plug.retry_now() ends the wait. A
refusal arms the look once: room that another program takes again makes no loop, nor does
the room an aborted upload gives back, and a disk that refuses nothing is not looked at.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

from .lookout import Lookout
from .plug import Metadata, Plug, RemoteUnavailable

LOOK_EVERY = 2.0  # seconds between looks at a disk that refused a change
ROOM = 1 << 20  # bytes freed since the refusal that count as room made
REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # a local disk's, for want of either
F = TypeVar("F", bound=Callable[..., Any])


class DiskState(NamedTuple):
    free: int  # bytes an unprivileged writer may use
    free_inodes: int
    read_only: bool


def local_state(path: str) -> DiskState | None:
    """The state of the disk of this machine that holds `path` (statvfs); None where it
    cannot be looked at (away)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskState(st.f_bavail * st.f_frsize, st.f_favail, bool(st.f_flag & os.ST_RDONLY))


def refused_locally(error: BaseException) -> bool:
    """Whether a local disk's `error` is a refusal for want of room or write access."""
    return isinstance(error, OSError) and error.errno in REFUSALS


def short(state: DiskState) -> bool:
    """Whether a disk in `state` is read-only or has about no room left: what a refusal
    that does not say why (SFTP's "Failure") was for."""
    return state.read_only or state.free < ROOM or state.free_inodes == 0


class Refusal(NamedTuple):
    state: DiskState  # the disk's, just after the refusal
    # The bytes the refused upload had left to write. The room it took until then comes
    # back when its partial upload is removed (an upload whose last writes failed is
    # aborted): that is not room made.
    needs: int


def relieved(refused: Refusal, now: DiskState) -> bool:
    """Whether a disk in state `now` may take what it refused."""
    if now.read_only:
        return False
    return refused.state.read_only \
        or now.free >= max(refused.state.free + ROOM, refused.needs) \
        or (refused.state.free_inodes == 0 and now.free_inodes > 0)


UPLOADING = {"start_upload": False, "restart_upload": True, "upload_chunk": True,
             "end_upload": False}  # whether the second argument is the offset reached


def needs(handler: str, args: tuple[Any, ...]) -> int:
    """The bytes a refused call had left to write: an upload's, from `args`."""
    if handler not in UPLOADING or not args or not isinstance(args[0], Metadata):
        return 0
    size = args[0].size or 0
    offset = args[1] if UPLOADING[handler] and len(args) > 1 else 0
    return max(0, size - offset) if isinstance(offset, int) else size


class RoomWatch:
    """Looks at a remote's disk after a refusal for want of room or write access;
    thread-safe. `state`: the disk's state now, None where it cannot be looked at."""

    def __init__(self, plug: Plug, state: Callable[[], DiskState | None],
                 every: float = LOOK_EVERY) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._refused: Refusal | None = None  # the last one
        self._lookout = Lookout(plug, "room", every, self._relieved)

    def watching(self, refused: Callable[[BaseException], bool],
                 lacking: Callable[[DiskState], bool] = lambda state: True
                 ) -> Callable[[F], F]:
        """A handler's decorator: a failure `refused` takes for a refusal for want of room
        or write access arms the look, if the disk's state just after is `lacking` (where
        the failure does not say why). A remote that is away (RemoteUnavailable) is not
        looked at: its return is for the listing."""
        def decorate(handler: F) -> F:
            @functools.wraps(handler)
            def change(*args: Any) -> Any:
                try:
                    return handler(*args)
                except RemoteUnavailable:
                    raise
                except Exception as error:
                    if refused(error):
                        with contextlib.suppress(Exception):  # (the failure says more)
                            state = self._state()
                            if state is not None and lacking(state):
                                self._arm(Refusal(state, needs(handler.__name__, args)))
                    raise
            return cast(F, change)
        return decorate

    def _arm(self, refusal: Refusal) -> None:
        with self._lock:
            self._refused = refusal
        self._lookout.arm()

    def _relieved(self) -> bool:
        """Whether the disk may take what it last refused (the look is then disarmed)."""
        with self._lock:
            refused = self._refused
        now = self._state()
        if refused is None or now is None or not relieved(refused, now):
            return False
        with self._lock:
            if self._refused is not refused:
                return False  # refused anew meanwhile: room is counted from then
            self._refused = None
        return True
