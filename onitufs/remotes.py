"""One configured remote at run time: its driver thread, handler calls and health.

Handlers run on worker threads, at most `CONCURRENCY` at once per remote.
Every failure is counted here, so status, backoff and the choice of a
replica to read from all see the same picture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import trio

from .config import RemoteConfig
from .plug import ChangeSink, Plug, RemoteUnavailable, Stopped

log = logging.getLogger(__name__)


class CallFailed(Exception):
    """A handler of a remote raised; the remote's health has recorded it."""
CONCURRENCY = 4
READY_TIMEOUT = 60.0
MAX_BACKOFF = 60.0


@dataclass
class Health:
    online: bool = True
    last_error: str | None = None
    failures: int = 0  # consecutive
    done: int = 0
    bytes_sent: int = 0
    last_progress: float = field(default_factory=time.monotonic)  # a chunk or an item done

    def backoff(self) -> float:
        return min(MAX_BACKOFF, 0.5 * 2.0 ** min(self.failures, 10))


@dataclass(eq=False)
class Remote:
    config: RemoteConfig
    rid: int
    driver: ModuleType
    plug: Plug | None = None
    health: Health = field(default_factory=Health)
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(CONCURRENCY))
    ready: trio.Event = field(default_factory=trio.Event)
    # Paths onitufs changed on this remote, and when: a listing begun before
    # that time cannot tell what is there now.
    touched: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    async def has(self, handler: str) -> bool:
        """Whether the driver offers this handler: known once it has registered them,
        so this waits for that (after a restart, work is queued before the driver is).
        A driver that never said so has not said what it lacks either: that is a
        failure to retry, not a "no" that would leave work undone for good."""
        await self.ready.wait()
        assert self.plug is not None
        if not self.plug.wait_ready(0):
            error = RemoteUnavailable("the driver has not registered its handlers")
            raise self._call_failed(handler, error) from error
        return self.plug.has(handler)

    async def call(self, handler: str, *args: Any) -> Any:
        """Run a handler on a worker thread; failures are recorded and re-raised."""
        await self.ready.wait()
        assert self.plug is not None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("remote %s: %s %s", self.name, handler,
                      " ".join(getattr(arg, "path", repr(arg)[:40]) for arg in args))
        try:
            result = await trio.to_thread.run_sync(self.plug.call, handler, *args,
                                                   limiter=self.limiter)
        except Exception as error:
            raise self._call_failed(handler, error) from error
        self.succeeded()
        return result

    def _call_failed(self, handler: str, error: Exception) -> CallFailed:
        """Record the failure; returns what the caller raises for it."""
        self.failed(error)
        return CallFailed(f"{self.name}: {handler}: {self.health.last_error}")

    def touch(self, *paths: str) -> None:
        if self.plug is not None:
            self.plug.writes += 1
        now = time.time()
        for path in paths:
            self.touched[path] = now

    def touched_since(self, path: str, started: float) -> bool:
        """Whether onitufs changed this path, or a folder above it, after `started`."""
        while True:
            if self.touched.get(path, 0.0) >= started:
                return True
            if not path:
                return False
            path = path.rpartition("/")[0]

    def forget_touched_before(self, started: float) -> None:
        self.touched = {path: when for path, when in self.touched.items() if when >= started}

    def failed(self, error: BaseException) -> None:
        health = self.health
        health.failures += 1
        health.last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if isinstance(error, RemoteUnavailable):
            health.online = False
        log.warning("remote %s: %s", self.name, health.last_error)

    def succeeded(self) -> None:
        health = self.health
        if not health.online:
            log.info("remote %s: back online", self.name)
        health.online = True
        health.failures = 0

    def set_status(self, error: str | None) -> None:
        if error is None:
            self.succeeded()
        else:
            self.failed(RemoteUnavailable(error))

    async def run_driver(self, sink: ChangeSink) -> None:
        """Run the driver's start(plug) on its own thread for the life of the mount."""
        self.plug = Plug(self.name, self.config.options, sink, trio.lowlevel.current_trio_token())
        plug = self.plug

        def start() -> None:
            while not plug.stopping.is_set():
                try:
                    self.driver.start(plug)
                    return
                except Stopped:
                    return
                except Exception as error:
                    log.exception("remote %s: driver stopped: %s", self.name, error)
                    try:
                        plug.offline(f"driver stopped: {error}")
                    except Stopped:
                        return
                    plug.stopping.wait(self.health.backoff())

        async def wait_ready() -> None:
            ok = await trio.to_thread.run_sync(plug.wait_ready, READY_TIMEOUT,
                                               abandon_on_cancel=True)
            if not ok:
                self.set_status("driver did not register its handlers in time")
            self.ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_ready)
            try:
                await trio.to_thread.run_sync(start, abandon_on_cancel=True)
            finally:
                plug.stopping.set()

    def stop(self) -> None:
        if self.plug is not None:
            self.plug.stopping.set()
