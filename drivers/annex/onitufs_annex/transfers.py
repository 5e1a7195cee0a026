"""What onitufs asks of a special remote: store, retrieve, check and remove a key.

A file handed to the program is named without whitespace, as git-annex
names its own (some programs split the line on every space). A transfer may
stay silent for the timeout plus one second per MiB it moves before the
program is taken for hung; a retrieve whose file grows is not silent.
Meanwhile the core is told the transfer moves (Plug.progress), so that a
store that takes minutes after the last chunk is no stall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onitufs.gitannex.protocol import WHITESPACE, Message, line
from onitufs.plug import DriverError, RemoteUnavailable

from .host import Host
from .pool import Pool
from .program import Fault

MIB = 1 << 20
TRANSFER_REPLIES = frozenset({"TRANSFER-SUCCESS", "TRANSFER-FAILURE"})


def _exportable(path: str) -> bytes:
    """A path of the mount as the protocol names it: its bytes, any but a newline."""
    name = path.encode("utf-8", "surrogateescape")
    if b"\n" in name:
        raise DriverError(f"{path!r}: a name with a newline cannot be exported")
    return name


def _why(reply: Message, index: int) -> str:
    return reply.text(index) if len(reply.params) > index and reply.params[index] \
        else "no reason given"


class Special:
    def __init__(self, pool: Pool, host: Host,
                 moving: Callable[[int | None, int | None], None]) -> None:
        self.pool = pool
        self.host = host
        self.label = pool.label
        self.moving = moving  # told while a transfer runs (Plug.progress): no stall

    def store(self, key: str, path: Path, size: int) -> None:
        self._transfer("STORE", key, path, size)

    def retrieve(self, key: str, path: Path, size: int) -> None:
        self._transfer("RETRIEVE", key, path, size)

    def _transfer(self, direction: str, key: str, path: Path, size: int,
                  exported: bytes | None = None) -> None:
        """TRANSFER, or with `exported` (a path on the remote) EXPORT and TRANSFEREXPORT."""
        name = bytes(path)
        if any(byte in WHITESPACE for byte in name):
            raise ValueError(f"{path}: a file handed to a program holds whitespace")
        request = "TRANSFER" if exported is None else "TRANSFEREXPORT"
        with self.pool.lane() as lane:
            if exported is not None:
                lane.send(line("EXPORT", exported))
            reply = self.host.ask(lane, line(request, direction, key, name), TRANSFER_REPLIES,
                                  allowed=self.host.timeout + size / MIB,
                                  watch=path if direction == "RETRIEVE" else None,
                                  moving=lambda done: self.moving(done, size))
            self._check(reply, request, direction.encode(), key.encode())
        if reply.command == "TRANSFER-FAILURE":
            where = f" as {exported.decode('utf-8', 'surrogateescape')}" if exported else ""
            raise DriverError(f"{self.label}: {direction} {key}{where} failed: "
                              f"{_why(reply, 2)}")

    # The export interface: files under their own paths (`exported`, as the mount names them)

    def export_store(self, exported: str, key: str, path: Path, size: int) -> None:
        self._transfer("STORE", key, path, size, _exportable(exported))

    def export_retrieve(self, exported: str, key: str, path: Path, size: int) -> None:
        self._transfer("RETRIEVE", key, path, size, _exportable(exported))

    def export_remove(self, exported: str, key: str) -> None:
        with self.pool.lane() as lane:
            lane.send(line("EXPORT", _exportable(exported)))
            reply = self.host.ask(lane, line("REMOVEEXPORT", key),
                                  frozenset({"REMOVE-SUCCESS", "REMOVE-FAILURE"}))
            self._check(reply, "REMOVEEXPORT", key.encode())
        if reply.command == "REMOVE-FAILURE":
            raise DriverError(f"{self.label}: removing {exported} failed: {_why(reply, 1)}")

    def export_rename(self, exported: str, key: str, new: str) -> bool:
        """Whether the program renamed it (False: it cannot rename, or failed to)."""
        with self.pool.lane() as lane:
            lane.send(line("EXPORT", _exportable(exported)))
            reply = self.host.ask(lane, line("RENAMEEXPORT", key, _exportable(new)),
                                  frozenset({"RENAMEEXPORT-SUCCESS", "RENAMEEXPORT-FAILURE"}))
            if reply.command != "UNSUPPORTED-REQUEST":
                self._check(reply, "RENAMEEXPORT", key.encode())
        return reply.command == "RENAMEEXPORT-SUCCESS"

    def export_remove_folder(self, exported: str) -> None:
        """Remove an exported folder, where the program has folders to remove."""
        with self.pool.lane() as lane:
            reply = self.host.ask(lane, line("REMOVEEXPORTDIRECTORY", _exportable(exported)),
                                  frozenset({"REMOVEEXPORTDIRECTORY-SUCCESS",
                                             "REMOVEEXPORTDIRECTORY-FAILURE"}))
        if reply.command == "REMOVEEXPORTDIRECTORY-FAILURE":
            raise DriverError(f"{self.label}: removing the folder {exported} failed")

    def present(self, key: str) -> bool:
        """Whether the remote holds the key; RemoteUnavailable when it cannot tell."""
        with self.pool.lane() as lane:
            reply = self.host.ask(lane, line("CHECKPRESENT", key), frozenset(
                {"CHECKPRESENT-SUCCESS", "CHECKPRESENT-FAILURE", "CHECKPRESENT-UNKNOWN"}))
            self._check(reply, "CHECKPRESENT", key.encode())
        if reply.command == "CHECKPRESENT-UNKNOWN":
            raise RemoteUnavailable(f"{self.label}: cannot tell whether it holds {key}: "
                                    f"{_why(reply, 1)}")
        return reply.command == "CHECKPRESENT-SUCCESS"

    def remove(self, key: str) -> None:
        with self.pool.lane() as lane:
            reply = self.host.ask(lane, line("REMOVE", key),
                                  frozenset({"REMOVE-SUCCESS", "REMOVE-FAILURE"}))
            self._check(reply, "REMOVE", key.encode())
        if reply.command == "REMOVE-FAILURE":
            raise DriverError(f"{self.label}: REMOVE {key} failed: {_why(reply, 1)}")

    def _check(self, reply: Message, request: str, *expected: bytes) -> None:
        """The reply is about what was asked (a required request cannot be unsupported)."""
        if reply.command == "UNSUPPORTED-REQUEST":
            raise Fault(f"{self.label} does not support {request}, which every special "
                        "remote must")
        if reply.params[:len(expected)] != expected:
            raise Fault(f"{self.label} answered {request} {b' '.join(expected)!r} with "
                        f"{reply.command} {b' '.join(reply.params[:len(expected)])!r}")
