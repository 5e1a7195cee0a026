"""The program side's connection to git-annex: one reader of stdin, one writer of stdout,
and a lane for each job.

With the ASYNC extension git-annex tags every message of a job ``J n ...`` and interleaves
the jobs: a new request of job 2 may come while job 1 waits for the VALUE of its own
DIRHASH question. So stdin is read in one place only, and each message goes to the lane of
its job, where a thread handles that job's requests one after the other and reads the
answers to its own questions. Messages without a tag (before ASYNC is agreed, or from a
git-annex that does not use it) make one lane of their own.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from .protocol import Message, ProtocolError, line, parse


class Fatal(Exception):
    """The conversation cannot go on: git-annex sent ERROR, or a line out of protocol."""


class Lane:
    """One job: the requests of that job come in order, and so do the answers to the
    questions this side asks while handling one."""

    def __init__(self, job: bytes | None, output: Output) -> None:
        self.job = job
        self.inbox: queue.Queue[Message | None] = queue.Queue()
        self._output = output

    def send(self, command: str, *params: bytes | str | int) -> None:
        self._output.write(self.job, line(command, *params))

    def ask(self, command: str, *params: bytes | str) -> str:
        """Send a question (GETCONFIG, DIRHASH-LOWER...) and return the VALUE git-annex
        answers it with."""
        self.send(command, *params)
        answer = self.inbox.get()
        if answer is None:
            raise Fatal(f"git-annex went away before it answered {command}")
        if answer.command != "VALUE":
            raise Fatal(f"expected VALUE in answer to {command}, got {answer.command}")
        return answer.text(0)


class Output:
    """stdout, one whole line at a time whatever thread writes it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, job: bytes | None, data: bytes) -> None:
        if job is not None:
            data = b"J " + job + b" " + data
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


def serve(handle: Callable[[Lane, Message], None], stdin: BinaryIO, output: Output) -> None:
    """Read stdin until it closes, handing each request to `handle` on the lane of its job;
    then wait for the lanes to finish. Fatal if git-annex sends ERROR or garbage."""
    lanes: dict[bytes | None, Lane] = {}
    threads: list[threading.Thread] = []

    def run(lane: Lane) -> None:
        while (message := lane.inbox.get()) is not None:
            try:
                handle(lane, message)
            except Exception as error:  # a bug, or Fatal: said to git-annex, not lost in a thread
                output.write(lane.job, line("ERROR", " ".join(f"{error}".split()) or repr(error)))
                os._exit(1)  # the other jobs cannot be answered in protocol any more

    try:
        for raw in stdin:
            message = parse(raw)
            job: bytes | None = None
            if message.command == "J":
                job = message.params[0]
                if not job.isdigit():
                    raise Fatal(f"not a job number: {job!r}")
                message = parse(message.params[1])
            if message.command == "ERROR":
                raise Fatal(f"git-annex: {message.text(0)}")
            lane = lanes.get(job)
            if lane is None:
                lane = lanes[job] = Lane(job, output)
                thread = threading.Thread(target=run, args=(lane,), daemon=True)
                thread.start()
                threads.append(thread)
            lane.inbox.put(message)
    except ProtocolError as error:
        raise Fatal(str(error)) from None
    # stdin closed: git-annex is done; the jobs still at work finish first
    for lane in lanes.values():
        lane.inbox.put(None)
    for thread in threads:
        thread.join()
