"""One configured remote at run time: its driver thread, handler calls and health.

Handlers run on worker threads, at most `CONCURRENCY` at once per remote.
Every failure is counted here, so status and the choice of a replica to
read from see the same picture.

A remote whose folder is not the one onitufs synced with (identity.py) is
in an outage: every call fails at once until a listing passes again, and
nothing changes it before its first listing has passed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import lmdb
import trio

from .config import RemoteConfig
from .index import MirrorEntry, cannot_write
from .oneline import one_line
from .plug import Changed, ChangeSink, Metadata, Plug, RemoteUnavailable, Stopped

log = logging.getLogger(__name__)


class CallFailed(Exception):
    """A handler of a remote raised; the remote's health has recorded it. `done`: how many
    of the steps of a call_each returned before the one that raised."""

    done = 0


CONCURRENCY = 4
READY_TIMEOUT = 60.0
MAX_BACKOFF = 300.0
RATE_WINDOW = 10.0  # seconds of sending that the throughput of a remote is measured over
STEADY = 600.0  # seconds a driver runs before a stop no longer counts as one of a series
# A handler that only reads: a cancel may leave it to its thread and drop its answer, as
# nothing is noted of it (a read another remote answered first).
READS = frozenset({"get_chunk"})
# The handlers that change a remote: they wait until its folder is known to be the right one.
CHANGES = frozenset({"start_upload", "restart_upload", "upload_chunk", "end_upload", "delete_file",
                     "move_file", "make_dir", "make_symlink", "set_attrs"})


# A handler and its arguments, for call_each.
Step = tuple[str, tuple[Any, ...]]


def backoff(failures: int) -> float:
    """Seconds to wait before trying again after `failures` failures in a row."""
    return min(MAX_BACKOFF, 0.5 * 2.0 ** min(failures, 12))


@dataclass
class Throughput:
    """Bytes per second sent lately: what the last RATE_WINDOW seconds carried, over the
    part of them spent sending (a run of uploads that began 2 s ago is not averaged over 10)."""

    chunks: deque[tuple[float, int]] = field(default_factory=deque)  # (when sent, bytes)
    since: float = 0.0  # when the current run of sending began
    total: int = 0  # the bytes of `chunks`: small files' uploads put thousands there

    def add(self, size: int, started: float) -> None:
        now = time.monotonic()
        self._forget(now)
        if not self.chunks:
            self.since = started
        self.chunks.append((now, size))
        self.total += size

    def per_second(self) -> float:
        now = time.monotonic()
        self._forget(now)
        if not self.chunks:
            return 0.0
        span = now - max(now - RATE_WINDOW, self.since)
        return self.total / max(span, 1e-3)

    def _forget(self, now: float) -> None:
        while self.chunks and self.chunks[0][0] < now - RATE_WINDOW:
            self.total -= self.chunks.popleft()[1]


class ReadsUnderWay:
    """When each read (READS) of a remote under way began. Worker threads run them; the
    replicator asks for the oldest, to tell a read that hangs (a bad sector on the disk, a
    file its server stopped serving) while the remote answers its other calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began: dict[int, float] = {}
        self._keys = itertools.count()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            key = next(self._keys)
            self._began[key] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._began[key]

    def oldest(self) -> float | None:
        """When the read under way longest began (monotonic); None when none is."""
        with self._lock:
            return min(self._began.values(), default=None)


@dataclass
class Health:
    online: bool = True
    last_error: str | None = None
    change_error: str | None = None  # the last change's failure (CHANGES): why changes wait
    said: str | None = None  # the last failure logged (see Remote.failed)
    failures: int = 0  # consecutive
    done: int = 0
    bytes_sent: int = 0
    last_progress: float = field(default_factory=time.monotonic)  # a chunk or an item done
    throughput: Throughput = field(default_factory=Throughput)
    # How far the driver's own transfer is (Plug.progress): bytes done, of how many, when said.
    transfer: tuple[int, int | None, float] | None = None
    reads: ReadsUnderWay = field(default_factory=ReadsUnderWay)
    slow_until: float = 0.0  # a read found it slow to answer: others are asked first till then

    def sent(self, size: int, started: float) -> None:
        """A chunk of `size` bytes went out, its sending begun at `started` (monotonic)."""
        self.bytes_sent += size
        self.throughput.add(size, started)


@dataclass(eq=False)
class Remote:
    config: RemoteConfig
    rid: int
    driver: ModuleType
    plug: Plug | None = None
    folder: Path | None = None  # the driver's own folder for this remote (Plug.folder)
    health: Health = field(default_factory=Health)
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(CONCURRENCY))
    ready: trio.Event = field(default_factory=trio.Event)
    # Paths onitufs changed on this remote, and when (time.monotonic(), as a listing's
    # `started`): a listing begun before that time cannot tell what is there now. On the
    # wall clock, one set back while a listing ran made a file onitufs wrote there
    # meanwhile, which the listing missed, look deleted (test_clock_steps).
    touched: dict[str, float] = field(default_factory=dict)
    # Each folder above a path of `touched`, and the latest of their times below it: kept
    # as touches come, so that a listing finding thousands of folders gone (rm -rf there)
    # does not go through every touch for each.
    touched_within: dict[str, float] = field(default_factory=dict)
    # Paths a change onitufs sent is under way at (how many): a listing taken meanwhile
    # may show it done while nothing has noted it yet (touched comes once it returned).
    changing: Counter[str] = field(default_factory=Counter)
    # Why the remote is treated as unavailable although it answers (identity.py), and
    # whether a listing of it has passed since the start.
    outage: str | None = None
    trusted: trio.Event = field(default_factory=trio.Event)
    # Set once a first listing of this run has been taken in whole: what the remote holds
    # already (files compared with ours by content) is known before anything is sent.
    listed: trio.Event = field(default_factory=trio.Event)
    # Set by the daemon: checks the remote is still the right folder before a change.
    before_change: Callable[[], Awaitable[None]] | None = None
    # Set by the replicator: work that backed off goes at once when the remote is back.
    on_back: Callable[[], None] | None = None
    # The calls under way, each shielded from cancels (see _run_steps), and whether the
    # mount's end leaves them.
    calls: set[trio.CancelScope] = field(default_factory=set)
    leaving: bool = False

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
        """Run a handler on a worker thread; failures are recorded and re-raised. Changes
        wait until the remote's folder is known to be the right one."""
        return await self.call_each((handler, args))

    async def call_each(self, *steps: Step) -> Any:
        """Run handlers one after the other on one worker thread, as `call` runs one, and
        return what the last returned; the first that fails ends the run. A small file's
        whole upload goes so: one trip to a thread, not three, each of which the thread
        that serves the mount pays for."""
        handlers = [handler for handler, _ in steps]
        if self.outage is not None:
            raise self.refused(handlers[0])
        if CHANGES.intersection(handlers):
            await self.trusted.wait()
            if self.before_change is not None:
                await self.before_change()
            if self.outage is not None:
                raise self.refused(handlers[0])
        paths = Counter(arg.path for handler, args in steps if handler in CHANGES
                        for arg in args if isinstance(arg, Metadata))
        self.changing += paths
        try:
            return await self._run_steps(steps)
        finally:
            self.changing -= paths

    async def call_unguarded(self, handler: str, *args: Any) -> Any:
        """Run a handler whatever is known of the remote's identity (to learn it)."""
        return await self._run_steps(((handler, args),))

    async def _run_steps(self, steps: tuple[Step, ...]) -> Any:
        await self.ready.wait()
        plug = self.plug
        assert plug is not None
        if log.isEnabledFor(logging.DEBUG):
            for handler, args in steps:
                log.debug("remote %s: %s %s", self.name, handler,
                          " ".join(getattr(arg, "path", repr(arg)[:40]) for arg in args))
        reached = 0  # the step under way, for the failure's record

        def run() -> Any:
            nonlocal reached
            result = None
            for handler, args in steps:
                with self.health.reads.running() if handler in READS else nullcontext():
                    result = plug.call(handler, *args)
                reached += 1
            return result

        # A call's caller notes what it did when it returns: a cancel must not leave it
        # running meanwhile (a read aside, see READS), and the shield holds while the
        # mount lasts. At its end (leave_calls) a call still waiting on a server that
        # stopped answering is left to the process's exit, which the next start takes as
        # a crash.
        reads_only = all(handler in READS for handler, _ in steps)
        try:
            with trio.CancelScope(shield=not self.leaving and not reads_only) as guard:
                self.calls.add(guard)
                try:
                    result = await trio.to_thread.run_sync(run, limiter=self.limiter,
                                                           abandon_on_cancel=True)
                finally:
                    self.calls.discard(guard)
        except Exception as error:
            handler, args = steps[reached]
            failure = self._call_failed(handler, error, args)
            failure.done = reached
            raise failure from error
        self.succeeded()
        return result

    def refused(self, handler: str) -> CallFailed:
        """What a call fails with during an outage (counted, not logged: the outage was,
        once)."""
        self.health.failures += 1
        error = CallFailed(f"{self.name}: {handler}: {self.outage}")
        error.__cause__ = RemoteUnavailable(self.outage or "unavailable")
        return error

    def set_outage(self, reason: str | None) -> None:
        """The remote is (or, with None, no longer is) treated as unavailable."""
        reason = None if reason is None else one_line(reason)
        if reason == self.outage:
            return
        if reason is None:
            log.warning("remote %s: its folder is the right one again", self.name)
            self.outage = None
            self.succeeded()
            return
        log.error("remote %s: %s", self.name, reason)
        self.outage = reason
        self.health.online = False
        self.health.last_error = reason

    def _call_failed(self, handler: str, error: Exception,
                     args: tuple[Any, ...] = ()) -> CallFailed:
        """Record the failure; returns what the caller raises for it."""
        doing = one_line(" ".join([handler, *(arg.path for arg in args
                                              if isinstance(getattr(arg, "path", None), str))]))
        if handler in READS and isinstance(error, Changed):
            # The remote answered: its copy moved on since it was listed, and the caller
            # takes that version in. No failure of the remote: its status stays as it was,
            # and reads choose it as they did.
            log.info("remote %s: %s: %s", self.name, doing, error)
            return CallFailed(f"{self.name}: {handler}: Changed: {error}")
        self.failed(error, doing)
        if handler in CHANGES:  # not a read's: a file gone from under it says nothing of them
            self.health.change_error = self.health.last_error
        return CallFailed(f"{self.name}: {handler}: {self.health.last_error}")

    def racy(self, mtime_ns: int) -> bool:
        """Whether a token recorded now for a file of that time could hide a later change
        (one within the same tick of the remote's clock): see MirrorEntry.racy."""
        tick = self.plug.mtime_granularity if self.plug is not None else 0.0
        return tick > 0 and time.time_ns() - mtime_ns < 2 * tick * 10**9

    def entry_of(self, md: Metadata, rev: int, sha256: bytes | None = None,
                 asked: str | None = None) -> MirrorEntry:
        """What the remote holds, as it reported it or a handler left it (the permission
        bits read back: see onitufs-drivers(7)), standing for revision `rev` of ours, whose
        SHA-256 is `sha256` where known. `asked`: the attributes a handler was given
        (Metadata.attrs_key), kept as sent, so that a disk keeping bits of its own (exFAT)
        is not asked again and again."""
        return MirrorEntry(rev, md.revision, md.file_id, md.kind,
                           md.attrs_key() if asked is None else asked, md.changed_ns,
                           racy=md.kind == "file" and self.racy(md.mtime_ns),
                           sha256=sha256.hex() if sha256 is not None else None,
                           mode=md.mode)

    def touch(self, *paths: str) -> None:
        if self.plug is not None:
            self.plug.wrote(paths)
        now = time.monotonic()
        for path in paths:
            self._note(path, now)

    def taken_in(self, path: str) -> None:
        """A version of `path` is taken in now, not from a listing (a handler's answer: a
        read, a move or an upload found it): a listing begun before knows less of that
        path, and one applied before may have known more (a later delete, which the
        driver's reports then never tell again): the driver's next report looks at it."""
        if self.plug is not None:
            self.plug.wrote([path])
        self._note(path, time.monotonic())

    def _note(self, path: str, when: float) -> None:
        self.touched[path] = when
        while path:
            path = path.rpartition("/")[0]
            self.touched_within[path] = max(when, self.touched_within.get(path, when))

    def touched_since(self, path: str, started: float) -> bool:
        """Whether onitufs changed this path, or a folder above it, or took a version of it
        in, after `started`, or is changing it now."""
        while True:
            if self.touched.get(path, 0.0) >= started or path in self.changing:
                return True
            if not path:
                return False
            path = path.rpartition("/")[0]

    def touched_below(self, folder: str, started: float) -> bool:
        """Whether onitufs changed anything below `folder`, or took a version of it in,
        after `started`, or is changing something there now."""
        prefix = folder + "/"
        return self.touched_within.get(folder, 0.0) >= started \
            or any(path.startswith(prefix) for path in self.changing)

    def forget_touched_before(self, started: float) -> None:
        self.touched = {path: when for path, when in self.touched.items() if when >= started}
        self.touched_within = {path: when for path, when in self.touched_within.items()
                               if when >= started}

    def failed(self, error: BaseException, doing: str = "") -> None:
        """Count a failure; `doing` (the handler, and the files it was called for) goes
        into the log line, not into the last error that status shows."""
        health = self.health
        health.failures += 1
        health.last_error = one_line(f"{type(error).__name__}: {error}" if str(error)
                                     else type(error).__name__)
        if isinstance(error, RemoteUnavailable):
            health.online = False
        # Each new trouble once; the same one again (retried with backoff) only at --log-level
        # debug, an outage said between the two (the last error it sets) notwithstanding.
        log.log(logging.WARNING if health.last_error != health.said else logging.DEBUG,
                "remote %s: %s%s", self.name, f"{doing}: " if doing else "", health.last_error)
        health.said = health.last_error

    def moving(self, done: int | None, size: int | None) -> None:
        """A handler's transfer moved (Plug.progress, from its thread): no stall; how far,
        where the driver says."""
        self.health.last_progress = time.monotonic()
        if done is not None:
            self.health.transfer = (done, size, self.health.last_progress)

    def succeeded(self) -> None:
        health = self.health
        if self.outage is not None:
            return  # it answers, but it is not the folder onitufs synced with
        back = not health.online
        health.online = True
        health.failures = 0
        if back:
            log.info("remote %s: back online", self.name)
            if self.on_back is not None:
                self.on_back()

    def set_status(self, error: str | None) -> None:
        if error is None:
            self.succeeded()
        else:
            self.failed(RemoteUnavailable(error))

    async def run_driver(self, sink: ChangeSink, users_busy: Callable[[], bool]) -> None:
        """Run the driver's start(plug) on its own thread for the life of the mount;
        `users_busy` says whether people are using the mount (Plug.give_way)."""
        if self.folder is not None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.plug = Plug(self.name, self.config.options, sink, trio.lowlevel.current_trio_token(),
                         self.folder, self.moving, users_busy)
        plug = self.plug
        plug.writable = self.config.writable

        def start() -> None:
            # Stops in a row: a driver that stops soon after each start (its listing, say)
            # waits longer each time, whatever its calls did meanwhile (a call that
            # succeeds resets the remote's own count of failures), and says the same
            # reason again in one line, its traceback once.
            stops, said = 0, None
            while not plug.stopping.is_set():
                began = time.monotonic()
                try:
                    self.driver.start(plug)
                    return
                except Stopped:
                    return
                except Exception as error:
                    if plug.stopping.is_set():
                        # The mount is ending, and the process's exit closes what the driver
                        # still used (a library's finalizer): nothing was lost.
                        log.debug("remote %s: driver ended as the mount did: %s", self.name,
                                  error)
                        return
                    reason = one_line(str(error))
                    if isinstance(error, lmdb.Error):  # taking in what it reported: one line
                        reason = cannot_write(self.folder, error)  # its folder: the cache's disk
                    log.error("remote %s: driver stopped: %s", self.name, reason,
                              exc_info=reason != said and not isinstance(error, lmdb.Error))
                    said = reason
                    stops = stops + 1 if time.monotonic() - began < STEADY else 1
                    try:
                        plug.offline(f"driver stopped: {reason}")
                    except Stopped:
                        return
                    plug.stopping.wait(backoff(stops))

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
                plug.stop()

    def stop(self) -> None:
        if self.plug is not None:
            self.plug.stop()

    def leave_calls(self) -> None:
        """The mount's last flush is over: a cancel leaves the calls still under way (and
        any made from here on) instead of waiting for them."""
        self.leaving = True
        for guard in self.calls:
            guard.shield = False
