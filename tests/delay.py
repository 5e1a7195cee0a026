"""A TCP proxy on loopback that holds every byte back for a while each way: a long link.

The SSH tests and the SSH comparison (bench/ssh.py) run through it to show
what a round trip of tens of milliseconds does where a connection may only
have so much unacknowledged (OpenSSH: 2 MiB per channel). Each direction of each connection has a
reader thread that stamps what it receives and a writer thread that sends it
on once its time has come; bandwidth is whatever loopback and Python give.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time

HOST = "127.0.0.1"


class DelayProxy:
    def __init__(self, target_port: int, one_way: float) -> None:
        self.target_port = target_port
        self.one_way = one_way
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()  # cleared: every byte is held until it is set again
        self._open.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="delay-accept").start()

    def hold(self) -> None:
        """Hold back, from now on, whatever has not been passed on yet, each way: an
        answer under way never arrives while held."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def stop(self) -> None:
        """Close the listener and every connection (their threads end with them)."""
        self._open.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            server = socket.create_connection((HOST, self.target_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(sock)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = source.recv(1 << 20)
                except OSError:
                    data = b""
                with ready:
                    queue.append((time.monotonic() + self.one_way, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                time.sleep(max(0.0, due - time.monotonic()))
                self._open.wait()
                try:
                    if not data:
                        sink.shutdown(socket.SHUT_WR)
                        return
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True, name="delay-read").start()
        threading.Thread(target=write, daemon=True, name="delay-write").start()
