"""The replicator: brings every writable remote up to date with the index.

Work is kept per remote as a set of inodes to look at (the ``todo``
database, mirrored in memory). Looking at an inode compares what the tree
says (its paths, its current revision) with what the remote is known to
hold (the ``mirror``), and does what closes the gap: a move, a delete, a
directory, a symlink, or an upload. Because the queue holds inodes rather
than operations, ten saves of one file cost one upload, and a remote that
was away for a week catches up with the state, not the history.

Uploads go chunk by chunk; the offset is saved after each chunk, so an
upload cut by a crash resumes with restart_upload where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import lmdb
import trio

from .blockcache import BlockCache, all_zero, zero_bytes, zeros_sha256
from .index import (
    FLAG_WRITE_FAILED,
    NO_HASH,
    ROOT_INO,
    Index,
    Inode,
    MirrorEntry,
    Transfer,
    cannot_write,
)
from .plug import (
    EXPENSIVE,
    GIVE_WAY_LIMIT,
    GIVE_WAY_STEP,
    Changed,
    Conflict,
    Kind,
    Metadata,
    RemoteUnavailable,
    at_or_below,
)
from .remotes import CallFailed, Remote, Step, backoff

log = logging.getLogger(__name__)
T = TypeVar("T")
Answer = tuple[Remote, str, bytes | CallFailed]  # a holder's answer to a read: where, what
# A read waits on the remotes it asked until each has had a read under way (or this one waiting
# for its turn) for HEDGE_AFTER seconds, and one more per HEDGE_RATE bytes asked, then asks
# the next too.
HEDGE_AFTER = 5.0
HEDGE_RATE = 2**20
MOVE_LOOK = 0.01  # seconds between looks at a move under way where a read failed
SLOW_FOR = 60.0  # seconds a remote found slow so is asked after the others
RESAY = 60.0  # seconds before a trouble said of a remote's changes is said again
PER_REMOTE_TASKS = 4
STUCK_FAILURES = 3  # a change that failed this often in a row waits on something else
# The replicator yields to the user: while the mount is busy, a remote's changes go one at a
# time, and none before it has waited MAX_YIELD seconds past its time (what runs goes on).
MAX_YIELD = 3.0
# A request this recent means someone is using the mount. A program at work (cp, tar, git,
# a build) asks again well within it.
BUSY_WINDOW = 0.25
# A change alone in line, with nothing running, is no burst of files (a big file just
# closed): it waits only for the mount to be quiet this long. Waiting out BUSY_WINDOW took
# a quarter of the time a 256 MiB upload over SSH took, from its close.
ALONE_QUIET = 0.05
YIELD_STEP = 0.02  # how soon a worker that yielded looks again
# A change that waits on another inode's (Retry) goes again as soon as some change on the
# remote ends, or after this at the latest; a fixed wait each time would add up down a tree
# (a file in two new folders waited for each in turn).
RETRY_WAIT = 0.2
FIRST_LISTING_POLL = 0.05  # seconds between two looks at a remote awaited meanwhile
# Chunks up to this size are hashed on the thread that serves the mount: quicker than the
# trip to a worker thread and back.
INLINE_HASH = 64 * 1024
# An upload hands the driver's thread this much at a time (whole blocks, one at least): each
# trip there and back cost about 1 ms on two cores beside the 0.6 ms a local remote took to
# write a 1 MiB block, so three uploads of 1 GiB to local remotes spent half their time on
# the trips with one block each.
UPLOAD_TRIP = 4 * 2**20
ASIDE_PREFIX = ".onitufs-swap-"  # and the inode's number: see Replicator._step_aside


@dataclass
class Piece:
    """A chunk of an upload read from the cache, and what sending it involves."""

    offset: int
    data: bytes
    hole: bool  # zeros not sent: the remote keeps holes
    known: bool  # its block's checksum is in the index already
    zeros: bool
    block: bool  # its own checksum is being computed
    hashing: concurrent.futures.Future[bytes | None] | None


class FetchError(Exception):
    """No remote holding the current revision could deliver the content."""


class Retry(Exception):
    """This inode cannot be done yet (another must go first); try again shortly."""


@dataclass
class Pending:
    # Times here are time.monotonic(): a wall clock set back an hour held every change
    # queued before it for that hour.
    due: float  # when the change has settled (upload_delay); a flush does not wait for it
    seq: int
    retry_at: float = 0.0  # backoff after a failure, which a flush respects too
    # Failures in a row of this change on this remote: each one that fails again waits
    # longer, even when the remote answers other calls (a full disk there takes the
    # restart of an upload, and fails its next chunk).
    failures: int = 0
    # (revision, its size) when the remote lacks that revision, else (revision, 0): what
    # the status counts as queued bytes, looked up once (see pending_bytes).
    upload: tuple[int, int] | None = None
    waited_on: bool = False  # an fsync waits for it (expedite): it gives way to nobody

    def ready_at(self, flush_below: float) -> float:
        return max(self.retry_at, -math.inf if self.seq < flush_below else self.due)

    def failed(self) -> None:
        self.failures += 1
        self.retry_at = time.monotonic() + backoff(self.failures)


def metadata_for(inode: Inode, path: str, xattrs: dict[str, bytes] | None = None) -> Metadata:
    kind: Kind = "dir" if inode.is_dir else "symlink" if inode.is_symlink else "file"
    return Metadata(path=path, kind=kind, size=inode.size, mtime_ns=inode.mtime_ns,
                    mode=inode.mode & 0o7777,
                    target=inode.target.decode("utf-8", "surrogateescape") if inode.target else None,
                    xattrs=xattrs or {})


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def chunk_sha256(data: bytes) -> bytes:
    """The SHA-256 of a chunk: known for zeros (a hole), computed here when small, else on
    a worker thread, off the event loop that serves the mount meanwhile."""
    if all_zero(data):
        return zeros_sha256(len(data))
    if len(data) <= INLINE_HASH:
        return sha256(data)
    return await trio.to_thread.run_sync(sha256, data)


def hash_chunk(chunk: bytes, whole: hashlib._Hash | None, block: bool) -> bytes | None:
    """Feed the whole-file hash, and return the chunk's own SHA-256 if asked."""
    if whole is not None:
        whole.update(chunk)
    return sha256(chunk) if block else None


# Uploads hash each chunk here while the driver sends it (hashlib lets go of the GIL); one
# thread, so the chunks of one upload feed its whole-file hash in order.
_HASHER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onitufs-hash")


async def settled(future: concurrent.futures.Future[T]) -> T:
    """A future's result, waiting on a worker thread only if it is not ready yet."""
    return future.result() if future.done() else await trio.to_thread.run_sync(future.result)


def held_version(md: Metadata, entry: MirrorEntry) -> Metadata:
    """md, naming the version the remote was last known to hold there (what a driver
    checks before it reads, changes or deletes it)."""
    md.revision, md.file_id, md.changed_ns = entry.token, entry.fid, entry.changed
    return md


def aside_path(folder: str, ino: int) -> str:
    """The name an inode's copy steps aside to on a remote, in `folder`."""
    return f"{folder}/{ASIDE_PREFIX}{ino}" if folder else f"{ASIDE_PREFIX}{ino}"


def aside_ino(path: str) -> int | None:
    """The inode whose copy `path` is if it is a name aside_path gives; None if not."""
    number = path.rpartition("/")[2].removeprefix(ASIDE_PREFIX)
    if not (number.isascii() and number.isdigit()) or f"{ASIDE_PREFIX}{int(number)}" \
            != path.rpartition("/")[2]:
        return None
    return int(number)


def entry_metadata(path: str, entry: MirrorEntry) -> Metadata:
    kind: Kind = "dir" if entry.kind == "dir" else "symlink" if entry.kind == "symlink" else "file"
    return held_version(Metadata(path=path, kind=kind), entry)


def clash(path: str, folder: bool, other: str, other_folder: bool) -> bool:
    """Whether an operation at `path` (on a folder and all below it, if `folder`) and
    one at `other` touch a path in common on a remote."""
    return path == other or (folder and at_or_below(other, path)) \
        or (other_folder and at_or_below(path, other))


class Replicator:
    def __init__(self, index: Index, remotes: list[Remote], block_size: int,
                 stall: float) -> None:
        self.index = index
        self.cache: BlockCache  # set by the daemon once the cache exists
        self.remotes = remotes
        self.writable = [remote for remote in remotes if remote.config.writable]
        self.block_size = block_size
        self.stall = stall  # seconds without progress that make a remote stalled (see stalled)
        self._seq = itertools.count()
        self._pending: dict[int, dict[int, Pending]] = {r.rid: {} for r in remotes}
        # Per remote, what the status counts as queued bytes, kept as tickets come and go
        # (see pending_bytes): the sum over the tickets looked up already, and the inodes
        # whose ticket is not. Adding it up anew took 36 ms a status for 90,000 tickets,
        # five times a second while `onitufs umount` waits, on the thread serving the mount.
        self._sized: dict[int, int] = {r.rid: 0 for r in remotes}
        self._unsized: dict[int, set[int]] = {r.rid: set() for r in remotes}
        # (ready time, seq, ino) per remote; an entry whose ticket changed since is skipped
        self._ready: dict[int, list[tuple[float, int, int]]] = {r.rid: [] for r in remotes}
        self._busy: dict[int, set[int]] = {r.rid: set() for r in remotes}
        # inodes whose change waits on another's (Retry), see RETRY_WAIT
        self._waiting: dict[int, set[int]] = {r.rid: set() for r in remotes}
        self._wake: dict[int, trio.Event] = {r.rid: trio.Event() for r in remotes}
        # When each worker wakes by itself (the first of its line is ready): a change queued
        # for later than that need not wake it. A remove of a thousand files queued three
        # thousand changes, all for upload_delay later, and each woke a worker for nothing.
        self._sleeps_until: dict[int, float] = {r.rid: -math.inf for r in remotes}
        # Per remote, inodes brought up to date whose mark in the index's queue is still to
        # go: it goes with the replicator's next transaction (see _write), not in one of its
        # own. A crash before leaves the mark, and the next start looks at the inode again.
        self._done: dict[int, set[int]] = {r.rid: set() for r in remotes}
        # Remotes whose changes the index could not record (its disk full), and when that
        # was said: once a minute at most, not once a change. Not again at the next change
        # recorded: on a disk that stays full, LMDB's reuse of freed pages lets one in now
        # and then, and the line came back each time.
        self._unrecorded: dict[int, float] = {}
        self._locks: dict[tuple[int, int], trio.Lock] = {}
        # The paths each remote's operations work on right now, and whether as a folder
        # moved or deleted there (see _working_at).
        self._working: dict[int, list[tuple[str, bool]]] = {r.rid: [] for r in remotes}
        self._flush_below: float = 0  # items queued before this sequence number go now
        self._flushed_at = math.inf  # when that was said last
        # Per remote, inode -> (revision, bytes of it sent): where its upload has got to in
        # this run, for the status; forgotten when the upload ends or starts over.
        self._reached: dict[int, dict[int, tuple[int, int]]] = {r.rid: {} for r in remotes}
        # (inode, revision) -> the remote whose upload learns that revision's SHA-256 now:
        # uploads to the others leave it to that one (10 GiB are not hashed once a remote).
        self._learning: dict[tuple[int, int], int] = {}
        # (remote id, inode) of the uploads under way in this run: what they send may land
        # there before its record does. A transfer saved by a run that ended is no such
        # upload.
        self._uploading: set[tuple[int, int]] = set()
        # (remote id, inode) -> the revision whose copy there a listing put in doubt (its
        # ctime moved behind its token) until it is compared with ours: meanwhile it is no
        # copy of that revision, so the cache keeps ours, which may be all that is left.
        self._doubted: dict[tuple[int, int], int] = {}
        # Set by the daemon: keeps a remote's unexpected version beside ours.
        self.on_conflict: Callable[[Remote, Metadata, Inode], Awaitable[bool]]
        # Set by the daemon: takes in a version a remote holds that it has not reported yet.
        self.on_changed: Callable[[str, Metadata], Awaitable[None]]
        # Set by the daemon: seconds since the mount last served someone.
        self.foreground_idle: Callable[[], float] = lambda: math.inf
        # The index keeps wall-clock times, from another run maybe: only their order holds,
        # and what was due later than now is due now.
        monotonic, wall = time.monotonic(), time.time()
        for remote in self.writable:
            remote.on_back = functools.partial(self.retry_now, remote)
            for ino, marked in index.todo(remote.rid).items():
                due = monotonic + min(0.0, marked - wall)
                ticket = self._set_ticket(remote, ino, Pending(due, next(self._seq)))
                self._ready[remote.rid].append((due, ticket.seq, ino))
            heapq.heapify(self._ready[remote.rid])

    # queueing

    def schedule(self, txn: lmdb.Transaction, ino: int, delay: float, source: int | None) -> None:
        """Queue an inode for every writable remote except the one the change came from."""
        due, marked = time.monotonic() + delay, time.time() + delay
        for remote in self.writable:
            if remote.rid == source:
                continue
            if ino not in self._pending[remote.rid]:
                # Marked once: the due time kept in the index only orders the queue after
                # a restart, when an earlier one merely means sooner.
                self.index.mark(txn, remote.rid, ino, marked)
            self._add(remote, ino, due)

    def requeue(self, txn: lmdb.Transaction, remote: Remote, ino: int) -> None:
        """Queue an inode again for one remote, which lost or never got it."""
        if remote.config.writable:
            self._add(remote, ino, time.monotonic())
            self.index.mark(txn, remote.rid, ino, time.time())

    def _add(self, remote: Remote, ino: int, due: float) -> None:
        self._done[remote.rid].discard(ino)  # its mark in the index is a new one, to keep
        pending = self._pending[remote.rid]
        if not pending:
            remote.health.last_progress = time.monotonic()  # the clock of a stall starts now
        self._set_ticket(remote, ino, Pending(due, next(self._seq)))
        self._push(remote, ino)

    def _set_ticket(self, remote: Remote, ino: int, ticket: Pending) -> Pending:
        """Queue a ticket, in place of the inode's earlier one: all tickets come and go
        here and in _drop_ticket, which keep the sum pending_bytes counts."""
        self._unsize(remote, self._pending[remote.rid].get(ino))
        self._pending[remote.rid][ino] = ticket
        self._unsized[remote.rid].add(ino)
        return ticket

    def _drop_ticket(self, remote: Remote, ino: int) -> None:
        self._unsize(remote, self._pending[remote.rid].pop(ino))
        self._unsized[remote.rid].discard(ino)

    def _unsize(self, remote: Remote, ticket: Pending | None) -> None:
        if ticket is not None and ticket.upload is not None:
            self._sized[remote.rid] -= ticket.upload[1]

    def _push(self, remote: Remote, ino: int) -> None:
        """Put the inode's ticket in line for when it is ready."""
        ticket = self._pending[remote.rid][ino]
        ready_at = ticket.ready_at(self._flush_below)
        heapq.heappush(self._ready[remote.rid], (ready_at, ticket.seq, ino))
        if ready_at < self._sleeps_until[remote.rid]:
            self._wake[remote.rid].set()

    def fill(self, remote: Remote) -> None:
        """Queue the whole tree for a remote that was added (or is back) in the config."""
        with self._write() as txn:
            for inode in list(self.index.all_inodes(txn)):
                if inode.nlink and inode.ino != ROOT_INO:
                    self.requeue(txn, remote, inode.ino)

    def retry_now(self, remote: Remote) -> None:
        """The remote is back: what backed off while it was away goes at once."""
        for ino, ticket in self._pending[remote.rid].items():
            if ticket.failures:
                ticket.failures, ticket.retry_at = 0, 0.0
                self._push(remote, ino)

    def expedite(self, ino: int) -> None:
        """What is queued for this inode goes now, without waiting for upload_delay, and its
        upload gives way to nobody (an fsync waits for it)."""
        for remote in self.writable:
            ticket = self._pending[remote.rid].get(ino)
            if ticket is None:
                continue
            ticket.waited_on = True
            if ticket.due > time.monotonic():
                ticket.due = time.monotonic()
                self._push(remote, ino)

    def is_queued(self, remote: Remote, ino: int) -> bool:
        return ino in self._pending[remote.rid]

    def stalled(self, remote: Remote) -> bool:
        """Work is queued for this remote and none of it got anywhere for `stall` seconds
        while some of it could (see _idle), or none can (its folder is not the one onitufs
        synced with), or all of it keeps failing (a full disk there)."""
        pending = self._pending[remote.rid]
        return bool(pending) and (
            remote.outage is not None
            or self._idle(remote) > self.stall
            or all(ticket.failures >= STUCK_FAILURES for ticket in pending.values()))

    def _idle(self, remote: Remote) -> float:
        """For how long the remote got nowhere with work it could do: since its last
        progress, or since the first of its changes came due (settled, or flushed), if that
        is later. A change not due yet (upload_delay), or a file still being written (see
        _upload_revision), keeps no remote waiting."""
        idle = time.monotonic() - remote.health.last_progress
        if idle <= self.stall:
            return idle
        first_due = min((min(ticket.due, self._flushed_at) if ticket.seq < self._flush_below
                         else ticket.due for ticket in self._pending[remote.rid].values()),
                        default=time.monotonic())
        return min(idle, time.monotonic() - first_due)

    def last_progress(self) -> float:
        """When an upload last got somewhere, on any remote."""
        return max((remote.health.last_progress for remote in self.writable), default=0.0)

    def can_make_room(self) -> bool:
        """Whether the work queued is getting somewhere on every remote that has some: the
        cache drops only what every remote holds, so one stalled remote keeps it full,
        however busy the others look (one that waits for a file still being written counts
        as busy, and that writer may be the one waiting for room)."""
        busy = [r for r in self.writable if self._pending[r.rid]]
        return bool(busy) and not any(self.stalled(r) for r in busy)

    def why_stuck(self) -> str:
        """Why the uploads make no room, in words: each stalled remote and its reason."""
        stuck = [f"{r.name}: {self.stall_reason(r)}" for r in self.writable
                 if self._pending[r.rid] and self.stalled(r)]
        return "; ".join(stuck) or "nothing is queued for upload"

    def pending_count(self, remote: Remote) -> int:
        return len(self._pending[remote.rid])

    def pending_bytes(self, remote: Remote) -> int:
        """Bytes still to upload for what is queued: the size of each queued file's current
        revision where the remote lacks it, less what an upload of it has sent so far.
        Looked up once per ticket (a new revision queues a new one), and kept as a sum, so
        that the status of a long queue stays cheap; a file still being written is looked
        up at each status, its next revision still growing."""
        pending, unsized = self._pending[remote.rid], self._unsized[remote.rid]
        growing = 0
        with self.index.begin() as txn:
            for ino in list(unsized):
                ticket = pending[ino]
                inode = self.index.get_inode(ino, txn)
                if inode is None or not inode.is_reg or inode.nlink == 0:
                    ticket.upload = (0, 0)  # nothing to upload, or a delete (kept open here)
                elif inode.dirty:
                    growing += inode.size
                    continue
                else:
                    held = any(entry.rev == inode.rev for entry in
                               self.index.mirror(remote.rid, ino, txn).values())
                    ticket.upload = (inode.rev, 0 if held else inode.size)
                    self._sized[remote.rid] += ticket.upload[1]
                unsized.discard(ino)
        sent = 0
        for ino, (rev, offset) in self._reached[remote.rid].items():
            upload = pending[ino].upload if ino in pending else None
            if upload is not None and upload[0] == rev:
                sent += min(offset, upload[1])
        return self._sized[remote.rid] + growing - sent

    def state(self, remote: Remote) -> tuple[str, str | None]:
        """The remote's state in a word, and why it is not online (None when it is):
        offline (unreachable, or not the folder onitufs synced with), stalled (work queued
        that gets nowhere, see stalled), failing (calls fail, and are retried), listing
        (its first listing of this run has not come yet), or online."""
        health = remote.health
        if not health.online or remote.outage is not None:
            return "offline", remote.outage or health.last_error
        if self.stalled(remote):
            return "stalled", self.stall_reason(remote)
        if health.failures:
            return "failing", health.last_error
        if not remote.trusted.is_set():
            return "listing", None
        return "online", None

    def first_listing_due(self, remote: Remote) -> bool:
        """Whether the remote's first listing of this run is still to be taken into the tree
        while the remote answers: not offline, stalled or failing."""
        return not remote.listed.is_set() and self.state(remote)[0] in ("listing", "online")

    async def first_listing_in(self, remote: Remote) -> None:
        """Until the remote's first listing of this run is in the tree, or the remote does
        not answer."""
        while self.first_listing_due(remote):
            await trio.sleep(FIRST_LISTING_POLL)

    def in_flight(self, remote: Remote) -> int:
        return len(self._busy[remote.rid])

    # running

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for remote in self.writable:
                nursery.start_soon(self._worker, remote)

    async def _worker(self, remote: Remote) -> None:
        pending = self._pending[remote.rid]
        busy = self._busy[remote.rid]
        line = self._ready[remote.rid]
        # Not before the remote's first listing is in: a file it holds already, which is
        # being compared with ours, would be sent again, to end in a conflict there.
        await remote.listed.wait()
        async with trio.open_nursery() as nursery:
            slots = trio.Semaphore(PER_REMOTE_TASKS)
            while True:
                self._wake[remote.rid] = wake = trio.Event()
                while line and line[0][0] <= time.monotonic():
                    if self._yield_to_foreground(line[0], len(busy), len(pending),
                                                 pending.get(line[0][2])):
                        await trio.sleep(YIELD_STEP)
                        continue
                    _, seq, ino = heapq.heappop(line)
                    ticket = pending.get(ino)
                    if ticket is None or ticket.seq != seq or ino in busy \
                            or ticket.ready_at(self._flush_below) > time.monotonic():
                        continue  # stale: done, replaced, running, or in line again later
                    await slots.acquire()
                    busy.add(ino)
                    nursery.start_soon(self._process, remote, ino, slots)
                self._sleeps_until[remote.rid] = line[0][0] if line else math.inf
                with trio.move_on_after(max(0.0, self._sleeps_until[remote.rid] - time.monotonic())):
                    await wake.wait()

    def _yield_to_foreground(self, first: tuple[float, int, int], running: int, pending: int,
                             ticket: Pending | None) -> bool:
        """Whether the first change in line (its `ticket`) waits for the mount to be idle:
        each trip of the replicator takes the thread that serves it, and a git clone into
        three remotes that replicated alongside at full pace ran nine times slower."""
        ready_at, seq, _ = first
        quiet = ALONE_QUIET if running == 0 and pending == 1 else BUSY_WINDOW
        return not self._goes_at_once(seq, ticket) and self.foreground_idle() < quiet \
            and (running > 0 or time.monotonic() - ready_at < MAX_YIELD)

    def _goes_at_once(self, seq: int, ticket: Pending | None) -> bool:
        """Whether a change gives way to nobody: it is flushed (an unmount, a writer waiting
        for room in the cache) or an fsync waits for it."""
        return seq < self._flush_below or (ticket is not None and ticket.seq == seq
                                           and ticket.waited_on)

    async def _give_way(self, remote: Remote, ino: int, began: float) -> None:
        """Between two chunks of a long upload: while people use the mount, wait a moment
        (GIVE_WAY_LIMIT at most), as a driver's long listing does. Three uploads of 1 GiB
        running beside 2,000 small creates on two cores halved the creates' pace: the
        copies took the CPU the thread serving the mount needed. The upload still moves,
        at a slower pace; one that goes at once (_goes_at_once) does not wait.

        Only requests since the upload `began` (time.monotonic()) count: those before were
        weighed when it was let go (_yield_to_foreground). Counting them, a file's own
        writes and close held its first chunks to one per GIVE_WAY_LIMIT for BUSY_WINDOW:
        a fifth of a 256 MiB upload's time over SSH."""
        deadline = time.monotonic() + GIVE_WAY_LIMIT
        while not self._may_go(remote, ino, began) and time.monotonic() < deadline:
            await trio.sleep(GIVE_WAY_STEP)

    def _may_go(self, remote: Remote, ino: int, began: float) -> bool:
        """Whether an upload under way need not give way now (see _give_way)."""
        ticket = self._pending[remote.rid].get(ino)
        return ticket is None or self._goes_at_once(ticket.seq, ticket) \
            or self.foreground_idle() >= min(BUSY_WINDOW, time.monotonic() - began)

    async def _process(self, remote: Remote, ino: int, slots: trio.Semaphore) -> None:
        pending = self._pending[remote.rid]
        ticket = pending[ino]
        self._waiting[remote.rid].discard(ino)
        try:
            try:
                await self._sync(remote, ino)
            except Retry:
                ticket.retry_at = time.monotonic() + RETRY_WAIT
                self._waiting[remote.rid].add(ino)
                return
            except CallFailed:
                ticket.failed()
                return
            except FetchError as error:
                # not this remote's doing: the content may come from another any moment
                log.warning("remote %s: cannot copy %s yet: %s", remote.name,
                            self.index.describe(ino), error)
                ticket.retry_at = time.monotonic() + 5
                return
            except lmdb.Error as error:  # the disk of the cache full: retried
                now = time.monotonic()
                if now - self._unrecorded.get(remote.rid, -math.inf) >= RESAY:
                    log.error("remote %s: %s: %s (said once a minute at most)", remote.name,
                              self.index.describe(ino), cannot_write(self.index.path, error))
                    self._unrecorded[remote.rid] = now
                ticket.failed()
                return
            except Exception:
                log.exception("remote %s: %s failed", remote.name, self.index.describe(ino))
                ticket.failed()
                return
            remote.health.last_progress = time.monotonic()
            if pending.get(ino) is ticket:
                self._drop_ticket(remote, ino)
                self._done[remote.rid].add(ino)
        finally:
            self._busy[remote.rid].discard(ino)
            slots.release()
            if ino in pending:
                self._push(remote, ino)  # retried, or changed while it ran
            if ino not in self._waiting[remote.rid]:
                self._wake_waiting(remote)

    def _wake_waiting(self, remote: Remote) -> None:
        """A change on the remote ended: those that waited on another inode look again now
        (only an end wakes them, so two that wait do not wake each other in turn)."""
        waiting, self._waiting[remote.rid] = self._waiting[remote.rid], set()
        for ino in waiting:
            ticket = self._pending[remote.rid].get(ino)
            if ticket is not None and ino not in self._busy[remote.rid]:
                ticket.retry_at = 0.0
                self._push(remote, ino)

    @contextlib.asynccontextmanager
    async def _locked(self, remote: Remote, ino: int, visiting: frozenset[int]
                      ) -> AsyncIterator[None]:
        """The inode's lock on the remote, dropped once nobody holds or waits for it.
        `visiting`: another sync waits on this one, and must not wait on a task that
        might wait on it in turn."""
        key = (remote.rid, ino)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = trio.Lock()
        elif visiting and lock.locked():
            raise Retry()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)

    # bringing one inode up to date on one remote

    async def _sync(self, remote: Remote, ino: int, visiting: frozenset[int] = frozenset()) -> None:
        """Bring one inode up to date on one remote. `visiting`: the inodes whose sync
        is waiting on this one (a parent to make, a path to free), to see cycles.

        What the remote holds is read again after every wait: meanwhile a folder above
        may have moved there, taking this inode's copy with it."""
        if ino == ROOT_INO:
            return  # the remote's root is where it is configured; never made, moved or deleted
        async with self._locked(remote, ino, visiting):
            visiting = visiting | {ino}
            with self.index.begin() as txn:
                inode = self.index.get_inode(ino, txn)
                wanted = self.index.paths_of(ino, txn) if inode is not None else []
            if inode is None or not (inode.is_dir or inode.is_reg or inode.is_symlink):
                wanted = []  # gone, or special files, which live in the index only
            if await remote.has("move_file"):
                await self._move_held(remote, ino, wanted, visiting)
            while True:
                have = self._mirror(remote, ino)
                stale = [path for path in have if path not in wanted]
                if not stale:
                    break
                await self._remove_held(remote, ino, stale[0], have[stale[0]], visiting)
            for path in wanted:
                assert inode is not None
                entry = self._mirror(remote, ino).get(path)
                if entry is None or (inode.is_reg and entry.rev != inode.rev):
                    await self._ensure_parent(remote, path, visiting)
                    if entry is None and not await self._make_way(remote, ino, path, visiting):
                        raise Retry()
                    if self._mirror(remote, ino).get(path) != entry:
                        raise Retry()  # changed there while we waited: look again
                if inode.is_reg and (entry is None or entry.rev != inode.rev):
                    with self._working_at(remote, path):
                        await self._upload(remote, inode, path, entry)
                elif entry is None:
                    with self._working_at(remote, path):
                        await self._make(remote, inode, path)
                elif not inode.is_symlink and await remote.has("set_attrs"):
                    with self._working_at(remote, path):
                        await self._set_attrs(remote, inode, path, entry)
            with self.index.begin() as txn:
                cut = self.index.transfer(remote.rid, ino, txn)
            if cut is not None:
                # An upload cut short (the remote went away, a fetch failed, a crash) that
                # nothing will resume now: the inode is gone, or needs no upload there any
                # more. Leave nothing of it there, where it may keep a folder from going;
                # its temp file went along if a folder above it was renamed since.
                elsewhere = [path for path in wanted if path != cut.path]
                with self._working_at(remote, cut.path, *elsewhere):
                    await self._abort(remote, ino, cut, *elsewhere)

    async def _move_held(self, remote: Remote, ino: int, wanted: list[str],
                         visiting: frozenset[int]) -> None:
        """Move what the remote holds at paths the inode left to paths it has now."""
        while True:
            have = self._mirror(remote, ino)
            stale = [path for path in have if path not in wanted]
            missing = [path for path in wanted if path not in have]
            if not (stale and missing):
                return
            old, new = stale[-1], missing[-1]
            await self._ensure_parent(remote, new, visiting)
            entry = self._mirror(remote, ino).get(old)
            if entry is None or new in self._mirror(remote, ino):
                continue  # a folder above moved meanwhile, and this with it
            folder = entry.kind == "dir"
            if old.startswith(new + "/"):
                # It takes the name of a folder it is in there (a/b -> a once the folder
                # a is gone): out of that folder first, so the folder can go.
                with self._working_at(remote, old, folder=folder):
                    await self._step_aside(remote, ino, old, entry, new.rpartition("/")[0])
                continue  # and from there to its new name
            if not await self._make_way(remote, ino, new, visiting):
                entry = self._mirror(remote, ino).get(old)
                if entry is not None:
                    with self._working_at(remote, old, folder=folder):
                        await self._step_aside(remote, ino, old, entry, old.rpartition("/")[0])
                raise Retry()
            entry = self._mirror(remote, ino).get(old)
            if entry is None or new in self._mirror(remote, ino):
                continue
            with self._working_at(remote, old, new, folder=folder):
                await self._move(remote, ino, old, new, entry)

    async def _remove_held(self, remote: Remote, ino: int, path: str, entry: MirrorEntry,
                           visiting: frozenset[int]) -> None:
        """Delete what the remote holds at a path the inode left. What the remote still
        holds in a folder (other inodes deleted here, or moved elsewhere, and not done
        there yet) goes first: the folder could not go before (rm -rf queues a folder's
        delete beside those of its files)."""
        folder = entry.kind == "dir"
        if folder:
            await self._clear_below(remote, ino, path, visiting)
        with self._working_at(remote, path, folder=folder):
            await self._delete(remote, ino, path, entry)

    async def _clear_below(self, remote: Remote, ino: int, folder: str,
                           visiting: frozenset[int]) -> None:
        """Bring up to date the other inodes the remote holds below `folder`, deepest
        first."""
        with self.index.begin() as txn:
            below = {(path.count("/"), held) for held, path, _ in
                     self.index.mirror_below(remote.rid, [folder], txn) if held != ino}
        for _, held in sorted(below, reverse=True):
            await self._sync(remote, held, visiting)

    @contextlib.contextmanager
    def _working_at(self, remote: Remote, *paths: str, folder: bool = False) -> Iterator[None]:
        """Claim paths on a remote for one operation (or a whole upload, whose temp file
        sits in the target's folder from start to end).

        A folder moved or deleted there (`folder`) changes every path below it: it
        waits (Retry) while another operation works below it, and those wait while it
        runs. Otherwise one could work on a path that went away under it: a file would
        land, or a temp file stay, in the folder at its new place, where nothing knows it.
        Two operations never work at one path at once either: an upload of the version
        that replaced another would find the other's copy, landed but not yet recorded,
        and take it for a version saved there by someone else.
        """
        working = self._working[remote.rid]
        if any(clash(path, folder, other, other_folder)
               for path in paths for other, other_folder in working):
            raise Retry()
        claims = [(path, folder) for path in paths]
        working.extend(claims)
        try:
            yield
        finally:
            for claim in claims:
                working.remove(claim)

    async def _make_way(self, remote: Remote, ino: int, path: str,
                        visiting: frozenset[int]) -> bool:
        """Free `path` on the remote if another inode holds it there (moved or deleted in
        the tree): that inode's change goes first. False if that inode waits on us."""
        with self.index.begin() as txn:
            owner = self.index.mirror_ino(remote.rid, path, txn)
        if owner is None or owner == ino:
            return True
        if owner in visiting:
            return False
        with contextlib.suppress(Retry):
            await self._sync(remote, owner, visiting)
        with self.index.begin() as txn:
            owner = self.index.mirror_ino(remote.rid, path, txn)
        if owner is not None and owner != ino:
            raise Retry()
        return True

    async def _step_aside(self, remote: Remote, ino: int, path: str, entry: MirrorEntry,
                          folder: str) -> str:
        """Move this inode's copy to a temporary name in `folder`, out of the way of a cycle
        of renames (a swap) or of a folder that must go; returns that name. (A crash
        before the move is recorded leaves the copy there unrecorded: a listing knows it
        by that name, RemoteChanges._stepped_aside.)"""
        aside = aside_path(folder, ino)
        await self._move(remote, ino, path, aside, entry)
        return aside

    @contextlib.contextmanager
    def _write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction of the index that also takes the marks of what is done out
        of the queue: a small file's upload paid a commit of its own for that."""
        with self.index.write() as txn:
            done = [(rid, set(inodes)) for rid, inodes in self._done.items() if inodes]
            for rid, inodes in done:
                for ino in inodes:
                    self.index.unmark(txn, rid, ino)

            def unmarked() -> None:
                for rid, inodes in done:
                    self._done[rid] -= inodes

            self.index.after_commit(unmarked)
            yield txn

    def _mirror(self, remote: Remote, ino: int) -> dict[str, MirrorEntry]:
        with self.index.begin() as txn:
            return self.index.mirror(remote.rid, ino, txn)

    async def _ensure_parent(self, remote: Remote, path: str, visiting: frozenset[int]) -> None:
        parent_path = path.rpartition("/")[0]
        if not parent_path:
            return
        with self.index.begin() as txn:
            parent = self.index.resolve(parent_path, txn)
            known = parent is not None and parent_path in self.index.mirror(remote.rid, parent, txn)
        if known:
            return
        if parent is None:
            raise Retry()
        await self._sync(remote, parent, visiting)

    async def _call_on_version(self, remote: Remote, handler: str, *args: Metadata) -> None:
        """Call move_file or delete_file, which act only on the version onitufs recorded."""
        try:
            await remote.call(handler, *args)
        except CallFailed as error:
            if isinstance(error.__cause__, Changed):
                # Edited there since it was listed: that version is taken in first (as
                # a conflict if ours changed too), then the change is tried again.
                await self.on_changed(remote.name, error.__cause__.current)
                raise Retry() from None
            raise

    async def _move(self, remote: Remote, ino: int, old: str, new: str, entry: MirrorEntry) -> None:
        old_md = entry_metadata(old, entry)
        new_md = old_md.copy(path=new)
        await self._call_on_version(remote, "move_file", old_md, new_md)
        remote.touch(old, new)
        with self._write() as txn:
            self.index.move_mirror(txn, remote.rid, ino, old, new,
                                   entry.moved(new_md.revision, new_md.file_id, new_md.changed_ns))

    def _describe(self, inode: Inode, path: str) -> Metadata:
        """What is sent for an inode: its attributes, with the xattrs remotes may keep."""
        with self.index.begin() as txn:
            return metadata_for(inode, path, self.index.user_xattrs(inode.ino, txn))

    async def _set_attrs(self, remote: Remote, inode: Inode, path: str, entry: MirrorEntry) -> None:
        """Mode, time or xattrs changed without new content: set them, nothing uploaded."""
        md = self._describe(inode, path)
        if entry.attrs == md.attrs_key():
            return
        held_version(md, entry)
        asked = md.attrs_key()
        await remote.call("set_attrs", md)
        remote.touch(path)
        held = remote.entry_of(md, entry.rev, asked=asked)
        held.sha256 = entry.sha256  # the same content
        with self._write() as txn:
            self.index.set_mirror(txn, remote.rid, inode.ino, path, held)

    async def _delete(self, remote: Remote, ino: int, path: str, entry: MirrorEntry) -> None:
        await self._call_on_version(remote, "delete_file", entry_metadata(path, entry))
        remote.touch(path)
        with self._write() as txn:
            self.index.set_mirror(txn, remote.rid, ino, path, None)

    async def _make(self, remote: Remote, inode: Inode, path: str) -> None:
        md = self._describe(inode, path)
        handler = "make_dir" if inode.is_dir else "make_symlink"
        if not await remote.has(handler):
            return  # this remote cannot store it: it stays in the index only
        asked = md.attrs_key()
        await remote.call(handler, md)
        remote.touch(path)
        with self._write() as txn:
            self.index.set_mirror(txn, remote.rid, inode.ino, path,
                                  remote.entry_of(md, inode.rev, asked=asked))

    async def _upload(self, remote: Remote, inode: Inode, path: str,
                      replaces: MirrorEntry | None) -> None:
        """Upload the current revision to `path`, where the remote held `replaces`."""
        learning = (inode.ino, inode.rev)
        self._uploading.add((remote.rid, inode.ino))  # one at a time: see _locked
        try:
            await self._upload_revision(remote, inode, path, replaces)
        finally:
            self._uploading.discard((remote.rid, inode.ino))
            if self._learning.get(learning) == remote.rid:
                del self._learning[learning]

    def uploading(self, remote: Remote, ino: int) -> bool:
        """Whether an upload of the inode to the remote is under way: a version of it found
        there may be that upload landing, which records itself."""
        return (remote.rid, ino) in self._uploading

    async def _upload_revision(self, remote: Remote, inode: Inode, path: str,
                               replaces: MirrorEntry | None) -> None:
        began = time.monotonic()  # the mount's use from here on holds the chunks back
        rev = inode.rev
        if inode.flags & FLAG_WRITE_FAILED:
            # Cut short by a full disk: no revision comes until it is written anew, which
            # queues it again; the remote keeps the last whole one meanwhile.
            return
        if inode.dirty:
            # Its next revision is on the way; upload that one. Meanwhile the remote waits
            # for a writer, not the other way round: a copy that takes minutes is no stall.
            if not remote.health.failures and remote.outage is None:
                remote.health.last_progress = time.monotonic()
            raise Retry()
        md = self._describe(inode, path)
        if replaces is not None:
            md.revision, md.changed_ns = replaces.token, replaces.changed
        with self.index.begin() as txn:
            saved = self.index.transfer(remote.rid, inode.ino, txn)
        # (an upload saved at byte 0 may never have started: nothing to resume, start over)
        if saved is not None and saved.rev == rev and saved.path == path and saved.offset \
                and await remote.has("restart_upload"):
            md.extra = saved.extra
            offset = saved.offset
            log.info("remote %s: resuming %s at byte %d", remote.name, path, offset)
            try:
                resumed = await remote.call("restart_upload", md, offset)
            except CallFailed as error:
                if not isinstance(error.__cause__, RemoteUnavailable):
                    await self._abort(remote, inode.ino, saved)  # start over next time
                raise
            if resumed is not None and resumed != offset:
                if not (isinstance(resumed, int) and 0 <= resumed < offset
                        and resumed % self.block_size == 0):
                    await self._abort(remote, inode.ino, saved)
                    raise Retry()  # not a place a transfer can go on from: start over
                log.info("remote %s: %s holds the first %d bytes whole: going on from there",
                         remote.name, path, resumed)
                offset = resumed
        else:
            if saved is not None:  # and its temp file where a folder renamed since took it
                await self._abort(remote, inode.ino, saved, path)
            offset = 0
            # Saved before the remote sees anything, with a name for the upload that drivers
            # use for their temp file: after a crash, restart_upload or abort_upload finds it.
            md.extra = {"upload": f"{self.index.cache_id}-{inode.ino:x}-{rev:x}"}
            if md.size <= self.block_size:
                await self._upload_whole(remote, inode, path, md)
                return
            named = dict(md.extra)
            self._save_transfer(remote, inode.ino, Transfer(rev, path, 0, named))
            await remote.call("start_upload", md)
            if md.extra != named:  # what the driver noted there for a resume (its session)
                self._save_transfer(remote, inode.ino, Transfer(rev, path, 0, md.extra))
        # A pass from the first byte also learns the SHA-256 of the whole revision, unless
        # another one does already.
        whole = hashlib.sha256() if offset == 0 and inode.sha256 == NO_HASH \
            and (inode.ino, rev) not in self._learning else None
        if whole is not None:
            self._learning[(inode.ino, rev)] = remote.rid
        # Blocks of zeros are not sent to a remote that keeps holes: its copy stays sparse.
        # What is saved for a resume is where the last chunk sent ends (the remote's file
        # may end there), and the zeros after it are looked at again.
        keeps_holes = remote.plug is not None and remote.plug.keeps_holes
        behind = None  # the whole-file hash of the trip before, still running
        self._reached[remote.rid][inode.ino] = (rev, offset)
        while offset < md.size:
            # while the mount is in use, a block a trip, each after its give-way
            trip = UPLOAD_TRIP if self._may_go(remote, inode.ino, began) else self.block_size
            pieces = await self._read_trip(remote, inode, rev, path, md, offset, trip, whole,
                                           keeps_holes)
            if not pieces:
                break
            steps: list[Step] = [("upload_chunk", (md, piece.offset, piece.data))
                                 for piece in pieces if not piece.hole]
            if steps:
                if offset:
                    await self._give_way(remote, inode.ino, began)
                sending = time.monotonic()
                try:
                    await remote.call_each(*steps)
                except CallFailed as error:
                    if error.done:  # the chunks before the one that failed went: noted
                        _, (_, at, chunk) = steps[error.done - 1]
                        went = at + len(chunk)
                        remote.health.sent(sum(len(args[2]) for _, args in steps[:error.done]),
                                           sending)
                        self._reached[remote.rid][inode.ino] = (rev, went)
                        if went < md.size:
                            self._save_transfer(remote, inode.ino,
                                                Transfer(rev, path, went, md.extra))
                    raise
                remote.health.sent(sum(len(args[2]) for _, args in steps), sending)
            else:
                await trio.lowlevel.checkpoint()  # the mount goes on between holes too
            if behind is not None:  # the whole-file hash runs one trip behind at most
                await settled(behind)
            digests: list[tuple[int, bytes]] = []
            for piece in pieces:
                digest = await settled(piece.hashing) if piece.hashing is not None and \
                    piece.block else zeros_sha256(len(piece.data)) if not piece.known and \
                    piece.zeros else None
                if digest is not None:
                    digests.append((piece.offset // self.block_size, digest))
            # one hashing thread: the trip's last job ends after the others
            behind = next((piece.hashing for piece in reversed(pieces)
                           if piece.hashing is not None), None)
            offset = pieces[-1].offset + len(pieces[-1].data)
            self._reached[remote.rid][inode.ino] = (rev, offset)
            remote.health.last_progress = time.monotonic()
            sent_to = max((piece.offset + len(piece.data) for piece in pieces if not piece.hole),
                          default=md.size)
            if not digests and sent_to >= md.size:
                continue  # nothing to note
            with self._write() as txn:
                # a block changed meanwhile has its own checksum now, not this one
                if inode.rev == rev and not inode.dirty:
                    for blockno, digest in digests:
                        self.index.set_block_hash(txn, inode.ino, blockno, rev, digest)
                if sent_to < md.size:
                    self.index.set_transfer(txn, remote.rid, inode.ino,
                                            Transfer(rev, path, sent_to, md.extra))
        if behind is not None:
            await settled(behind)
        await self._end(remote, inode, rev, md, offset,
                        whole.digest() if whole is not None else None)

    async def _read_trip(self, remote: Remote, inode: Inode, rev: int, path: str,
                         md: Metadata, offset: int, trip: int, whole: hashlib._Hash | None,
                         keeps_holes: bool) -> list[Piece]:
        """The chunks from `offset` that go to the driver's thread in one trip (`trip` bytes,
        one chunk at least), each handed to the hashing thread; none at the end of the
        content. The revision changed, or deleted, meanwhile: what was sent goes, and
        Retry."""
        pieces: list[Piece] = []
        at = offset
        while True:
            if inode.rev != rev or inode.dirty or not self._alive(inode.ino):
                # (a read that waited for a remote may have read the next revision)
                await self._abort(remote, inode.ino, Transfer(rev, path, offset, md.extra))
                raise Retry()  # changed, or deleted: the next look does what is needed now
            if at >= md.size or (pieces and at - offset >= trip):
                return pieces
            try:
                chunk = await self.cache.read(inode, at, self.block_size)
            except Exception as error:
                # The content cannot be had (its source vanished with the file, a damaged
                # block): what was sent goes, unless a remote holding it is only away.
                if not (isinstance(error, FetchError) and any(
                        not holder.health.online for holder, _, _ in self.holders(inode))):
                    with contextlib.suppress(CallFailed):
                        await self._abort(remote, inode.ino,
                                          Transfer(rev, path, offset, md.extra))
                raise
            if not chunk:
                return pieces
            # chunks are whole blocks; mostly nothing to hash: writing learnt the checksums
            # of what it wrote, and zeros have theirs
            known = self.index.block_hash(inode.ino, at // self.block_size, rev) is not None
            zeros = all_zero(chunk)
            block = not known and not zeros
            hashing = None if not block and whole is None else \
                _HASHER.submit(hash_chunk, zero_bytes(len(chunk)) if zeros else chunk, whole,
                               block)
            pieces.append(Piece(at, chunk, keeps_holes and zeros, known, zeros, block, hashing))
            at += len(chunk)

    async def _upload_whole(self, remote: Remote, inode: Inode, path: str, md: Metadata) -> None:
        """Upload a revision that fits in one chunk: started, sent and ended in one trip to
        the driver's thread. Nothing to resume, so the transfer is saved once, before."""
        rev = inode.rev
        chunk = await self.cache.read(inode, 0, self.block_size)
        if inode.rev != rev or inode.dirty or not self._alive(inode.ino):
            raise Retry()  # changed, or deleted, while it was read
        known = self.index.block_hash(inode.ino, 0, rev) if chunk else None
        zeros = all_zero(chunk)
        digest = known or await chunk_sha256(chunk)
        self._save_transfer(remote, inode.ino, Transfer(rev, path, 0, dict(md.extra)))
        steps: list[Step] = [("start_upload", (md,))]
        if chunk and not (zeros and remote.plug is not None and remote.plug.keeps_holes):
            steps.append(("upload_chunk", (md, 0, chunk)))
        sending = time.monotonic()
        await self._end(remote, inode, rev, md, 0, digest if len(chunk) == md.size else None,
                        *steps, learnt=None if known is not None or zeros else digest)
        remote.health.sent(len(chunk), sending)

    async def _end(self, remote: Remote, inode: Inode, rev: int, md: Metadata, offset: int,
                   whole: bytes | None, *before: Step, learnt: bytes | None = None) -> None:
        """end_upload, after the steps `before` in the same trip, then the record that the
        remote holds revision `rev`, with the SHA-256 of the whole file and of its one block
        (`learnt`) if they were learnt on the way. Nothing of a failed upload stays there,
        unless the remote is only away or a conflict there waits (the upload resumes)."""
        path, asked = md.path, md.attrs_key()
        try:
            await remote.call_each(*before, ("end_upload", (md,)))
        except CallFailed as error:
            if isinstance(error.__cause__, Conflict):
                if await self.on_conflict(remote, error.__cause__.current, inode):
                    await self._abort(remote, inode.ino, Transfer(rev, path, offset, md.extra))
                    raise Retry() from None
                # Not settled: the remote's version could not be read or moved aside, or
                # what the decision rested on moved meanwhile. Tried again after a backoff,
                # as any failure: at once, a move aside that the remote kept refusing went
                # five times a second for as long as it refused. The upload stays there and
                # goes on from the transfer saved: each try sent the whole file again.
                raise
            if not isinstance(error.__cause__, RemoteUnavailable):
                with contextlib.suppress(CallFailed):  # leave no partial upload behind
                    await self._abort(remote, inode.ino, Transfer(rev, path, offset, md.extra))
            raise
        remote.touch(path)
        remote.health.done += 1
        self._reached[remote.rid].pop(inode.ino, None)
        with self._write() as txn:
            self.index.set_transfer(txn, remote.rid, inode.ino, None)
            self.index.set_mirror(txn, remote.rid, inode.ino, path,
                                  remote.entry_of(md, rev, whole or inode.checksum_of(rev),
                                                  asked))
            if inode.rev == rev and not inode.dirty:
                if learnt is not None:
                    self.index.set_block_hash(txn, inode.ino, 0, rev, learnt)
                if whole is not None and inode.sha256 == NO_HASH:
                    inode.sha256 = whole
                    self.index.put_inode(txn, inode)
                    self.index.learn_checksum(txn, inode.ino, rev, whole)

    async def _abort(self, remote: Remote, ino: int, transfer: Transfer, *elsewhere: str) -> None:
        """Remove the temp file of an upload, at its path and at the other paths given (where
        a folder renamed since may have taken it), and forget the upload."""
        if await remote.has("abort_upload"):
            for path in dict.fromkeys((transfer.path, *elsewhere)):
                await remote.call("abort_upload", Metadata(path=path, extra=transfer.extra))
        self._reached[remote.rid].pop(ino, None)
        with self._write() as txn:
            self.index.set_transfer(txn, remote.rid, ino, None)

    def _alive(self, ino: int) -> bool:
        """The inode still has a name in the tree."""
        inode = self.index.get_inode(ino)
        return inode is not None and inode.nlink > 0

    def _save_transfer(self, remote: Remote, ino: int, transfer: Transfer) -> None:
        with self._write() as txn:
            self.index.set_transfer(txn, remote.rid, ino, transfer)

    # reading from remotes

    def holders(self, inode: Inode) -> list[tuple[Remote, str, MirrorEntry]]:
        """Readable remotes holding the current revision: those online first, then those that
        failed least, then those not found slow lately, then the cheapest to read from."""
        found = []
        with self.index.begin() as txn:
            for remote in self.remotes:
                if not remote.config.readable:
                    continue
                for path, entry in self.index.mirror(remote.rid, inode.ino, txn).items():
                    if entry.rev == inode.rev:
                        found.append((remote, path, entry))
                        break
        now = time.monotonic()
        found.sort(key=lambda item: (not item[0].health.online, item[0].health.failures,
                                     item[0].health.slow_until > now,
                                     item[0].plug.cost if item[0].plug else EXPENSIVE))
        return found

    async def fetch(self, inode: Inode, offset: int, size: int,
                    expected: bytes | None) -> tuple[bytes, bytes]:
        """Bytes of the current revision from the first replica that has them right, and
        their SHA-256. Holders that stay silent (see HEDGE_AFTER) are not waited for alone:
        the next one is asked too, the first right answer is taken, and they are asked last
        for SLOW_FOR (a remote that hangs would hold each read until its own timeout, a
        minute or more, while another holds the same bytes). A remote whose reads go on
        answering, this one queued behind them, is waited for; one with a read under way
        that long is not, whatever else it answers (a bad sector on its disk, a file its
        server stopped serving). A read that failed where this very onitufs was moving the
        file (or a folder above it) on that remote is asked again at its new path."""
        errors: list[str] = []
        holders = self.holders(inode)
        taken_in = False
        answers, answered = trio.open_memory_channel[Answer](math.inf)
        asked: set[Remote] = set()
        failed: list[tuple[Remote, str]] = []  # reads that failed, maybe for a move
        silence = HEDGE_AFTER + size / HEDGE_RATE
        async with trio.open_nursery() as nursery:
            while holders or asked or (
                    holders := await self._asked_again(inode, failed, silence)):
                if holders:
                    remote, path, entry = holders.pop(0)
                    asked.add(remote)
                    md = held_version(metadata_for(inode, path), entry)
                    nursery.start_soon(self._ask, answers, remote, path, md, offset, size)
                    since = time.monotonic()
                got = await self._next_answer(answered, asked, since, silence) if holders \
                    else await answered.receive()
                if got is None:
                    now = time.monotonic()
                    newly = sorted(slow.name for slow in asked if slow.health.slow_until <= now)
                    for slow in asked:
                        slow.health.slow_until = now + SLOW_FOR
                    if newly:  # said once for the reads under way at that moment
                        log.info("remote %s: no answer in %.0f s for a read of %s; asking %s "
                                 "too, and it first for a while", ", ".join(newly), silence,
                                 self.index.describe(inode.ino), holders[0][0].name)
                    continue
                remote, path, answer = got
                asked.discard(remote)
                if isinstance(answer, CallFailed):
                    errors.append(str(answer))
                    failed.append((remote, path))
                    if isinstance(answer.__cause__, Changed) and not taken_in:
                        # The remote moved on before reporting it: taken in now, as its
                        # report would be, so that the path shows its version at once.
                        taken_in = True
                        await self.on_changed(remote.name, answer.__cause__.current)
                        holders = [holder for holder in self.holders(inode)  # of the revision
                                   if holder[0] not in asked]  # asked for, after that
                    continue
                if len(answer) != size:
                    errors.append(f"{remote.name}: short read ({len(answer)} of {size} bytes)")
                    continue
                digest = await chunk_sha256(answer)
                if expected is not None and digest != expected:
                    errors.append(f"{remote.name}: damaged copy")
                    self.mark_damaged(remote, inode, path, f"the block at byte {offset} does "
                                      "not match its SHA-256")
                    continue
                nursery.cancel_scope.cancel()  # a holder still asked: its answer is dropped
                return answer, digest
        raise FetchError("; ".join(errors) or "no readable remote holds its current revision")

    async def _asked_again(self, inode: Inode, failed: list[tuple[Remote, str]],
                           silence: float) -> list[tuple[Remote, str, MirrorEntry]]:
        """Of the reads that `failed` (taken out of it), those at a path this onitufs was
        moving on that remote (the file, or a folder above it): once the move is done and
        recorded (waited for up to `silence` seconds), the holders of the current revision
        at another path there."""
        def moving(remote: Remote, path: str) -> bool:
            return any(clash(path, False, other, folder)
                       for other, folder in self._working[remote.rid])

        with trio.move_on_after(silence):
            while any(moving(remote, path) for remote, path in failed):
                await trio.sleep(MOVE_LOOK)
        again = [(remote, path, entry) for remote, path, entry in self.holders(inode)
                 if any(remote is gone and path != old for gone, old in failed)]
        failed.clear()
        return again

    @staticmethod
    async def _next_answer(answered: trio.MemoryReceiveChannel[Answer], asked: set[Remote],
                           since: float, silence: float) -> Answer | None:
        """The next answer to a read asked of `asked` (the last at `since`); None once each
        of them has had a read under way for `silence` seconds, or this one waiting that long
        for its turn."""
        def stuck_at() -> float:
            return silence + max(max(since, remote.health.reads.oldest() or since)
                                 for remote in asked)

        while True:
            with trio.move_on_after(max(0.0, stuck_at() - time.monotonic())):
                return await answered.receive()
            if stuck_at() <= time.monotonic():
                return None

    @staticmethod
    async def _ask(answers: trio.MemorySendChannel[Answer], remote: Remote, path: str,
                   md: Metadata, offset: int, size: int) -> None:
        try:
            answer: bytes | CallFailed = await remote.call("get_chunk", md, offset, size)
        except CallFailed as error:
            answer = error
        answers.send_nowait((remote, path, answer))

    def mark_damaged(self, remote: Remote, inode: Inode, path: str, why: str) -> None:
        """A replica is not what it should be: never read it again, upload it anew."""
        log.error("remote %s: %s is damaged there (%s); reading another replica, and "
                  "repairing it", remote.name, path, why)
        with self._write() as txn:
            entry = self.index.mirror(remote.rid, inode.ino, txn).get(path)
            if entry is not None:
                entry.rev = 0  # holds no revision of ours
                self.index.set_mirror(txn, remote.rid, inode.ino, path, entry)
            self.requeue(txn, remote, inode.ino)

    async def wait_held(self, ino: int, count: int) -> bool:
        """Until `count` writable remotes hold the current revision (it may move on
        meanwhile); False once every remote that does not is offline or stalled."""
        while True:
            inode = self.index.get_inode(ino)
            if inode is None:
                return True
            with self.index.begin() as txn:
                holding = {remote for remote in self.writable
                           if any(entry.rev == inode.rev for entry in
                                  self.index.mirror(remote.rid, ino, txn).values())}
            if len(holding) >= count:
                return True
            others = [remote for remote in self.writable if remote not in holding]
            if all(not remote.health.online or self.stalled(remote) for remote in others):
                return False
            await trio.sleep(0.05)

    def replicated(self, ino: int) -> bool:
        """Every writable remote holds the current revision, and some readable one does."""
        inode = self.index.get_inode(ino)
        if inode is None or inode.dirty:
            return False
        with self.index.begin() as txn:
            held = {remote.rid for remote in self.remotes
                    if not self.in_doubt(remote, inode)
                    and any(entry.rev == inode.rev
                            for entry in self.index.mirror(remote.rid, ino, txn).values())}
        return all(r.rid in held for r in self.writable) and any(
            r.rid in held for r in self.remotes if r.config.readable)

    def doubt(self, remote: Remote, inode: Inode) -> None:
        """The remote's copy of the inode's current revision may be something else now,
        until settled() says it was compared."""
        self._doubted[remote.rid, inode.ino] = inode.rev

    def settled(self, remote: Remote, ino: int) -> None:
        self._doubted.pop((remote.rid, ino), None)

    def in_doubt(self, remote: Remote, inode: Inode) -> bool:
        return self._doubted.get((remote.rid, inode.ino)) == inode.rev

    # unmounting

    def start_flush(self, everything: bool = False) -> None:
        """Upload what is queued now without waiting for it to settle; with `everything`,
        also all that is queued from now on (the mount is ending)."""
        # a flush of everything (unmounting) stays one
        self._flush_below = math.inf if everything else max(self._flush_below, next(self._seq))
        self._flushed_at = time.monotonic()
        for remote in self.writable:
            line = self._ready[remote.rid]
            line[:] = [(self._pending[remote.rid][ino].ready_at(self._flush_below), seq, ino)
                       for _, seq, ino in line if ino in self._pending[remote.rid]]
            heapq.heapify(line)
            self._wake[remote.rid].set()

    def stall_reason(self, remote: Remote) -> str:
        """Why a remote with work queued got nowhere, in words (never None): its outage,
        the error it fails with, or for how long nothing went there."""
        health = remote.health
        if remote.outage is not None:
            return remote.outage
        failing = health.failures or not health.online or any(
            ticket.failures for ticket in self._pending[remote.rid].values())
        if health.last_error and failing:
            return health.change_error or health.last_error
        idle = f"nothing done there for {self._idle(remote):.0f} s"
        return f"{idle}; last error: {health.last_error}" if health.last_error else idle

    async def flush(self, report: Callable[[], None] | None = None) -> bool:
        """Upload everything now; True once every writable remote is up to date.

        Gives up once every remote with work left has stalled (see `stalled`):
        what they still need stays queued in the index for the next mount.
        """
        self.start_flush(everything=True)
        while True:
            waiting = [r for r in self.writable if self._pending[r.rid]]
            if any(self._done.values()):
                with self._write():
                    pass  # the marks of what was done last go
            if not waiting:
                return True
            if all(self.stalled(remote) for remote in waiting):
                for remote in waiting:
                    log.error("remote %s: %d changes still queued (%s); they resume at the "
                              "next mount", remote.name, len(self._pending[remote.rid]),
                              self.stall_reason(remote))
                return False
            if report is not None:
                report()
            await trio.sleep(0.1)
