"""One running special remote program, and the lanes requests travel on.

The program is started in a process group of its own (a wrapper script and
what it runs go together), its standard output read by a thread into the
lane each line belongs to, and the last lines of its standard error kept as
its last words. Without the ASYNC extension a program has one lane; with it,
every lane is a job number (``J n``) on the same program, and an ERROR
reaches every lane.

Anything that ends the conversation (the program exits, says ERROR, sends a
line that is not a message) is a Fault: the lanes see it on their next
receive, and the pool kills the program and starts another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque

from onitufs.gitannex.protocol import Message, ProtocolError, parse

log = logging.getLogger(__name__)
MAX_LINE = 1 << 20  # a longer line is not the protocol's
TAIL_LINES = 20


class Fault(Exception):
    """The program cannot go on: it died, said ERROR, hung, or spoke out of protocol."""


class Program:
    def __init__(self, argv: list[str], cwd: str, label: str) -> None:
        self.label = label
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=cwd,
                                        start_new_session=True)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.extensions: set[str] = set()
        self.prepared = False
        self.prepare_lock = threading.Lock()
        self._queues: dict[int | None, queue.Queue[Message | Fault]] = {None: queue.Queue()}
        self._queues_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._next_job = 1
        self.last_heard = time.monotonic()  # any line, on any lane: it is alive
        self.fault: Fault | None = None
        self._stderr_done = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True,
                         name=f"{label} stdout").start()
        threading.Thread(target=self._read_stderr, daemon=True,
                         name=f"{label} stderr").start()

    @property
    def is_async(self) -> bool:
        return "ASYNC" in self.extensions

    def alive(self) -> bool:
        return self.fault is None and self.process.poll() is None

    def new_lane(self) -> Lane:
        """A lane for one request at a time: the program's own, or a new job number."""
        if not self.is_async:
            return Lane(self, None)
        with self._queues_lock:
            job = self._next_job
            self._next_job += 1
            self._queues[job] = queue.Queue()
        return Lane(self, job)

    def drop_lane(self, lane: Lane) -> None:
        if lane.job is not None:
            with self._queues_lock:
                self._queues.pop(lane.job, None)

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        with self._write_lock:
            try:
                self.process.stdin.write(data)
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                raise self.failed(self._ended()) from None

    def pending(self, lane: Lane) -> bool:
        """Whether a line came on the lane that no request asked for (an ERROR, say)."""
        return not self._queues[lane.job].empty()

    def receive(self, lane: Lane, timeout: float) -> Message:
        """The next message on the lane; queue.Empty after `timeout` seconds of nothing."""
        got = self._queues[lane.job].get(timeout=timeout)
        if isinstance(got, Fault):
            self._queues[lane.job].put(got)  # for whoever asks next
            raise got
        return got

    def failed(self, fault: Fault) -> Fault:
        """Record why the conversation ended and tell every lane."""
        if self.fault is None:
            self.fault = fault
        with self._queues_lock:
            for waiting in self._queues.values():
                waiting.put(self.fault)
        return self.fault

    def last_words(self) -> str:
        """Why it ended, with the last line it wrote on standard error."""
        self._stderr_done.wait(0.5 if self.process.poll() is not None else 0)
        said = next((text for text in reversed(self.tail) if text.strip()), "")
        reason = str(self.fault) if self.fault else f"{self.label} stopped"
        return f"{reason} ({said.strip()[:300]})" if said and said not in reason else reason

    def kill(self) -> None:
        """End the program and whatever it started, at once."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def hang_up(self) -> None:
        """End the conversation as git-annex does: close its input, so that it exits."""
        if self.process.stdin is not None:
            with self._write_lock, contextlib.suppress(OSError, ValueError):
                self.process.stdin.close()

    def close(self, grace: float) -> None:
        """Hung up on: let it exit within `grace` seconds, or kill it."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(max(0.0, grace))
        self.kill()

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                raw = stdout.readline(MAX_LINE)
                if not raw:
                    self.failed(self._ended())
                    return
                if not raw.endswith(b"\n"):
                    raise Fault(f"{self.label} sent a line without end: {raw[:100]!r}")
                self._dispatch(raw)
        except Fault as fault:
            self.failed(fault)
            self.kill()
        except (OSError, ValueError):
            self.failed(self._ended())

    def _ended(self) -> Fault:
        """What to say of a program that closed its end of the conversation."""
        try:
            code = self.process.wait(2)
        except subprocess.TimeoutExpired:
            return Fault(f"{self.label} closed its output")
        if code < 0:
            return Fault(f"{self.label} was killed by signal {-code}")
        return Fault(f"{self.label} exited with status {code}")

    def _dispatch(self, raw: bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            message = parse(raw)
        except ProtocolError as error:
            raise Fault(f"{self.label} spoke out of protocol: {error}") from None
        if message.command == "ERROR":
            raise Fault(f"{self.label} said ERROR {message.text(0)}")
        job: int | None = None
        if self.is_async:
            if message.command != "J" or not message.params[0].isdigit():
                raise Fault(f"{self.label} sent a message of no job: {raw[:100]!r}")
            job = int(message.params[0])
            try:
                message = parse(message.params[1])
            except ProtocolError as error:
                raise Fault(f"{self.label} spoke out of protocol: {error}") from None
        with self._queues_lock:
            target = self._queues.get(job)
        if target is None:
            raise Fault(f"{self.label} answered job {job}, which it was not given")
        target.put(message)

    def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        try:
            for raw in iter(lambda: stderr.readline(MAX_LINE), b""):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                self.tail.append(text)
                log.debug("%s: %s", self.label, text)
        except (OSError, ValueError):
            pass
        finally:
            self._stderr_done.set()


class Lane:
    """Where one request at a time is sent and its messages come back."""

    def __init__(self, program: Program, job: int | None) -> None:
        self.program = program
        self.job = job

    def send(self, data: bytes) -> None:
        self.program.write(data if self.job is None else b"J %d " % self.job + data)

    def receive(self, timeout: float) -> Message:
        return self.program.receive(self, timeout)
