"""`git-annex-remote-onitufs`: an onitufs mount as a git-annex external special remote.

git-annex runs this program and speaks its external special remote protocol with it
(VERSION 2, the INFO and ASYNC extensions, the export interface). Each request is
answered here from the mount (mountstore.py does the work); lanes.py carries the jobs.
Content is reported stored only once the mount's remotes hold it as `durable` asks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..oneline import one_line
from .lanes import Fatal, Lane, Output, serve
from .mountstore import Failed, MountStore, Unavailable, parse_settings
from .protocol import Message

CONFIGS = {
    "mount": "the mount point of the onitufs mount to store into (needed)",
    "prefix": "the folder of the mount that holds the content (default: the mount's root)",
    "durable": "all (default): every writable remote holds content before it counts as "
               "stored; or a number of remotes",
    "onitufsconfig": "set by initremote: the config file of the mount, checked at each use",
}
# What git-annex may ask before PREPARE (while it sets the remote up).
UNPREPARED = {"EXTENSIONS", "INITREMOTE", "PREPARE", "LISTCONFIGS", "GETCOST", "GETAVAILABILITY",
              "EXPORTSUPPORTED"}
# A read from the mount is local when the content is cached and comes from a remote when
# not: between git-annex's semi-cheap and expensive.
COST = 175


class SpecialRemote:
    """The answers to git-annex's requests; one instance serves every job."""

    def __init__(self) -> None:
        self._store: MountStore | None = None
        self._export_names: dict[bytes | None, bytes] = {}

    def handle(self, lane: Lane, message: Message) -> None:
        command = message.command
        handler = getattr(self, "do_" + command.replace("-", "_").lower(), None)
        if handler is None:
            lane.send("UNSUPPORTED-REQUEST")
            return
        if command in UNPREPARED:
            handler(lane, message)
            return
        store = self._store
        if store is None:
            raise Fatal(f"{command} before PREPARE")
        handler(lane, message, store)

    # set-up

    def do_extensions(self, lane: Lane, message: Message) -> None:
        lane.send("EXTENSIONS", "INFO ASYNC")

    def _settings_store(self, lane: Lane, config: str | None) -> MountStore:
        settings = parse_settings(lane.ask("GETCONFIG", "mount"), lane.ask("GETCONFIG", "prefix"),
                                  lane.ask("GETCONFIG", "durable"), config)
        return MountStore(settings)

    def do_initremote(self, lane: Lane, message: Message) -> None:
        try:
            recorded = lane.ask("GETCONFIG", "onitufsconfig")  # set before: enableremote
            store = self._settings_store(lane, recorded)
            status = store.status()
        except (ValueError, Unavailable) as error:
            lane.send("INITREMOTE-FAILURE", one_line(str(error)))
            return
        lane.send("SETCONFIG", "onitufsconfig", status["config"])
        lane.send("INITREMOTE-SUCCESS")

    def do_prepare(self, lane: Lane, message: Message) -> None:
        try:
            store = self._settings_store(lane, lane.ask("GETCONFIG", "onitufsconfig"))
        except ValueError as error:
            lane.send("PREPARE-FAILURE", one_line(str(error)))
            return
        # Whether the mount is there is checked at each request, which then fails with the
        # reason (a mount may come and go while git-annex runs).
        self._store = store  # for every job: git-annex prepares only the first
        lane.send("PREPARE-SUCCESS")

    def do_listconfigs(self, lane: Lane, message: Message) -> None:
        for name, description in CONFIGS.items():
            lane.send("CONFIG", name, description)
        lane.send("CONFIGEND")

    def do_getcost(self, lane: Lane, message: Message) -> None:
        lane.send("COST", COST)

    def do_getavailability(self, lane: Lane, message: Message) -> None:
        lane.send("AVAILABILITY", "LOCAL")  # a mount point is of this computer

    def do_getinfo(self, lane: Lane, message: Message, store: MountStore) -> None:
        settings = store.settings
        fields = {"mount": str(settings.mount), "prefix": str(settings.prefix),
                  "durable": "all" if settings.durable is None else str(settings.durable),
                  "onitufs config": settings.config or "not recorded"}
        for name, value in fields.items():
            lane.send("INFOFIELD", name)
            lane.send("INFOVALUE", value)
        lane.send("INFOEND")

    # keys

    def _key_path(self, lane: Lane, store: MountStore, key: str) -> Path:
        return store.key_path(key, lane.ask("DIRHASH-LOWER", key))

    def do_transfer(self, lane: Lane, message: Message, store: MountStore) -> None:
        direction, key, file = message.text(0), message.text(1), Path(os.fsdecode(message.params[2]))
        self._transfer(lane, store, direction, key, file, self._key_path(lane, store, key),
                       "TRANSFER-SUCCESS", "TRANSFER-FAILURE")

    def _transfer(self, lane: Lane, store: MountStore, direction: str, key: str, file: Path,
                  path: Path, success: str, failure: str) -> None:
        def progress(done: int) -> None:
            lane.send("PROGRESS", done)
        try:
            if direction == "STORE":
                store.store(file, path, key, progress)
            elif direction == "RETRIEVE":
                store.retrieve(path, file, progress)
            else:
                raise Failed(f"not a direction: {direction}")
        except (Failed, Unavailable) as error:
            lane.send(failure, direction, key, one_line(str(error)))
            return
        lane.send(success, direction, key)

    def _checkpresent(self, lane: Lane, store: MountStore, key: str, path: Path) -> None:
        try:
            present = store.present(path, key)
        except Unavailable as error:
            lane.send("CHECKPRESENT-UNKNOWN", key, one_line(str(error)))
            return
        lane.send("CHECKPRESENT-SUCCESS" if present else "CHECKPRESENT-FAILURE", key)

    def do_checkpresent(self, lane: Lane, message: Message, store: MountStore) -> None:
        key = message.text(0)
        self._checkpresent(lane, store, key, self._key_path(lane, store, key))

    def _remove(self, lane: Lane, store: MountStore, key: str, path: Path) -> None:
        try:
            store.remove(path, key)
        except (Failed, Unavailable) as error:
            lane.send("REMOVE-FAILURE", key, one_line(str(error)))
            return
        lane.send("REMOVE-SUCCESS", key)

    def do_remove(self, lane: Lane, message: Message, store: MountStore) -> None:
        key = message.text(0)
        self._remove(lane, store, key, self._key_path(lane, store, key))

    def do_whereis(self, lane: Lane, message: Message, store: MountStore) -> None:
        try:
            held = store.where(self._key_path(lane, store, message.text(0)))
        except (OSError, Unavailable):
            held = []
        if held:
            lane.send("WHEREIS-SUCCESS", "onitufs remotes " + ", ".join(held))
        else:
            lane.send("WHEREIS-FAILURE")

    # export: files under their own names below prefix

    def do_exportsupported(self, lane: Lane, message: Message) -> None:
        lane.send("EXPORTSUPPORTED-SUCCESS")

    def do_export(self, lane: Lane, message: Message, store: MountStore) -> None:
        self._export_names[lane.job] = message.params[0]  # no reply: names the next request

    def _export_path(self, lane: Lane, store: MountStore) -> Path:
        name = self._export_names.pop(lane.job, None)
        if name is None:
            raise Fatal("an export request without EXPORT before it")
        return store.export_path(name)

    def do_transferexport(self, lane: Lane, message: Message, store: MountStore) -> None:
        direction, key = message.text(0), message.text(1)
        try:
            path = self._export_path(lane, store)
        except Failed as error:
            lane.send("TRANSFER-FAILURE", direction, key, one_line(str(error)))
            return
        self._transfer(lane, store, direction, key, Path(os.fsdecode(message.params[2])), path,
                       "TRANSFER-SUCCESS", "TRANSFER-FAILURE")

    def do_checkpresentexport(self, lane: Lane, message: Message, store: MountStore) -> None:
        key = message.text(0)
        try:
            path = self._export_path(lane, store)
        except Failed as error:
            lane.send("CHECKPRESENT-UNKNOWN", key, one_line(str(error)))
            return
        self._checkpresent(lane, store, key, path)

    def do_removeexport(self, lane: Lane, message: Message, store: MountStore) -> None:
        key = message.text(0)
        try:
            path = self._export_path(lane, store)
        except Failed as error:
            lane.send("REMOVE-FAILURE", key, one_line(str(error)))
            return
        self._remove(lane, store, key, path)

    def do_renameexport(self, lane: Lane, message: Message, store: MountStore) -> None:
        key = message.text(0)
        try:
            store.rename(self._export_path(lane, store), store.export_path(message.params[1]),
                         key)
        except (Failed, Unavailable):
            lane.send("RENAMEEXPORT-FAILURE", key)
            return
        lane.send("RENAMEEXPORT-SUCCESS", key)

    def do_removeexportdirectory(self, lane: Lane, message: Message, store: MountStore) -> None:
        try:
            store.remove_folder(store.export_path(message.params[0]))
        except (Failed, Unavailable):
            lane.send("REMOVEEXPORTDIRECTORY-FAILURE")
            return
        lane.send("REMOVEEXPORTDIRECTORY-SUCCESS")


def main() -> int:
    output = Output(sys.stdout.buffer)
    output.write(None, b"VERSION 2\n")
    try:
        serve(SpecialRemote().handle, sys.stdin.buffer, output)
    except Fatal as error:
        output.write(None, ("ERROR " + one_line(str(error)) + "\n").encode("utf-8", "replace"))
        return 1
    return 0
