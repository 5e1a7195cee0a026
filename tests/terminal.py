"""A command run on a pseudo-terminal, as a person runs it: what it draws, keys typed to it
(Ctrl-C), and its exit status. Used where a command behaves differently on a terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Iterator

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """`argv` on a terminal of `columns` x 40 whose input, output and error are all that
    terminal (its controlling one: Ctrl-C reaches it as it would)."""

    def __init__(self, argv: list[str], cwd: str | None = None, columns: int = 160,
                 env: dict[str, str] | None = None) -> None:
        environ = {key: value for key, value in os.environ.items()
                   if key not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
        environ.update({"TERM": "xterm-256color", **(env or {})})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: nothing here may return into the test run
            try:
                # As a shell starts a command in the foreground: the suite run as a background
                # job (`make test &`) ignores Ctrl-C, and the command would inherit that.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGQUIT, signal.SIG_DFL)
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
                if cwd is not None:
                    os.chdir(cwd)
                os.execvpe(argv[0], argv, environ)
            finally:
                os._exit(127)
        self.raw = b""
        self.status: int | None = None

    @property
    def text(self) -> str:
        """What was drawn so far, without colours and cursor movements."""
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def read_until(self, pattern: str, timeout: float = 20.0) -> str:
        """Read until what was drawn matches `pattern`; the text drawn so far."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                raise AssertionError(f"never drew {pattern!r}; drew:\n{self.text}")
        return self.text

    def wait(self, timeout: float = 60.0) -> int:
        """Read to the end; the exit status (128 + N when killed by signal N)."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                if self.status < 0:
                    self.status = 128 - self.status
            elif time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s; drew:\n{self.text}")
            else:
                time.sleep(0.05)
        return self.status

    def _read(self, timeout: float) -> bool:
        """Read what there is within `timeout`; False at the end of the output (or of the
        time)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every process on the terminal has gone
            return False
        self.raw += data
        return bool(data)

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = 128 + signal.SIGKILL
        os.close(self.fd)


@contextlib.contextmanager
def terminal(argv: list[str], cwd: str | None = None, columns: int = 160) -> Iterator[Terminal]:
    """A Terminal that is gone (killed if need be) when the block ends, whatever happens."""
    term = Terminal(argv, cwd, columns)
    try:
        yield term
    finally:
        term.close()
