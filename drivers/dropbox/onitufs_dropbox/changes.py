"""Changes made on Dropbox: list_folder, then longpoll and continue, for the life of the mount.

The first time, the whole folder is listed (recursive) and reported with
plug.report_tree. From then on the cursor says where the listing stopped:
`list_folder/longpoll` waits for a change, `list_folder/continue` gives the
entries changed since (files, folders, deletes), which update the Tree, and
the Tree is reported whole: the core tells renames (the same Dropbox id at a
new path) from deletes plus creates, and a listing it has seen from a new one.
A `reset` cursor starts a full listing again, reported whole too, so nothing
is lost or counted twice. The cursor and the Tree are saved in the driver's
folder of the cache after each batch: the next mount catches up from there,
however long it was away.

A failure puts the remote offline with its reason, retried with backoff; a
refused token is retried once the token file changes (`onitufs auth`).
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
from onitufs.plug import Plug, RemoteUnavailable

from .client import Api
from .tree import Tree, node_of

log = logging.getLogger(__name__)
LONGPOLL_TIMEOUT = 30  # seconds: Dropbox's shortest
WAKE_EVERY = 0.2  # seconds: how often a wait looks at plug.writes and plug.stopping
MAX_BACKOFF = 30.0


class Reset(Exception):
    """Dropbox no longer knows the cursor: list everything again."""


class Watcher:
    def __init__(self, plug: Plug, api: Api, tree: Tree, state: Path | None,
                 reconnect: Callable[[], bool]) -> None:
        self.plug, self.api, self.tree, self.state = plug, api, tree, state
        self.reconnect = reconnect  # a new client if the token file changed
        self.cursor: str | None = None
        self._poll: threading.Thread | None = None
        self._poll_result: list[Any] = []
        self._changed = threading.Event()
        self._load()

    def run(self) -> None:
        backoff, reported_error = 0.5, None
        reported: int | None = None  # plug.writes when the last listing used whole began
        while not self.plug.stopping.is_set():
            started, writes = time.time(), self.plug.writes
            try:
                changed = self._catch_up()
            except RemoteUnavailable as error:
                reason = str(error)
                if reason != reported_error:
                    log.error("remote %s: %s", self.plug.name, reason)
                    reported_error = reason
                self.plug.offline(reason)
                if self.plug.stopping.wait(backoff):
                    return
                backoff = min(MAX_BACKOFF, backoff * 2)
                self.reconnect()
                continue
            if reported_error is not None:
                self.plug.online()
            # A listing like the last one is reported anyway when onitufs changed the
            # remote since that one began (see plug.writes).
            if changed or reported_error is not None or reported != writes:
                used = self.plug.report_tree(self.tree.listing(), started)
                reported = writes if used else None
            backoff, reported_error = 0.5, None
            self._wait(writes)

    def _catch_up(self) -> bool:
        """Bring the Tree up to date with Dropbox; whether anything changed."""
        try:
            if self.cursor is not None:
                return self._continue()
        except Reset:
            log.info("remote %s: Dropbox reset the listing; listing everything again",
                     self.plug.name)
            self.cursor = None
        self._list_all()
        return True

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
        self._apply(entries)
        self.cursor = result.cursor
        self._save()

    def _continue(self) -> bool:
        assert self.cursor is not None
        changed, more = False, True
        while more:
            try:
                result = self.api.call(self.api.client.files_list_folder_continue, self.cursor)
            except ApiError as error:
                if isinstance(error.error, files.ListFolderContinueError) \
                        and error.error.is_reset():
                    raise Reset() from None
                raise RemoteUnavailable(f"cannot list {self.tree.root or '/'} on Dropbox: "
                                        f"{error.error}") from None
            self._apply(result.entries)
            changed = changed or bool(result.entries)
            self.cursor, more = result.cursor, result.has_more
        if changed:
            self._save()
        return changed

    def _apply(self, entries: list[files.Metadata]) -> None:
        for entry in entries:
            relative = self.tree.relative(entry.path_lower or "")
            if not relative:
                continue  # the root folder itself
            node = node_of(entry, relative if entry.path_display is None
                           else self.tree.relative(entry.path_display))
            if node is None:
                self.tree.remove(relative)
            else:
                self.tree.put(relative, node)

    def _wait(self, writes: int) -> None:
        """Until Dropbox has news (longpoll), plug.writes moved, or the mount ends."""
        if self._poll is None or not self._poll.is_alive():
            self._changed.clear()
            self._poll = threading.Thread(target=self._longpoll, args=(self.cursor,),
                                          daemon=True, name=f"dropbox-longpoll-{self.plug.name}")
            self._poll.start()
        while not self.plug.stopping.is_set():
            if self._changed.wait(WAKE_EVERY) or self.plug.writes != writes:
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
        if self.state is None:
            return
        data = json.dumps({"root": self.tree.root, "cursor": self.cursor,
                           "nodes": self.tree.dump()}).encode()
        write_atomically(self.state, data)
