"""One request to a program, and everything said until its reply.

While a program handles a request it may ask onitufs what it would ask
git-annex: its settings (GETCONFIG, from the remote's `config` table or what
it set at INITREMOTE), the remote's UUID, a git folder of its own, the
remote's name, credentials, per-key state, and the directory hashes of a
key. Those are answered here as git-annex answers them; PROGRESS, DEBUG and
INFO only show that it is alive (DEBUG and INFO go to the log). A program
that stays silent for longer than allowed, or says anything the protocol
does not allow there, is a Fault.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path

from onitufs.gitannex.keys import dirhash_lower, dirhash_mixed
from onitufs.gitannex.protocol import Message, ProtocolError, line

from .program import Fault, Lane
from .state import ProgramState

log = logging.getLogger(__name__)
TICK = 0.5  # how often a silent program's output file is looked at
# Told to git-annex and ignored by it unless it keeps web URLs or preferred content.
IGNORED = frozenset({"SETWANTED", "SETURLPRESENT", "SETURLMISSING", "SETURIPRESENT",
                     "SETURIMISSING"})
SECRET = frozenset({"SETCREDS", "CREDS"})  # never in a log


def shown(data: bytes) -> str:
    """A protocol line as the log may show it: credentials left out."""
    text = data.decode("utf-8", "backslashreplace").rstrip("\n")
    word = text.split(" ", 1)[0]
    return f"{word} ..." if word in SECRET else text


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else -1
    except OSError:
        return -1


class Host:
    """What onitufs is to one remote's programs: git-annex."""

    def __init__(self, name: str, state: ProgramState, gitdir: Path, timeout: float) -> None:
        self.name = name
        self.state = state
        self.gitdir = gitdir
        self.timeout = timeout

    def ask(self, lane: Lane, request: bytes, replies: frozenset[str], *,
            allowed: float | None = None, watch: Path | None = None,
            settings: dict[str, str] | None = None,
            moving: Callable[[int | None], None] = lambda done: None) -> Message:
        """Send `request` and answer the program until it replies with one of `replies` (or
        UNSUPPORTED-REQUEST). It may stay silent `allowed` seconds at a time (default: the
        timeout); a file `watch` that grows counts as speaking. `settings` collects what
        it sets with SETCONFIG during INITREMOTE. `moving` is called every TICK while it
        is not taken for hung (a transfer is under way), and with the bytes done at each
        PROGRESS."""
        label = lane.program.label
        log.debug("%s <- %s", label, shown(request))
        lane.send(request)
        limit = self.timeout if allowed is None else allowed
        heard, seen = time.monotonic(), _size(watch)
        while True:
            try:
                message = lane.receive(TICK)
            except queue.Empty:
                # a job of an ASYNC program waits while the program works on another
                now, size = time.monotonic(), _size(watch)
                heard = max(heard, lane.program.last_heard)
                if size != seen:
                    heard, seen = now, size
                elif now - heard > limit:
                    raise Fault(f"{label} answered nothing for {limit:.0f} s "
                                f"(to {shown(request).split(' ', 1)[0]})") from None
                moving(None)
                continue
            heard = time.monotonic()
            if message.command == "PROGRESS":
                try:
                    moving(message.number(0))
                except ProtocolError as error:
                    raise Fault(f"{label} sent a bad PROGRESS: {error}") from None
                continue
            moving(None)
            if message.command in replies or message.command == "UNSUPPORTED-REQUEST":
                log.debug("%s -> %s %s", label, message.command,
                          b" ".join(message.params).decode("utf-8", "backslashreplace"))
                return message
            answer = self._answer(label, message, settings)
            if answer is not None:
                log.debug("%s <- %s", label, shown(answer))
                lane.send(answer)

    def _answer(self, label: str, message: Message, settings: dict[str, str] | None) -> bytes | None:
        command = message.command
        try:
            if command in ("DEBUG", "INFO"):
                log.log(logging.DEBUG if command == "DEBUG" else logging.INFO, "%s: %s", label,
                        message.text(0))
                return None
            if command == "GETCONFIG":
                return line("VALUE", self.state.get_config(message.text(0)))
            if command == "SETCONFIG":
                if settings is not None:
                    settings[message.text(0)] = message.text(1)
                else:
                    self.state.set_config(message.text(0), message.text(1))
                return None
            if command == "GETUUID":
                return line("VALUE", self.state.uuid)
            if command == "GETGITDIR":
                return line("VALUE", str(self.gitdir))
            if command == "GETGITREMOTENAME":
                return line("VALUE", self.name)
            if command == "GETCREDS":
                return line("CREDS", *self.state.get_creds(message.text(0)))
            if command == "SETCREDS":
                self.state.set_creds(message.text(0), message.text(1), message.text(2))
                return None
            if command == "GETSTATE":
                return line("VALUE", self.state.get_state(message.text(0)))
            if command == "SETSTATE":
                self.state.set_state(message.text(0), message.text(1))
                return None
            if command == "DIRHASH":
                return line("VALUE", dirhash_mixed(message.text(0)))
            if command == "DIRHASH-LOWER":
                return line("VALUE", dirhash_lower(message.text(0)))
            if command in ("GETWANTED", "GETURLS"):
                return line("VALUE", "")  # no preferred content; no URLs (the list ends)
            if command in IGNORED:
                return None
        except (ProtocolError, ValueError) as error:
            raise Fault(f"{label} sent a bad {command}: {error}") from None
        raise Fault(f"{label} sent {command} where the protocol allows none")
