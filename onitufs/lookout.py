"""For drivers: after a remote refused for a reason that can end at any moment (a full
disk given room, a token replaced by `onitufs auth`), a look every few seconds until it
has ended, and then what waits out a backoff in the core is tried again at once
(Plug.retry_now) rather than minutes later.

A refusal arms the lookout once; it looks only while armed, so a remote that refuses
nothing is never looked at.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from .plug import Plug, Stopped

log = logging.getLogger(__name__)


class Lookout:
    """Calls `ended` every `every` seconds once armed, until it answers True or the mount
    ends; thread-safe. `what` names the thread."""

    def __init__(self, plug: Plug, what: str, every: float, ended: Callable[[], bool]) -> None:
        self._plug, self._what, self._every, self._ended = plug, what, every, ended
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"{self._plug.name}-{self._what}")
                self._thread.start()

    def _run(self) -> None:
        ended = False
        while not ended and not self._plug.stopping.wait(self._every):
            ended = self._look()
        with self._lock:
            self._thread = None
        if ended:
            with contextlib.suppress(Stopped):  # (the mount ends: nothing waits)
                self._plug.retry_now()

    def _look(self) -> bool:
        try:
            return self._ended()
        except Exception as error:  # (the remote is away: looked at again next time)
            log.debug("remote %s: cannot look at its %s: %s", self._plug.name, self._what,
                      error)
            return False
