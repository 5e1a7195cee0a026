"""The programs that serve one remote: started as needed, prepared once, replaced on a fault.

Up to `size` requests run at once, each on a lane of its own: a program of
its own, or a job of one program that took the ASYNC extension. A new
program says VERSION, is offered the extensions onitufs speaks (a program
that answers that with ERROR, or by exiting, is started again and never
offered them after), runs INITREMOTE if the remote has not been set up with
its present configuration, and PREPARE before its first request (and, for a
remote that exports, EXPORTSUPPORTED, which it must answer with success).
The first program is asked GETCOST (the remote's read cost, for the core to
read from the cheapest remote) and GETAVAILABILITY: while the program says
UNAVAILABLE, the remote is offline, and each new program is asked again.

When a request ends in a Fault the program is killed, with whatever it
started, its last words are kept (what went wrong and the last line of its
standard error), and the request fails with RemoteUnavailable naming them:
the core retries it later and shows the remote offline meanwhile. A program
that ended between two requests (rclone exits after some failures) is
replaced quietly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from onitufs.gitannex.protocol import line
from onitufs.plug import EXPENSIVE, RemoteUnavailable

from .host import Host
from .program import Fault, Lane, Program

log = logging.getLogger(__name__)
OFFERED = ("INFO", "ASYNC", "GETGITREMOTENAME")
AVAILABILITIES = ("GLOBAL", "LOCAL", "UNAVAILABLE")
CLOSE_GRACE = 2.0  # seconds the programs get to exit once hung up on


class Pool:
    def __init__(self, argv: list[str], cwd: Path, host: Host, size: int, label: str,
                 export: bool = False,
                 on_cost: Callable[[int], None] = lambda cost: None) -> None:
        self.argv = argv
        self.export = export  # every program must support the export interface
        self.cwd = cwd
        self.host = host
        self.size = size
        self.label = label
        self.last_words: str | None = None
        self._cond = threading.Condition()
        self._idle: list[Lane] = []
        self._busy = 0
        self._programs: list[Program] = []
        self._offer_extensions = True
        self._ask_optional = True
        # What the program answered to GETCOST and GETAVAILABILITY (None: not asked yet)
        self.cost: int | None = None
        self.on_cost = on_cost
        self.availability: str | None = None
        self._init_lock = threading.Lock()
        self.closed = False

    @contextmanager
    def lane(self) -> Iterator[Lane]:
        """A prepared lane for one request; a Fault in it kills its program and becomes
        RemoteUnavailable with the program's last words."""
        lane = self._acquire()
        try:
            yield lane
        except Fault as fault:
            raise RemoteUnavailable(self._lost(lane.program, fault)) from None
        except BaseException:
            # cut short on our side: what the program will say next is unknown
            self._lost(lane.program, Fault(f"{self.label}: request abandoned"))
            raise
        with self._cond:
            self._idle.append(lane)
            self._busy -= 1
            self._cond.notify()

    def close(self) -> None:
        """End every program as git-annex does: close its input, let it exit."""
        with self._cond:
            self.closed = True
            programs, self._programs, self._idle = self._programs, [], []
            self._cond.notify_all()
        for program in programs:
            program.hang_up()
        deadline = time.monotonic() + CLOSE_GRACE
        for program in programs:
            program.close(deadline - time.monotonic())

    def _acquire(self) -> Lane:
        with self._cond:
            while True:
                if self.closed:
                    raise RemoteUnavailable(f"{self.label}: the mount is ending")
                while self._idle:
                    lane = self._idle.pop()
                    if lane.program.alive() and not lane.program.pending(lane):
                        self._busy += 1
                        return lane
                    self._ended_between_requests(lane.program)
                if self._busy < self.size:
                    self._busy += 1
                    break
                self._cond.wait()
        program: Program | None = None
        try:
            lane = self._new_lane()
            program = lane.program
            self._prepare(lane)
            return lane
        except Fault as fault:
            if program is None:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify()
                self.last_words = str(fault)
                log.warning("%s", fault)
                raise RemoteUnavailable(str(fault)) from None
            raise RemoteUnavailable(self._lost(program, fault)) from None
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            if program is not None:
                program.kill()
            raise

    def _new_lane(self) -> Lane:
        with self._cond:
            shared = next((program for program in self._programs
                           if program.is_async and program.alive()), None)
        if shared is not None:
            return shared.new_lane()
        program = self._start()
        with self._cond:
            self._programs.append(program)
        return program.new_lane()

    def _start(self) -> Program:
        """A new program that said VERSION and was offered the extensions."""
        try:
            program = Program(self.argv, str(self.cwd), self.label)
        except OSError as error:
            raise Fault(f"cannot run {self.argv[0]}: {error.strerror or error}") from None
        first = Lane(program, None)
        try:
            try:
                version = first.receive(self.host.timeout)
            except queue.Empty:
                raise Fault(f"{self.label} did not say VERSION within "
                            f"{self.host.timeout:.0f} s") from None
            if version.command != "VERSION" or version.params[0] not in (b"1", b"2"):
                raise Fault(f"{self.label} does not speak protocol version 1 or 2 (it said "
                            f"{version.command} {b' '.join(version.params)!r})")
            if self._offer_extensions:
                try:
                    reply = self.host.ask(first, line("EXTENSIONS", " ".join(OFFERED)),
                                          frozenset({"EXTENSIONS"}))
                except Fault as fault:
                    log.info("%s: does not take EXTENSIONS (%s): starting it again without",
                             self.label, fault)
                    program.kill()
                    self._offer_extensions = False
                    return self._start()
                if reply.command == "EXTENSIONS":
                    program.extensions = set(reply.text(0).split()).intersection(OFFERED)
            if self._ask_optional:
                try:
                    self._ask_cost_and_availability(first)
                except Fault as fault:
                    log.info("%s: does not take GETCOST or GETAVAILABILITY (%s): starting it "
                             "again without", self.label, fault)
                    program.kill()
                    self._ask_optional = False
                    return self._start()
            if self.availability == "UNAVAILABLE":
                raise Fault(f"{self.label} says the remote is unavailable (AVAILABILITY "
                            "UNAVAILABLE)")
        except Fault as fault:
            program.failed(fault)
            program.kill()
            raise Fault(program.last_words()) from None
        return program

    def _ask_cost_and_availability(self, lane: Lane) -> None:
        """GETCOST once, GETAVAILABILITY until the answer is not UNAVAILABLE: optional
        requests, which a program may answer UNSUPPORTED-REQUEST (or, as some do, with ERROR
        and an exit: then they are never sent again)."""
        if self.cost is None:
            reply = self.host.ask(lane, line("GETCOST"), frozenset({"COST"}))
            cost = reply.text(0) if reply.command == "COST" and reply.params else ""
            self.cost = int(cost) if cost.isdigit() else EXPENSIVE
            self.on_cost(self.cost)
        if self.availability in (None, "UNAVAILABLE"):
            reply = self.host.ask(lane, line("GETAVAILABILITY"), frozenset({"AVAILABILITY"}))
            said = reply.text(0) if reply.command == "AVAILABILITY" and reply.params else ""
            self.availability = said if said in AVAILABILITIES else "GLOBAL"

    def _prepare(self, lane: Lane) -> None:
        """INITREMOTE once for the remote's configuration, PREPARE once per program."""
        program = lane.program
        with program.prepare_lock:
            if program.prepared:
                return
            if not self.host.state.initialized():
                with self._init_lock:
                    if not self.host.state.initialized():
                        settings: dict[str, str] = {}
                        reply = self.host.ask(lane, line("INITREMOTE"), frozenset(
                            {"INITREMOTE-SUCCESS", "INITREMOTE-FAILURE"}), settings=settings)
                        if reply.command != "INITREMOTE-SUCCESS":
                            raise Fault(f"{self.label}: INITREMOTE failed: "
                                        f"{reply.text(0) if reply.params else reply.command}")
                        self.host.state.initremote_done(settings)
                        log.info("%s: INITREMOTE done", self.label)
            reply = self.host.ask(lane, line("PREPARE"),
                                  frozenset({"PREPARE-SUCCESS", "PREPARE-FAILURE"}))
            if reply.command != "PREPARE-SUCCESS":
                raise Fault(f"{self.label}: PREPARE failed: "
                            f"{reply.text(0) if reply.params else reply.command}")
            if self.export:
                reply = self.host.ask(lane, line("EXPORTSUPPORTED"), frozenset(
                    {"EXPORTSUPPORTED-SUCCESS", "EXPORTSUPPORTED-FAILURE"}))
                if reply.command != "EXPORTSUPPORTED-SUCCESS":
                    raise Fault(f"{self.label} cannot export (export = true): it answers "
                                f"EXPORTSUPPORTED with {reply.command}")
            program.prepared = True

    def _lost(self, program: Program, fault: Fault) -> str:
        """Kill the program after a fault in a request; its last words."""
        program.failed(fault)
        program.kill()
        words = program.last_words()
        log.debug("%s", words)  # the core logs the failure, with these words
        with self._cond:
            self._forget(program)
            self._busy -= 1
            self._cond.notify_all()
        self.last_words = words
        return words

    def _ended_between_requests(self, program: Program) -> None:
        """A program that ended (or spoke) while idle: replaced, no request failed."""
        if program.fault is None:
            program.failed(Fault(f"{self.label} spoke while idle"))
        log.info("%s", program.last_words())
        program.kill()
        self._forget(program)

    def _forget(self, program: Program) -> None:
        if program in self._programs:
            self._programs.remove(program)
        self._idle = [lane for lane in self._idle if lane.program is not program]
