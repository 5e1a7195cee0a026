"""Changes made on Dropbox: list_folder, then longpoll and continue, for the life of the mount.

The first time, the whole folder is listed (recursive) and reported with
plug.report_tree. From then on the cursor says where the listing stopped:
`list_folder/longpoll` waits for a change, `list_folder/continue` gives the
entries changed since (files, folders, deletes), which update the Tree, and
what the Tree holds at the paths they named, before and after, goes to the
core as a part of the listing (plug.report_part): its work follows the
change, not the size of the folder. The core tells renames (the same Dropbox
id at a new path) from deletes plus creates. Onitufs's own changes come back
in that way too, as any other change does: a part the core does not take
(onitufs was changing a path of it) goes again. The paths onitufs changed or
took a version of from a handler's answer (plug.written_paths) go in each part
too: such an answer (a conflict's current version) may be older than a change
the list already gave, and gives no more. The Tree is reported whole
at the start, after an outage, when the core asks for it (plug.look_again,
ListingNeeded), and after a `reset` cursor, which lists everything again, so
nothing is lost or counted twice; before each whole report, the folder
deletes a fault or a crash cut short after their move aside are finished
(their hidden folders would stay on Dropbox for good otherwise). The cursor
and the Tree are saved in the driver's folder of the cache, at most every
SAVE_EVERY seconds and at the end: the next mount catches up from there,
however long it was away (an older save only has it go through changes it
already has again).

A failure puts the remote offline with its reason, retried with backoff; after a
refused token, at once when a new one is taken (its Lookout).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dropbox import files
from dropbox.exceptions import ApiError

from onitufs.durable import write_atomically
from onitufs.plug import Plug, RemoteUnavailable, Reports

from .client import Api
from .tree import Tree, node_of

log = logging.getLogger(__name__)
LONGPOLL_TIMEOUT = 30  # seconds: Dropbox's shortest
WAKE_EVERY = 0.2  # seconds: how often a wait looks at plug.writes and plug.stopping
AGAIN_AFTER = 1.0  # seconds before a report the core did not take goes again
SAVE_EVERY = 30.0  # seconds: writing the Tree out takes time in proportion to its size
MAX_BACKOFF = 30.0


class Reset(Exception):
    """Dropbox no longer knows the cursor: list everything again."""


class Watcher:
    def __init__(self, plug: Plug, api: Api, tree: Tree, state: Path | None,
                 sweep: Callable[[], None]) -> None:
        self.plug, self.api, self.tree, self.state = plug, api, tree, state
        self.sweep = sweep  # finishes folder deletes cut short, before each whole report
        self.cursor: str | None = None
        self._poll: threading.Thread | None = None
        self._poll_result: list[Any] = []
        self._changed = threading.Event()
        self._asked = False  # plug.look_again asked for the whole listing during a wait
        self._unsaved = False  # the Tree or the cursor changed since they were saved
        self._saved_at = 0.0  # time.monotonic() of the last save, or try
        self._save_error: str | None = None  # why the last save failed, said once
        self._load()

    def run(self) -> None:
        try:
            self._follow()
        finally:
            if self._unsaved:
                self._save()

    def _follow(self) -> None:
        backoff, reported_error = 0.5, None
        reports = Reports(self.plug)
        while not self.plug.stopping.is_set():
            started, writes, written = time.monotonic(), self.plug.writes, \
                self.plug.written_paths()
            whole, self._asked = self._asked or self.plug.asked_to_look(), False
            whole = whole or reported_error is not None
            try:
                scope = self._catch_up()
                if whole or scope is None or not reports.taken:
                    self.sweep()
            except RemoteUnavailable as error:
                reason = str(error)
                if reason != reported_error:
                    log.error("remote %s: %s", self.plug.name, reason)
                    reported_error = reason
                self.plug.offline(reason)
                if self._wait_out(backoff):
                    return
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            if reported_error is not None:
                self.plug.online()
            reports.send(started, None if whole or scope is None else scope | written,
                         self.tree.listing, self.tree.part)
            backoff, reported_error = 0.5, None
            if self._unsaved and time.monotonic() - self._saved_at >= SAVE_EVERY:
                self._save()
            self._wait(writes, soon=reports.owed)

    def _catch_up(self) -> set[str] | None:
        """Bring the Tree up to date with Dropbox: the mount paths where something changed,
        or None when everything was listed anew."""
        try:
            if self.cursor is not None:
                return self._continue()
        except Reset:
            log.info("remote %s: Dropbox reset the listing; listing everything again",
                     self.plug.name)
            self.cursor = None
        self._list_all()
        return None

    def _list_all(self) -> None:
        client = self.api.client
        try:
            result = self.api.call(client.files_list_folder, self.tree.root, recursive=True,
                                   include_non_downloadable_files=False)
            entries = list(result.entries)
            while result.has_more:
                result = self.api.call(client.files_list_folder_continue, result.cursor)
                entries += result.entries
        except ApiError as error:  # the folder gone, say: an outage, never a mass delete
            raise RemoteUnavailable(f"cannot list {self.tree.root or '/'} on Dropbox: "
                                    f"{error.error}") from None
        self.tree.clear()
        self._apply(entries, set())
        self.cursor = result.cursor
        self._save()

    def _continue(self) -> set[str]:
        assert self.cursor is not None
        scope: set[str] = set()
        more = True
        while more:
            try:
                result = self.api.call(self.api.client.files_list_folder_continue, self.cursor)
            except ApiError as error:
                if isinstance(error.error, files.ListFolderContinueError) \
                        and error.error.is_reset():
                    raise Reset() from None
                raise RemoteUnavailable(f"cannot list {self.tree.root or '/'} on Dropbox: "
                                        f"{error.error}") from None
            self._apply(result.entries, scope)
            self.cursor, more = result.cursor, result.has_more
            self._unsaved = self._unsaved or bool(result.entries)
        return scope

    def _apply(self, entries: list[files.Metadata], scope: set[str]) -> None:
        """Update the Tree; the mount paths of what the entries change, before and after,
        go into `scope` (a folder's old path holds what was in it)."""
        named: list[str] = []
        for entry in entries:
            relative = self.tree.relative(entry.path_lower or "")
            if not relative:
                continue  # the root folder itself
            before = self.tree.shown_at(relative)
            if before is not None:
                scope.add(before)
            node = node_of(entry, relative if entry.path_display is None
                           else self.tree.relative(entry.path_display))
            if node is None:
                self.tree.remove(relative)
            else:
                self.tree.put(relative, node)
                named.append(relative)
        # After the whole batch: a folder renamed in it changes the paths of what it holds.
        scope.update(path for path in map(self.tree.shown_at, named) if path is not None)

    def _wait_out(self, backoff: float) -> bool:
        """Wait `backoff` seconds before trying again, less if the token Dropbox refused is
        replaced meanwhile (`onitufs auth`, whose user waits); True if the mount is
        stopping."""
        if not self.api.refused:
            return self.plug.stopping.wait(backoff)
        deadline = time.monotonic() + backoff
        while self.api.refused and (left := deadline - time.monotonic()) > 0:
            if self.plug.stopping.wait(min(WAKE_EVERY, left)):
                return True
        return False

    def _wait(self, writes: int, soon: bool) -> None:
        """Until Dropbox has news (longpoll), plug.writes moved, the core asked for a
        listing (plug.look_again), AGAIN_AFTER passed if `soon`, or the mount ends."""
        if self._poll is None or not self._poll.is_alive():
            self._changed.clear()
            self._poll = threading.Thread(target=self._longpoll, args=(self.cursor,),
                                          daemon=True, name=f"dropbox-longpoll-{self.plug.name}")
            self._poll.start()
        until = time.monotonic() + AGAIN_AFTER if soon else float("inf")
        while not self.plug.stopping.is_set():
            if self._changed.wait(WAKE_EVERY) or self.plug.writes != writes \
                    or time.monotonic() >= until:
                return
            if self.plug.asked_to_look():
                self._asked = True
                return

    def _longpoll(self, cursor: str) -> None:
        """On a thread of its own: a longpoll may last LONGPOLL_TIMEOUT seconds and more,
        which the end of the mount must not wait for."""
        try:
            result = self.api.call(self.api.client.files_list_folder_longpoll, cursor,
                                   LONGPOLL_TIMEOUT)
            if result.backoff and not result.changes:
                self.plug.stopping.wait(result.backoff)
        except Exception as error:  # the continue that follows says what is wrong
            log.debug("remote %s: longpoll: %s", self.plug.name, type(error).__name__)
            self.plug.stopping.wait(1.0)
        self._changed.set()

    # saved between mounts

    def _load(self) -> None:
        if self.state is None:
            return
        try:
            saved = json.loads(self.state.read_bytes())
        except (FileNotFoundError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("root") == self.tree.root \
                and isinstance(saved.get("cursor"), str):
            self.tree.load(saved.get("nodes") or [])
            self.cursor = saved["cursor"]

    def _save(self) -> None:
        """Write the Tree and the cursor out. Where that fails (a full disk), the save
        before stays, which only has the next mount go through more changes again: said
        in the log, and tried again SAVE_EVERY later."""
        if self.state is None:
            return
        data = json.dumps({"root": self.tree.root, "cursor": self.cursor,
                           "nodes": self.tree.dump()}).encode()
        self._saved_at = time.monotonic()
        try:
            write_atomically(self.state, data)
        except OSError as error:
            if str(error) != self._save_error:
                log.warning("remote %s: cannot save where Dropbox's list of changes stopped "
                            "(%s); the next mount goes through more of it again",
                            self.plug.name, error)
                self._save_error = str(error)
            return
        self._unsaved, self._save_error = False, None
