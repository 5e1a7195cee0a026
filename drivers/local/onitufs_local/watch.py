"""The local driver's watch on its folder: the kernel tells it of changes (inotify).

Every folder of the remote is watched; a folder that appears is watched, then
read, since files may have been made in it before the watch was. The driver
keeps the listing in memory and brings the entries that events name up to
date once the events settle, then hands the core that part of the listing
(plug.report_part), to which the core applies exactly the rules it applies to
a polled listing, over those paths only. A full listing is taken at the start,
when the kernel's queue of events overflowed, when the root folder is another
one (a disk unplugged or plugged in), when a handler asks for one
(plug.look_again), and every poll_interval as a safety net; the whole listing
goes to the core then. What onitufs changes in the folder raises events like
any other change, so its writes call for no whole listing of their own: the
part that names them is enough, where a whole one would have the core compare
every entry of the tree after each burst of writes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator

from asyncinotify import Inotify, Mask, Watch

from onitufs.plug import TEMP_SUFFIX, ListingNeeded, Metadata, Plug, RemoteUnavailable, ancestors, outermost
from onitufs.storednames import mount_name

from .disknames import Disk
from .listing import FolderId, entry, folder_id, held_root, listing, require_root

# No CLOSE_WRITE: a write already says MODIFY. The root's own DELETE_SELF and MOVE_SELF
# (and the UNMOUNT and IGNORED the kernel always sends) call for a look at the root.
MASK = (Mask.CREATE | Mask.DELETE | Mask.MODIFY | Mask.ATTRIB | Mask.MOVED_FROM | Mask.MOVED_TO
        | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.DONT_FOLLOW | Mask.EXCL_UNLINK)
ROOT_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT | Mask.IGNORED

# How often the root folder is looked at: a disk unmounted from under it (umount -l of a
# bind mount) raises no event there.
TICK = 2.0
# Events are applied once none came for SETTLE (a file being written fires many), or MOST
# after the first of them (a file that keeps changing still shows); and a listing goes to
# the core at most every GAP, so that a burst of uploads does not have it compare the
# whole tree for each.
SETTLE = 0.1
MOST = 2.0
GAP = 0.5
EVENTS_READ = 1024  # the most events read at once (in full-length names: 270 KiB)

log = logging.getLogger(__name__)


class OutOfWatches(Exception):
    """The kernel cannot watch one more folder (fs.inotify.max_user_watches, or
    max_user_instances, is reached)."""


def depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def parent(path: str) -> str:
    return path.rpartition("/")[0]


class Tree:
    """What the root folder holds, kept up to date from the kernel's events."""

    def __init__(self, name: str, disk: Disk, give_way: Callable[[], None]) -> None:
        self.name, self.disk, self.give_way = name, disk, give_way
        self.held = disk  # the disk as reads and watches reach it (see _reading)
        try:
            self.inotify = Inotify(cache_size=EVENTS_READ)
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise OutOfWatches(f"no inotify instance: {error.strerror}") from error
            raise
        self.entries: dict[str, Metadata] = {}
        self.children: dict[str, set[str]] = {"": set()}  # by folder ("": the root)
        self.watches: dict[str, Watch] = {}  # by folder
        self.folders: dict[int, str] = {}  # the folder of each watch descriptor
        self.dropped: list[Watch] = []  # watches of folders no longer in the tree
        self.dirty: set[str] = set()  # paths events named since they were last applied
        # Folders whose watch ended (deleted) since events were last applied: one made in
        # their place may have their number, and so their file id, yet is not watched.
        self.unwatched: set[str] = set()
        self.stale = True  # only a full listing can tell (the start, an overflow)
        self.root_id: FolderId | None = None
        self.hidden: list[str] = []  # the stored paths of the hidden names the last one found

    def close(self) -> None:
        self.inotify.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[FolderId]:
        """The root folder held open while the tree is read, every read and watch going
        through it: all of them are of one folder, whatever its path leads to meanwhile
        (held_root). Yields its id. Held no longer: a folder held open keeps its disk from
        being unmounted (umount: target is busy)."""
        with held_root(self.disk) as (held, root):
            self.held = held
            try:
                yield root
            finally:
                self.held = self.disk

    def holds_root(self) -> bool:
        """Whether the root folder is still the one that was listed, through the same
        mount."""
        try:
            return folder_id(self.disk.root) == self.root_id
        except OSError:
            return False

    def listing(self) -> list[Metadata]:
        # Entries are replaced, never changed, so the core may keep what it is given.
        return list(self.entries.values())

    def _watch(self, folder: str, stored: str) -> None:
        try:
            # The root may be a symbolic link to the folder, as the listing takes it.
            mask = MASK if folder else MASK & ~Mask.DONT_FOLLOW
            watch = self.inotify.add_watch(os.path.join(self.held.root, stored), mask)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.ENOMEM):
                raise OutOfWatches(f"cannot watch {os.path.join(self.disk.root, stored)}: "
                                   f"{error.strerror}") from error
            raise
        # The same folder watched again (moved, or listed anew) keeps its descriptor.
        self.folders[watch.wd] = folder
        self.watches[folder] = watch

    def _add(self, md: Metadata) -> None:
        self.entries[md.path] = md
        self.children.setdefault(parent(md.path), set()).add(md.path)
        if md.kind == "dir":
            self.children.setdefault(md.path, set())

    def _drop(self, path: str) -> None:
        """Forget path and everything below it."""
        self.children.get(parent(path), set()).discard(path)
        below = [path]
        while below:
            gone = below.pop()
            self.entries.pop(gone, None)
            below.extend(self.children.pop(gone, ()))
            watch = self.watches.pop(gone, None)
            if watch is not None and self.folders.get(watch.wd) == gone:
                del self.folders[watch.wd]
                self.dropped.append(watch)

    def _forget_dropped(self) -> None:
        """Stop watching folders that left the tree (a folder moved out of it); one moved
        within it was watched again under its new name."""
        for watch in self.dropped:
            if watch.wd not in self.folders:
                with contextlib.suppress(OSError):  # gone with its folder
                    self.inotify.rm_watch(watch)
        self.dropped.clear()

    def list_all(self) -> bool:
        """Watch and list the whole tree anew; whether it differs from what was held.
        OSError or RemoteUnavailable if the root cannot be listed."""
        self.stale = False
        self.dirty.clear()
        self.unwatched.clear()
        require_root(self.disk.root)
        before = self.entries
        with self._reading() as self.root_id:
            self.dropped.extend(self.watches.values())
            self.watches, self.folders = {}, {}
            self.hidden = []
            listed = listing(self.held, self.give_way, watch=self._watch, known=before,
                             hidden=self.hidden)
            self.entries, self.children = {}, {"": set()}
            for md in listed:
                self._add(md)
            self._forget_dropped()
            # A name renamed while the walk went may be seen under both names or under
            # neither, which the core would take for a copy or a deletion: what the events
            # of the walk's time named is looked at again.
            self.read(0)
            self._apply()
        # The walk lists an unchanged entry as the very object held before (and the events
        # since replace what they name): compared by identity, stopping at the first
        # difference, with nothing made for a tree of 100,000 files unchanged.
        return len(before) != len(self.entries) or any(
            before.get(path) is not md for path, md in self.entries.items())

    def read(self, timeout: float) -> bool:
        """Take in the events the kernel holds, waiting up to timeout for the first;
        whether any came."""
        self.inotify.sync_timeout = timeout
        came = False
        while (event := self.inotify.sync_get()) is not None:
            came = True
            self.inotify.sync_timeout = 0
            if Mask.Q_OVERFLOW in event.mask:
                log.info("remote %s: the kernel's queue of change notices overflowed; "
                         "listing %s in full", self.name, self.disk.root)
                self.stale = True
                continue
            watch = event.watch
            folder = self.folders.get(watch.wd) if watch is not None else None
            if watch is None or folder is None:
                continue  # a folder no longer in the tree
            if event.name is None:  # the watched folder itself
                if not folder and event.mask & ROOT_GONE:
                    self.stale = True
                elif Mask.IGNORED in event.mask:
                    del self.folders[watch.wd]  # it went; its parent's event says so
                    self.unwatched.add(folder)
                continue
            name = mount_name(str(event.name))  # (entry() finds which is stored, if any)
            if not name.endswith(TEMP_SUFFIX):  # uploads in progress are not reported
                self.dirty.add(f"{folder}/{name}" if folder else name)
        return came

    def apply(self) -> tuple[bool, set[str]]:
        """Bring the entries the events named up to date; whether any changed, and the
        paths looked at, as a scope for plug.report_part. OSError if a new folder cannot
        be read. Nothing where the root's path leads to another folder than the one
        listed: the tree is stale then."""
        with self._reading() as root:
            if root != self.root_id:
                self.stale = True
                return False, set()
            return self._apply()

    def _apply(self) -> tuple[bool, set[str]]:
        changed = False
        scope = set(self.dirty)
        listed: set[str] = set()  # folders read in full here
        for path in sorted(self.dirty, key=depth):
            up = parent(path)
            if any(folder in listed for folder in ancestors(path)):
                continue  # read with its folder
            if up and (self.entries.get(up) is None or self.entries[up].kind != "dir"):
                continue  # its folder went, or is new and gets read in full
            md = entry(self.held, path)
            old = self.entries.get(path)
            if md is None:
                if old is not None:
                    self._drop(path)
                    changed = True
                continue
            if md.kind == "dir" and (old is None or old.kind != "dir"
                                     or old.file_id != md.file_id or path in self.unwatched):
                # A folder made, moved in, or put in place of another (which may have
                # given it its number): watched, then read.
                if old is not None:
                    self._drop(path)
                self._add(md)
                for inside in listing(self.held, self.give_way, path, watch=self._watch):
                    self._add(inside)
                listed.add(path)
                changed = True
                continue
            if old is not None and old.kind == "dir" and md.kind != "dir":
                self._drop(path)
            changed = changed or old is None or (old.revision, old.file_id) != (md.revision,
                                                                                 md.file_id)
            self._add(md)
        self.dirty.clear()
        self.unwatched.clear()
        self._forget_dropped()
        return changed, scope

    def part(self, scope: set[str]) -> tuple[list[Metadata], list[str]]:
        """What is held at and below the paths of `scope`, and those of its paths that
        are not below another: a part of the listing for plug.report_part."""
        tops = outermost(scope)
        found = []
        below = list(tops)
        while below:
            path = below.pop()
            md = self.entries.get(path)
            if md is not None:
                found.append(md)
            below.extend(self.children.get(path, ()))
        return found, tops


def follow(plug: Plug, disk: Disk, interval: float,
           sweep: Callable[[list[str]], None]) -> None:
    """Watch the root folder and report what it holds until the mount ends. Raises
    OutOfWatches when the kernel cannot watch all of it: then it must be polled. After
    each full listing, `sweep` finishes what a crash left at this mount's aside names
    (Asides.sweep), given the hidden names it found.
    plug.look_again, called by a handler that found a change no event named (a file
    written through a link from outside the folder, or by another machine on a network
    disk), makes the next listing a full one: the listing kept from events is wrong
    there, and would undo what Changed told the core, or keep showing a file whose
    reads fail until the safety net's listing. That listing goes to the core whole even
    when this tree finds nothing new in it: then the core's view is what was wrong.

    The paths events named go to the core as a part of the listing (report_part), so that
    its work follows the changes, not the size of the tree; the whole listing goes at the
    start and at each full listing, also when it is unchanged if onitufs changed the
    folder since the last one (plug.writes moved), as the core asks of every driver. The
    changes onitufs makes raise events too: they reach the core in parts like any other."""
    tree: Tree | None = None
    taken = False  # whether the core took the last listing sent (none yet: no)
    online = False
    reported = -1  # plug.writes when that listing began
    full_at = 0.0  # when the next full listing is due (time.monotonic)
    first = last = 0.0  # when the first and the last events not yet applied came (0: none)
    sent = 0.0  # when the last listing, or part, went to the core
    retry: set[str] = set()  # the paths of a part the core did not take: they go again
    try:
        while not plug.stopping.is_set():
            if tree is not None and plug.asked_to_look():
                tree.stale = True
            now = time.monotonic()
            part: set[str] | None = None  # None: the whole listing goes, if anything changed
            # (While events come, the folder is let settle first: rm -rf of it, then mkdir.)
            if tree is None or now >= full_at or (
                    not first and (tree.stale or not tree.holds_root())):
                started, writes = time.monotonic(), plug.writes
                # A listing the events were not trusted for (plug.look_again: a read found
                # what the reports did not say) goes whole even if it looks as the last one
                # did: what the core holds of it, not this tree, may be what is wrong.
                asked = tree is not None and tree.stale
                try:
                    if tree is None or not tree.holds_root():
                        if tree is not None:
                            tree.close()
                        tree, taken = Tree(plug.name, disk, plug.give_way), False  # its listing goes out
                    changed = tree.list_all() or asked
                    sweep(tree.hidden)
                except OutOfWatches:
                    raise
                except (OSError, RemoteUnavailable) as error:
                    if tree is not None:
                        tree.close()
                    tree, taken, online = None, False, False
                    reason = error.strerror if isinstance(error, OSError) and error.strerror \
                        else error
                    plug.offline(f"cannot list {disk.root}: {reason}")
                    plug.stopping.wait(min(interval, TICK))
                    continue
                full_at, first, retry = time.monotonic() + interval, 0.0, set()
            else:
                due = min(max(last + SETTLE, sent + GAP), first + MOST) if first \
                    else now + (GAP if retry else TICK)
                if tree.read(max(0.0, min(due, full_at) - now)):
                    last = time.monotonic()
                    first = first or last
                    if last - first < MOST:
                        continue
                if not first and not retry and taken:
                    continue  # a quiet tick
                if plug.asked_to_look():
                    tree.stale = True  # a full listing instead of the events' part
                started, writes = time.monotonic(), plug.writes
                tree.read(0)  # what changed before `started`, for the listing to hold
                events, first = bool(first), 0.0
                if tree.stale:
                    continue
                try:
                    changed, scope = tree.apply()
                except OSError:
                    tree.stale = True  # the full listing says what is wrong
                    continue
                if taken and (events or retry):
                    part = scope | retry
            if not tree.holds_root():
                # A disk unmounted meanwhile: what was read after that came from the folder
                # under it, and would read as deletions. The next full listing says.
                tree.stale = True
                continue
            if not online:
                plug.online()
                online = True
            if part:
                entries, tops = tree.part(part)
                try:
                    retry = set() if plug.report_part(entries, tops, started) else part
                    sent = time.monotonic()
                    continue
                except ListingNeeded:
                    taken = False
            elif part is not None:
                continue  # events of temp files only: nothing to report
            if changed or writes != reported or not taken:
                taken, reported, sent = plug.report_tree(tree.listing(), started), writes, \
                    time.monotonic()
                retry = set()
    finally:
        if tree is not None:
            tree.close()
