"""OpenSSH's own client as a subprocess: one connection carrying one SFTP session.

The SSH transport (key exchange, ciphers, MACs, windows, keepalives) runs
in `ssh`, on a core of its own; the daemon only writes and reads SFTP
packets on two pipes. paramiko did the same work in Python, under the GIL
that the mount's thread needs too: a read cost the daemon 2.4-2.9 times
the CPU, a write 4-6 times.

ssh is told everything on its command line and reads no config file: the
host key must already be in the remote's known_hosts (never added or
updated), it logs in with the configured key or the agent's, never asks
anything (BatchMode), and forwards nothing. When it cannot log in, its last
line on stderr says why; connect.py turns that into onitufs's own message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .settings import Settings
from .sftp import ConnectionLost

CONNECT_TIMEOUT = 15
# A request unanswered this long is a dead connection; ssh's keepalives find a silent server
# in about the same time (ServerAliveInterval x ServerAliveCountMax).
IO_TIMEOUT = 120.0
KEEPALIVE = 15
# Fast authenticated ciphers first, then ssh's own list: AES-GCM keeps one connection near
# the wire's speed.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# Pipes as large as Linux allows without privileges by default: fewer wake-ups per MiB.
PIPE_SIZE = 1 << 20
READ_SIZE = 1 << 20


def file_option(path: Path) -> str:
    """A path as an -o option's value: quoted, as ssh splits a value at spaces (and takes
    several known_hosts files so), and with % doubled, as ssh expands %-tokens in it."""
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def command(settings: Settings) -> list[str]:
    """The ssh command line that opens the server's sftp subsystem."""
    options = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": file_option(settings.known_hosts),
        "GlobalKnownHostsFile": "none",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ConnectTimeout": str(CONNECT_TIMEOUT),
        "ServerAliveInterval": str(KEEPALIVE),
        "ServerAliveCountMax": str(int(IO_TIMEOUT // KEEPALIVE)),
        "Ciphers": "^" + ",".join(PREFERRED_CIPHERS),
        "Compression": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ClearAllForwardings": "yes",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "PermitLocalCommand": "no",
        "RequestTTY": "no",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "LogLevel": "ERROR",
    }
    if settings.identity is not None:
        options["IdentityFile"] = file_option(settings.identity)
        options["IdentitiesOnly"] = "yes"
    return ["ssh", "-F", "none", *(f"-o{key}={value}" for key, value in options.items()),
            "-p", str(settings.port), "-l", settings.user, "-s", "--", settings.host, "sftp"]


class Link:
    """A running ssh: `sendall` and `recv` move the bytes of an SFTP session (sftp.Pipe);
    ConnectionLost when ssh is gone or the server said nothing for `timeout`."""

    def __init__(self, settings: Settings) -> None:
        # what ssh says; kept as long as the link, read when it ends (why)
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            # its own session: a Ctrl-C meant for a foreground mount must not cut the
            # connection its clean stop still uploads over
            self.process = subprocess.Popen(
                command(settings), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._errors, start_new_session=True)
        except OSError:
            self._errors.close()
            raise
        assert self.process.stdin is not None and self.process.stdout is not None
        self._out = self.process.stdin.fileno()
        self._in = self.process.stdout.fileno()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):  # a smaller pipe is only slower
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        # Neither way waits longer than `timeout`: an ssh that stopped taking or giving
        # (stopped, hung) is a lost connection, as a silent server is.
        os.set_blocking(self._out, False)
        self._readable = select.poll()
        self._readable.register(self._in, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self._out, select.POLLOUT)
        self.timeout = float(CONNECT_TIMEOUT)  # until logged in (see connect.py)
        self.closed = False
        # A thread may close the link while another waits on it (an aborted upload wakes its
        # senders so): the pipes are closed by the last one out, so that a descriptor is
        # never read after its number was given to another file.
        self._lock = threading.Lock()
        self._users = 0

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        with self._lock:
            if self.closed:
                raise ConnectionLost("connection closed")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                last = self.closed and not self._users
            if last:
                self._close_pipes()

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._using():
            try:
                while view:
                    try:
                        view = view[os.write(self._out, view):]
                    except BlockingIOError:
                        if not self._writable.poll(self.timeout * 1000):
                            raise ConnectionLost(f"ssh took nothing in {self.timeout:.0f}s") \
                                from None
            except OSError as error:
                raise ConnectionLost(self.why(str(error))) from None

    def recv(self) -> bytes:
        """What has come, at least one byte; ConnectionLost at the end."""
        with self._using():
            try:
                if not self._readable.poll(self.timeout * 1000):
                    raise ConnectionLost(f"no answer in {self.timeout:.0f}s")
                chunk = os.read(self._in, READ_SIZE)
            except OSError as error:
                raise ConnectionLost(self.why(str(error))) from None
        if not chunk:
            raise ConnectionLost(self.why("connection closed"))
        return chunk

    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None

    def said(self) -> list[str]:
        """What ssh wrote on stderr, line by line, once it has ended (it says why it did)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").splitlines()
            return [line.strip() for line in lines if line.strip()]
        return []

    def why(self, default: str) -> str:
        """ssh's last line, or `default`."""
        return (self.said() or [default])[-1]

    def close(self) -> None:
        """End ssh and reap it (at once: whatever was not answered was not acknowledged)."""
        with self._lock:
            self.closed = True
            idle = not self._users
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if idle:
            self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self._errors):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
