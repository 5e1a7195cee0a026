"""The driver API: Metadata, the Plug and its handlers, and driver discovery.

A driver is a module found through the entry-point group ``onitufs.drivers``.
It has a ``start(plug)`` function that registers handlers with
``@plug.handler()`` and then watches its remote for the life of the driver,
reporting what changed there through ``plug.update_file``,
``plug.delete_file``, ``plug.move_file`` or ``plug.report_tree``. It may have
an ``OPTIONS`` tuple naming the keys of its config table, which the core
checks every table against at every mount (with its own ``driver`` and
``mode``), so that a misspelt key stops the mount instead of passing
silently; a driver without one gets its table unchecked. It may have a
``check(options)`` function that validates its config table before the
mount starts, and a ``folder(options)`` function that names the folder on this
machine where the remote keeps its files, if it keeps them in one, so that the
core can refuse a remote at the mount point, inside it or around it, or in
another remote's folder. See man/onitufs-drivers.7.

Handlers run on worker threads and must be thread-safe; every method of the
Plug is safe to call from any thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import logging
import os
import posixpath
import re
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, AnyStr, Literal, Protocol, TypeVar

import trio

from . import durable
from .config import Config, ConfigError, Options

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onitufs.drivers"
HANDLERS = (
    "get_chunk",
    "start_upload",
    "restart_upload",
    "upload_chunk",
    "end_upload",
    "abort_upload",
    "delete_file",
    "move_file",
    "make_dir",
    "make_symlink",
    "set_attrs",
)
Kind = Literal["file", "dir", "symlink"]
TEMP_SUFFIX = ".onitufs-part"  # uploads in progress on a remote; listings leave them out
# The remote's identity marker at its root (see onitufs/identity.py): listed like any
# file, written and read through the handlers, never shown in the mount.
MARKER = ".onitufs-remote"
MARKER_MAX = 4096  # bytes of a marker read: onitufs's own are far shorter
# Plug.give_way (and the replicator between two chunks of an upload): the longest one call
# waits while people use the mount, and how often it looks again.
GIVE_WAY_LIMIT = 0.05
GIVE_WAY_STEP = 0.01


@dataclass
class Metadata:
    """What onitufs and a driver tell each other about one file on a remote.

    `path` is relative to the remote's root, '/'-separated, never starting
    with '/'; names that are not UTF-8 arrive surrogate-escaped like
    os.fsdecode. `revision` is the remote's own token for this version of
    the file (an mtime, an etag, a rev id): onitufs compares tokens, never
    interprets them. `file_id` is a name-independent identity where the remote
    has one, so a rename can be told from a delete plus a create. `changed_ns` is
    when anything about a file last changed (a POSIX ctime) where the remote keeps
    that: a file whose revision stays while it moves is read and compared with what
    onitufs holds, so that content rewritten in place with its time set back is still
    seen. `xattrs` are the file's extended attributes of the user namespace, for
    remotes that keep them. `extra` is the driver's own state for one transfer (a temp
    name, a session id); onitufs saves it with the transfer offset so restart_upload
    finds it.
    """

    path: str
    kind: Kind = "file"
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    revision: str | None = None
    file_id: str | None = None
    changed_ns: int | None = None
    target: str | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)  # the user namespace
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> Metadata:
        return dataclasses.replace(self, **{"extra": dict(self.extra), **changes})

    def attrs_key(self) -> str:
        """A short fingerprint of what set_attrs sets (a folder's time changes by itself)."""
        parts = [self.kind, str(self.mode), "" if self.kind == "dir" else str(self.mtime_ns)]
        parts += [f"{name}={value.hex()}" for name, value in sorted(self.xattrs.items())]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


HIDDEN_NAME_KEPT = 160  # bytes of a name its hidden names keep: room for the rest in NAME_MAX


def hidden_beside(path: str, tag: str) -> str:
    """A temporary name in path's folder that no listing reports (TEMP_SUFFIX)."""
    folder, _, name = path.rpartition("/")
    short = os.fsdecode(os.fsencode(name)[:HIDDEN_NAME_KEPT])
    hidden = f".{short}.{tag}{TEMP_SUFFIX}"
    return f"{folder}/{hidden}" if folder else hidden


def upload_path(md: Metadata, at: str | None = None) -> str:
    """Where a driver writes an upload until it is complete: beside `at`, where the driver
    stores md.path (md.path itself by default), named after md.extra["upload"], so that
    after a crash restart_upload and abort_upload find it."""
    return hidden_beside(md.path if at is None else at, str(md.extra["upload"]))


ASIDE = "deleting-"  # the aside names' tag: ASIDE, the version's, "-", the mount's
ASIDE_OWNER = "aside-owner"  # the file in Plug.folder holding this mount's part of them


def _version_tag(revision: str | None, file_id: str | None) -> str:
    """The part of an aside name (Plug.aside_path) that names the version set aside."""
    return hashlib.sha256(f"{revision}\0{file_id}".encode()).hexdigest()[:12]


def _aside_parts(name: str) -> tuple[str, str, str] | None:
    """For an aside name (aside_path): the name it was made beside (cut to the length
    hidden_beside keeps), the tag of the version, and the mount that made it."""
    if not name.endswith(TEMP_SUFFIX):
        return None
    before, dot, tag = name.removesuffix(TEMP_SUFFIX).rpartition(".")
    if not (dot and before.startswith(".") and len(before) > 1 and tag.startswith(ASIDE)):
        return None
    version, _, owner = tag.removeprefix(ASIDE).partition("-")
    return before[1:], version, owner


def left_aside_by_another(name: str, revision: str, file_id: str | None) -> str | None:
    """For a hidden name in a folder (TEMP_SUFFIX) that is an aside name (aside_path)
    where a file of `revision` and `file_id` now is, though the name was made for
    another version: the name that version had (cut to the length hidden_beside keeps).
    A move aside took a version another machine saved between a look and the move, and
    a crash came before the check put it back (or a third save took the name): it is not
    onitufs's to delete. None for any other name, the version set aside there among them,
    by this mount or another."""
    parts = _aside_parts(name)
    return None if parts is None or parts[1] == _version_tag(revision, file_id) else parts[0]


def set_aside_by(name: str, owner: str) -> str | None:
    """For an aside name that the mount whose Plug.aside_owner is `owner` made: the name
    it was made beside, where that was not cut short; "" where it was; None for any other
    name."""
    parts = _aside_parts(name)
    if parts is None or parts[2] != owner:
        return None
    return parts[0] if len(os.fsencode(parts[0])) < HIDDEN_NAME_KEPT else ""


class SweepWarnings:
    """What a driver's sweep of aside names (set_aside_by) cannot finish: said once for
    each name, at debug level after, since each walk tries it again."""

    def __init__(self, plug: Plug, log: logging.Logger) -> None:
        self._plug = plug
        self._log = log
        self._said: set[str] = set()

    def warn(self, stored: str, message: str, *args: object) -> None:
        """Log `message` about the stored path `stored` (its first %s), then `args`."""
        level = logging.DEBUG if stored in self._said else logging.WARNING
        self._said.add(stored)
        self._log.log(level, "remote %s: " + message, self._plug.name, stored, *args)


def at_or_below(path: AnyStr, folder: AnyStr) -> bool:
    """Whether a '/'-separated path (str or bytes) is the folder or inside it."""
    return path == folder or path.startswith(posixpath.join(folder, folder[:0]))


def ancestors(path: str) -> list[str]:
    """The folders above a path, the nearest last ("a/b/c": "a", "a/b")."""
    parts = path.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts))]


def within(path: str, tops: Set[str]) -> bool:
    """Whether the path is one of `tops` or below one: in a part whose scope they are."""
    return path in tops or any(up in tops for up in ancestors(path))


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths that are not below another of them: the scope of a report_part."""
    given = set(paths)
    return sorted(path for path in given if not any(up in given for up in ancestors(path)))


# Read costs, as git-annex counts them
CHEAP = 100
EXPENSIVE = 200


class DriverError(Exception):
    """A handler failed; onitufs retries it later with backoff."""


# For drivers that write an upload into a local file (the remote's own, or a spool)


class UploadFiles:
    """The descriptors of the local files that running uploads write into: each opened by
    its upload's first handler and kept, under a key naming the upload, until it ends."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()  # handlers of different uploads run in parallel

    def fd(self, key: str, open_file: Callable[[], int]) -> int:
        """The upload's descriptor, from open_file() the first time (outside the lock: an
        open on a slow disk must not hold up the other uploads)."""
        with self._lock:
            fd = self._fds.get(key)
        if fd is not None:
            return fd
        fd = open_file()
        with self._lock:
            kept = self._fds.setdefault(key, fd)
        if kept != fd:  # another handler of this upload opened it meanwhile
            os.close(fd)
        return kept

    def take(self, key: str) -> int | None:
        """The upload's descriptor, forgotten here: the caller closes it."""
        with self._lock:
            return self._fds.pop(key, None)

    def close(self, key: str) -> None:
        fd = self.take(key)
        if fd is not None:
            os.close(fd)


def write_chunk(fd: int, offset: int, chunk: bytes) -> None:
    """upload_chunk into the file `fd`: all of `chunk` at `offset` (a disk filling up
    writes part, then fails with ENOSPC)."""
    view, done = memoryview(chunk), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def resume_at(fd: int, offset: int, md: Metadata) -> None:
    """restart_upload into the file `fd`: what was written past `offset` goes; a file
    shorter than that cannot be resumed."""
    if os.fstat(fd).st_size < offset:
        raise DriverError(f"{md.path}: the partial upload is shorter than {offset} bytes")
    os.ftruncate(fd, offset)


class Conflict(DriverError):
    """The remote's file is not the one onitufs expected to replace (someone wrote there).

    `current` describes what is there now, so the core can keep both versions.
    """

    def __init__(self, message: str, current: Metadata) -> None:
        super().__init__(message)
        self.current = current


class Changed(DriverError):
    """get_chunk, move_file or delete_file found another version of the file than the one
    asked for (the remote changed it since it last reported it).

    `current` describes what is there now, so the core takes it in at once rather
    than at the driver's next report.
    """

    def __init__(self, message: str, current: Metadata) -> None:
        super().__init__(message)
        self.current = current


class RemoteUnavailable(DriverError):
    """The remote cannot be reached at all right now (offline, unmounted, refused)."""


class Stopped(Exception):
    """Raised in a driver thread by Plug methods once the mount is shutting down."""


class ListingNeeded(Exception):
    """Raised by plug.report_part when the core takes no part of a listing now (it is
    judging the remote's folder, or the part names the remote's marker): report the
    whole tree with report_tree instead."""


class ChangeSink(Protocol):
    """The core's side of the Plug: where reported changes are applied."""

    async def update_file(self, remote: str, metadata: Metadata) -> None: ...
    async def delete_file(self, remote: str, path: str) -> None: ...
    async def move_file(self, remote: str, old_path: str, new: Metadata) -> None: ...
    async def report_tree(self, remote: str, entries: list[Metadata], started: float) -> bool: ...
    async def report_part(self, remote: str, entries: list[Metadata], scope: list[str],
                          started: float) -> bool: ...
    async def set_status(self, remote: str, error: str | None) -> None: ...
    async def retry_now(self, remote: str) -> None: ...


F = TypeVar("F", bound=Callable[..., Any])


class Plug:
    """The link between one configured remote and the core.

    One Plug exists per remote in the config, so a driver module can serve
    several remotes at once: keep per-remote state in the closure of
    ``start``, never in module globals.
    """

    def __init__(self, name: str, options: Options, sink: ChangeSink,
                 trio_token: trio.lowlevel.TrioToken, folder: Path | None = None,
                 moving: Callable[[int | None, int | None], None] = lambda done, size: None,
                 users_busy: Callable[[], bool] = lambda: False) -> None:
        self.name = name
        self.options = options
        self._moving = moving
        self._users_busy = users_busy  # whether people are using the mount right now
        # A folder on this machine for the driver's own files of this remote (its state,
        # temporary files), inside the cache folder: it lasts as long as the cache does.
        # None where onitufs gives none (a driver run outside a mount).
        self.folder = folder
        self.aside_owner = self._kept_aside_owner()  # see aside_path
        self.stopping = threading.Event()
        self._look = threading.Event()  # look_again asked for a listing, or the mount ends
        self._sink = sink
        self._token = trio_token
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._ready = threading.Event()
        # How many changes onitufs has made on the remote. A driver that skips a listing
        # equal to the last one it reported must not skip it when this moved since that
        # listing began: what onitufs changed may have been changed back there meanwhile.
        self.writes = 0
        self._written: set[str] | None = None  # see written_paths (None: never asked)
        self._written_lock = threading.Lock()
        # How coarse the remote's modification times are, in seconds (SFTP's: 1). A file
        # changed within that long of a token onitufs recorded may keep the token: onitufs
        # then checks its content once the time has passed.
        self.mtime_granularity = 0.0
        # Whether the remote keeps holes: an upload that leaves a range unwritten (no
        # upload_chunk for it) gets zeros there, as a POSIX file written with pwrite past a
        # gap, or extended by end_upload to md.size, does. Then onitufs skips chunks of
        # zeros and the remote's copy stays sparse. A driver whose uploads need every byte
        # (a session that counts them) leaves it False and gets the zeros sent.
        self.keeps_holes = False
        # What reading from the remote costs, on git-annex's scale (100: a disk here, 200:
        # across a network, 1000: very slow or priced per request): of the remotes that
        # hold a revision and work, onitufs reads from the cheapest.
        self.cost = EXPENSIVE
        # Set by onitufs once it knows the remote's marker (MARKER, at its root): from then
        # on a folder without one is not the remote's (an unplugged disk's mount point), and
        # a driver that checks where its changes go (the local driver's pin) refuses it.
        self.marked = False
        # Whether onitufs may change the remote (its mode in the config has "w"), set
        # before start(plug): a remote the user made read-only is never written, and a
        # driver's own tidying there (what a fault left of its moves aside, content
        # nothing uses any more) waits.
        self.writable = True

    def handler(self, name: str | None = None) -> Callable[[F], F]:
        """Register the decorated function as the handler of that name."""

        def register(function: F) -> F:
            handler_name = name or function.__name__
            if handler_name not in HANDLERS:
                raise ValueError(f"unknown handler {handler_name!r}; known: {', '.join(HANDLERS)}")
            self._handlers[handler_name] = function
            return function

        return register

    def has(self, name: str) -> bool:
        return name in self._handlers

    def withdraw(self, name: str) -> None:
        """Take a handler back, from any thread: the remote cannot do what it does after
        all, as the handler found by trying (a disk that holds no symbolic links). The
        core asks no more, and what it would have made there stays in the index (and on
        the other remotes) only."""
        self._handlers.pop(name, None)

    def call(self, name: str, *args: Any) -> Any:
        """Run a handler on the calling thread (the core calls this from its workers)."""
        return self._handlers[name](*args)

    def ready(self) -> None:
        """Say that every handler is registered; the core waits for this before using them."""
        self._ready.set()

    def progress(self, done: int | None = None, size: int | None = None) -> None:
        """A handler's transfer is moving where the core cannot see it (a store that runs
        long after the last chunk): the remote is not stalled. Call it from the handler,
        as often as its transfer moves; it costs nothing. `done` bytes of `size`, where the
        driver knows them (a program's PROGRESS), show in `onitufs status`."""
        self._moving(done, size)

    def give_way(self) -> None:
        """Call it between two steps of long background work (a whole listing of a big
        tree): while people are using the mount, it waits a moment, GIVE_WAY_LIMIT at
        most, so that the work takes the time they leave rather than theirs. On two
        cores, the first listings of three remotes of 100,000 files after a remount
        made a `find -ls` in the mount twice as slow. The work still moves meanwhile,
        at a slower pace; stopping the mount ends the wait."""
        deadline = time.monotonic() + GIVE_WAY_LIMIT
        while self._users_busy():
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.wait(min(GIVE_WAY_STEP, left)):
                return

    def stop(self) -> None:
        """End the mount's use of the driver (the core calls it): plug.stopping is set and
        every wait of the driver's (plug.stopping.wait, wait_to_list) ends at once."""
        self.stopping.set()
        self._look.set()

    def look_again(self) -> None:
        """Say, from a handler, that the remote is not as the driver last reported it and
        nothing else will say so soon: a read found the file gone, or another version,
        where no event of the remote named the change. The driver's next listing then
        comes now and whole (wait_to_list, asked_to_look), not when its interval ends:
        until it is reported, every read of that path fails."""
        self._look.set()

    def wrote(self, paths: Iterable[str]) -> None:
        """For the core: it changed these paths on the remote, or took a version of them
        from a handler's answer (writes, written_paths)."""
        with self._written_lock:
            self.writes += 1
            if self._written is not None:
                self._written.update(paths)

    def written_paths(self) -> set[str]:
        """The paths onitufs changed on the remote (uploaded, deleted, moved from or to,
        made, set attributes of), or took a version of from a handler's answer (see
        Remote.taken_in), since the last call; the first call starts the record.
        For a driver that reports, as parts of its listing, what its polls found
        different: these paths go into the part too, since a change onitufs made that was
        undone there before the next poll leaves nothing different, yet onitufs must learn
        of it (the rule of plug.writes, for parts)."""
        with self._written_lock:
            taken, self._written = self._written or set(), set()
        return taken

    def asked_to_look(self) -> bool:
        """Whether look_again was called since this last answered True: the driver takes
        the request, and lists the whole remote next."""
        if self._look.is_set() and not self.stopping.is_set():
            self._look.clear()
            return True
        return False

    def wait_to_list(self, seconds: float) -> bool:
        """Wait until the driver's next listing is due: `seconds`, less if look_again
        asks for one (then True: list the whole remote) or the mount ends (then False)."""
        self._look.wait(seconds)
        return self.asked_to_look()

    def aside_path(self, md: Metadata, at: str | None = None) -> str:
        """Where a driver that cannot delete or replace on a condition moves the file it
        deletes or replaces, to see that what it moved is md's version before it goes: a
        rename takes exactly one file, where a check and then a delete could delete a
        version another machine saved in between. Named after the version, so that an
        operation cut short finds it again, and after this mount (aside_owner), so that
        two mounts taking the same version aside at once never share the name: one
        would remove what the other moved there. Beside `at`, where the driver stores
        md.path (md.path itself by default)."""
        return hidden_beside(md.path if at is None else at,
                             f"{ASIDE}{_version_tag(md.revision, md.file_id)}-{self.aside_owner}")

    def _kept_aside_owner(self) -> str:
        """This mount's part of its aside names: random, kept in the driver's folder (which
        lasts as long as the cache does), so that a mount after a crash finds what it left
        aside. Read or made as the driver starts, before a full disk could stop it being
        written when a delete needs it; this Plug's own where there is no folder (a driver
        run outside a mount) or it cannot be kept."""
        if self.folder is None:
            return secrets.token_hex(4)
        kept = self.folder / ASIDE_OWNER
        try:
            with contextlib.suppress(FileNotFoundError):
                owner = kept.read_text().strip()
                if re.fullmatch("[0-9a-f]{8}", owner):
                    return owner
            owner = secrets.token_hex(4)
            durable.write_atomically(kept, f"{owner}\n".encode())
            return owner
        except OSError as error:
            log.warning("remote %s: %s cannot be kept (%s): a delete or replace cut short by "
                        "a crash before the next mount leaves its aside file behind",
                        self.name, kept, error)
            return secrets.token_hex(4)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # What the driver reports. Each call returns once the core has applied it.

    def update_file(self, metadata: Metadata) -> None:
        """A file or directory was created or changed on the remote."""
        self._to_core(self._sink.update_file, self.name, metadata)

    def delete_file(self, path: str) -> None:
        """A file or directory disappeared from the remote."""
        self._to_core(self._sink.delete_file, self.name, path)

    def move_file(self, old_path: str, new: Metadata) -> None:
        """A file or directory was renamed on the remote."""
        self._to_core(self._sink.move_file, self.name, old_path, new)

    def report_tree(self, entries: Iterable[Metadata], started: float) -> bool:
        """A complete listing of the remote; the core works out what changed since the last one.

        `started` is the time.monotonic() at which the listing began: it says nothing
        of paths onitufs itself changed on the remote after that. Returns False
        when part of the listing was too old to use for that reason: then send
        the next listing even if it looks the same. Only ever report a listing
        that is complete: a partial one would read as deletions.
        """
        return bool(self._to_core(self._sink.report_tree, self.name, list(entries),
                                  listing_began(started)))

    def report_part(self, entries: Iterable[Metadata], scope: Iterable[str],
                    started: float) -> bool:
        """Part of a listing, for a driver that learns which paths changed (the kernel's
        events): what the remote holds at each path of `scope` and below it, all of it. A
        path there that `entries` lacks is gone; nothing outside is looked at, so the
        core's work grows with the part, not with the tree. Only after a report_tree the
        core took (it returned True); returns as report_tree does, and then the paths of
        a part not taken go again with the next. Raises ListingNeeded when the core wants
        the whole tree instead."""
        return bool(self._to_core(self._sink.report_part, self.name, list(entries),
                                  list(scope), listing_began(started)))

    def online(self) -> None:
        self._to_core(self._sink.set_status, self.name, None)

    def offline(self, reason: str) -> None:
        """The remote cannot be reached; reads and writes queue until it is back."""
        self._to_core(self._sink.set_status, self.name, reason)

    def retry_now(self) -> None:
        """Something on the remote changed that may let what it refused through (room made
        on a full disk, a read-only one made writable): what waits out its backoff after
        failures, up to minutes, is tried at once."""
        self._to_core(self._sink.retry_now, self.name)

    def _to_core(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.stopping.is_set():
            raise Stopped()
        try:
            return trio.from_thread.run(function, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise Stopped() from None


def listing_began(started: float) -> float:
    """A listing's `started`, once it is sure to be a time.monotonic(). A time.time() in
    its place (decades past any uptime) would make every listing look later than what
    onitufs changed on the remote, and a file it had just written there look deleted."""
    if started > time.monotonic():
        raise ValueError(f"a listing's started ({started:.0f}) is later than time.monotonic() "
                         f"now: take it with time.monotonic(), not time.time()")
    return started


class Reports:
    """The reports of a driver that learns which paths changed (a list of changes, or what
    differs between two polls): the whole listing until the core took one, and again
    when the driver or the core asks for one (ListingNeeded); otherwise the paths that
    changed go as a part, with those of a part the core did not take, which go again."""

    def __init__(self, plug: Plug) -> None:
        self.plug = plug
        self.taken = False  # whether the core took the last whole listing
        self._again: set[str] = set()

    @property
    def owed(self) -> bool:
        """Whether a report the core did not take waits to go again (soon, then)."""
        return bool(self._again) or not self.taken

    def send(self, started: float, changed: Iterable[str] | None,
             listing: Callable[[], Iterable[Metadata]],
             part: Callable[[set[str]], tuple[list[Metadata], list[str]]]) -> None:
        """Report what a look begun at `started` found: `changed`, the paths that differ
        (None: report the whole listing); `listing` gives the whole, `part` the entries at
        and below a scope's paths and its outermost paths (see report_part)."""
        if changed is not None and self.taken:
            scope = set(changed) | self._again
            if not scope:
                return
            entries, tops = part(scope)
            try:
                self._again = set() if self.plug.report_part(entries, tops, started) else scope
                return
            except ListingNeeded:
                pass
        self.taken, self._again = self.plug.report_tree(listing(), started), set()


# Only %25 and %80 to %FF are escapes: no UTF-8 name holds those bytes alone, so names
# made on a UTF-8 remote keep their meaning (%41 stays %41, never A).
_ESCAPE = re.compile(r"%(?=25|[89A-Fa-f][0-9A-Fa-f])|[\udc80-\udcff]")
_UNESCAPE = re.compile(r"%(25|[89A-Fa-f][0-9A-Fa-f])")


def to_utf8(path: str) -> str:
    """The path as names a UTF-8-only remote can store, for drivers of such remotes.

    A name in the mount may hold any byte but '/' and NUL; the bytes that are
    not UTF-8 (surrogate-escaped here, as os.fsdecode does) become %XX (80 to
    FF), and a '%' that would read as such an escape becomes %25. Everything
    else, '%' included, stays as it is. from_utf8 is the way back.
    """
    return _ESCAPE.sub(lambda m: "%25" if m.group() == "%" else f"%{ord(m.group()) - 0xDC00:02X}",
                       path)


def from_utf8(path: str) -> str:
    """The path in the mount of a name to_utf8 made."""
    def unescape(match: re.Match[str]) -> str:
        value = int(match.group(1), 16)
        return chr(0xDC00 + value) if value >= 0x80 else chr(value)

    return _UNESCAPE.sub(unescape, path)


@functools.cache
def registered_drivers() -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of the drivers installed, by name, found once per process (the
    daemon has them from the command it forks from): each search reads the metadata of
    every installed package, and a mount loads each remote's driver twice (the command's
    check, then the Mount)."""
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_driver(name: str, where: str) -> ModuleType:
    """The driver module registered under `name` in the entry-point group."""
    entry = registered_drivers().get(name)
    if entry is None:
        raise ConfigError(f"{where}.driver: no driver named '{name}' is installed "
                          f"(installed: {', '.join(sorted(registered_drivers())) or 'none'}); "
                          f"the drivers of onitufs come with it, a third-party one is a package "
                          f"of its own: {PIP} install PACKAGE (see onitufs-drivers(7))")
    try:
        module = entry.load()
    except ModuleNotFoundError as missing:
        raise ConfigError(f"{where}: {missing_library(entry, missing)}") from None
    if not isinstance(module, ModuleType) or not callable(getattr(module, "start", None)):
        raise ConfigError(f"{where}: driver '{name}' ({entry.value}) has no start(plug)")
    return module


# The pip of the Python that runs onitufs: what it installs, this onitufs finds, wherever
# onitufs was installed (a virtualenv, pipx's, make install's own), unlike a bare `pip`.
PIP = f"{shlex.quote(sys.executable)} -m pip"


def missing_library(entry: importlib.metadata.EntryPoint, missing: ModuleNotFoundError) -> str:
    """What a driver whose import failed for want of a module needs, and the command that
    adds it: the extra named after the driver if its distribution declares one (its library
    is optional there), the module itself otherwise."""
    package = (missing.name or "").partition(".")[0]
    if not package or package == entry.module.partition(".")[0]:
        return f"driver '{entry.name}' ({entry.value}) cannot be imported: {missing}"
    command = f"{PIP} install {shlex.quote(package)}"
    if entry.dist is not None:
        extras = entry.dist.metadata.get_all("Provides-Extra") or []
        if normalized(entry.name) in map(normalized, extras):
            extra = f"{entry.dist.name}[{normalized(entry.name)}]"
            command = f"{PIP} install {shlex.quote(extra)}"
    return (f"the driver '{entry.name}' needs the Python package '{package}', which is not "
            f"installed: {command}")


def normalized(name: str) -> str:
    """A distribution's or extra's name as packaging compares them (PEP 503, PEP 685)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# The keys of every remote's table that the core reads itself (config.py), whatever the driver.
CORE_KEYS = ("driver", "mode")


def load_drivers(config: Config) -> dict[str, ModuleType]:
    """Every remote's driver module, by remote name, each remote's table checked against
    the keys its driver declares (see check_keys): what each mount does first."""
    drivers = {}
    for remote in config.remotes:
        module = load_driver(remote.driver, remote.options.where)
        check_keys(module, remote.options, remote.driver)
        drivers[remote.name] = module
    return drivers


def check_keys(module: ModuleType, options: Options, name: str) -> None:
    """Refuse a key of the table that neither the core nor the driver knows.

    The driver names its keys in a module-level ``OPTIONS`` tuple. It costs
    nothing and needs no remote, so it runs at every mount, unlike check().
    A driver that declares no OPTIONS gets its table as it is: its own check
    may refuse what it does not know (Options.only), the core cannot.
    """
    declared = getattr(module, "OPTIONS", None)
    if declared is None:
        return
    if isinstance(declared, str | bytes) or not isinstance(declared, Iterable) \
            or not all(isinstance(key, str) for key in declared):
        raise ConfigError(f"{options.where}.driver: driver '{name}' ({module.__name__}) "
                          "declares OPTIONS that are not a tuple of key names")
    options.only(*CORE_KEYS, *(key for key in declared if key not in CORE_KEYS))


def check_options(module: ModuleType, options: Options) -> None:
    """Let the driver validate its table before anything is mounted."""
    check = getattr(module, "check", None)
    if check is not None:
        check(options)


def remote_folder(module: ModuleType, options: Options) -> Path | None:
    """The folder on this machine where the driver keeps this remote's files, as its
    ``folder(options)`` names it; None for a driver without one (a server, a service)."""
    folder = getattr(module, "folder", None)
    if folder is None:
        return None
    found = folder(options)
    return None if found is None else Path(found)
