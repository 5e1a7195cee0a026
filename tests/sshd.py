"""A real OpenSSH server and ssh-agent for the SSH driver's tests (and its benchmark).

`Sshd` runs /usr/sbin/sshd in the foreground on 127.0.0.1 and a free port,
with its own host key, user key, authorized_keys and sshd_config under one
folder; `stop` kills it and every session process below it, so no daemon
outlives its test. `Agent` runs ssh-agent on its own socket and loads a key
with a passphrase through SSH_ASKPASS, without a terminal. `SshCloud` is
the Cloud of conftest.py with SSH remotes beside its local ones.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import Cloud

SSHD = "/usr/sbin/sshd"
# sshd's own SFTP server (OpenSSH's sftp-server, built in): an external subsystem runs
# through the user's login shell, and a shell's start-up files (a ~/.bashrc that runs
# pyenv, which waits on a lock a killed session left) may stall or garble the session.
SFTP_SERVER = "internal-sftp"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def keygen(path: Path, passphrase: str = "") -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "onitufs-test",
                    "-f", str(path)], check=True, capture_output=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children before their parents' other kin."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def sessions_stopped(sshd: Sshd) -> Iterator[None]:
    """Within the block, the server and every session of it are stopped (SIGSTOP), as a
    server that stopped answering: nothing is answered, no connection drops, and a new one
    waits too (the listener first, so that no session starts after the look at them);
    after it they go on."""
    assert sshd.process is not None
    os.kill(sshd.process.pid, signal.SIGSTOP)
    stopped = [sshd.process.pid]
    try:
        sessions = descendants(sshd.process.pid)
        assert sessions, "the mount has no session on the server"
        for pid in sessions:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and everything below it; wait until it is gone."""
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


class Sshd:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = root / "host_ed25519"
        self.user_key = root / "id_ed25519"
        self.authorized_keys = root / "authorized_keys"
        self.known_hosts = root / "known_hosts"
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None
        keygen(self.host_key)
        keygen(self.user_key)
        self.authorized_keys.write_text(self.public(self.user_key))
        self.trust_host_key()
        self.config.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {HOST}", f"HostKey {self.host_key}",
            "PidFile none", f"AuthorizedKeysFile {self.authorized_keys}", "StrictModes no",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}", "MaxStartups 100", "MaxSessions 100",
            f"Subsystem sftp {SFTP_SERVER}", "LogLevel ERROR", ""]))

    @staticmethod
    def public(key: Path) -> str:
        return key.with_name(key.name + ".pub").read_text()

    def authorize(self, key: Path) -> None:
        with self.authorized_keys.open("a") as keys:
            keys.write(self.public(key))

    @property
    def host_name(self) -> str:
        return f"[{HOST}]:{self.port}"

    def trust_host_key(self) -> None:
        """known_hosts holds the current host key (and nothing else)."""
        kind, blob = self.public(self.host_key).split()[:2]
        self.known_hosts.write_text(f"{self.host_name} {kind} {blob}\n")

    def known_hosts_for(self, port: int) -> Path:
        """A known_hosts file with the host key under another port, one that forwards here."""
        path = self.root / f"known_hosts-{port}"
        kind, blob = self.public(self.host_key).split()[:2]
        path.write_text(f"[{HOST}]:{port} {kind} {blob}\n")
        return path

    def new_host_key(self) -> None:
        """The server gets a new host key (known_hosts keeps the old one); restart to use it."""
        keygen(self.host_key)

    def start(self) -> None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"sshd exited ({self.process.returncode}): "
                                     f"{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                return
            if time.monotonic() > deadline:
                raise AssertionError("sshd did not start listening in 10s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server and every session it runs (their connections drop)."""
        if self.process is not None:
            kill_tree(self.process)
            self.process = None

    def remote(self, name: str, path: Path, mode: str = "rw", poll_interval: str = "0.3s",
               identity: Path | bool | None = True, port: int | None = None) -> list[str]:
        """The config table of an SSH remote for `path` on this server (through `port`, where
        something forwards to it: see known_hosts_for)."""
        port = port or self.port
        known_hosts = self.known_hosts if port == self.port else self.known_hosts_for(port)
        lines = [f"[remotes.{name}]", 'driver = "ssh"', f'host = "{HOST}"', f"port = {port}",
                 f'user = "{self.user}"', f'path = "{path}"', f'known_hosts = "{known_hosts}"',
                 f'mode = "{mode}"', f'poll_interval = "{poll_interval}"']
        if identity is True:
            lines.append(f'identity = "{self.user_key}"')
        elif isinstance(identity, Path):
            lines.append(f'identity = "{identity}"')
        return [*lines, ""]


@dataclass
class Agent:
    """A running ssh-agent on its own socket."""

    root: Path
    socket: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.socket = self.root / "agent.sock"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.socket)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("ssh-agent did not start")
            time.sleep(0.02)

    def add(self, key: Path, passphrase: str) -> None:
        """ssh-add the key, its passphrase given by an SSH_ASKPASS program (no terminal)."""
        askpass = self.root / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": os.environ.get("DISPLAY", ":0")}
        result = subprocess.run(["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, start_new_session=True,
                                timeout=30)
        askpass.unlink()
        if result.returncode != 0:
            raise AssertionError(f"ssh-add failed: {result.stderr}")

    def stop(self) -> None:
        if self.process is not None:
            kill_tree(self.process)
            self.process = None


@dataclass
class SshRemote:
    server: Sshd
    mode: str = "rw"
    identity: Path | bool | None = True  # True: the server's user key; None: the agent's keys
    upload_connections: int | None = None  # None: the driver's choice


class SshCloud(Cloud):
    """Cloud with SSH remotes beside its local ones; the folder of SSH remote NAME on the
    server is ROOT/NAME, in cloud.remotes like the local ones."""

    def __init__(self, root: Path, local: dict[str, str], ssh: dict[str, SshRemote],
                 **settings: str) -> None:
        self.ssh = ssh
        for name in ssh:
            (root / name).mkdir()
        super().__init__(root, local, **settings)
        self.remotes.update({name: root / name for name in ssh})

    def write_config(self) -> None:
        super().write_config()
        lines = []
        for name, remote in self.ssh.items():
            lines += remote.server.remote(name, self.root / name, remote.mode,
                                          self.settings["poll_interval"], remote.identity)
            if remote.upload_connections is not None:
                lines.insert(-1, f"upload_connections = {remote.upload_connections}")
        with self.config.open("a") as config:
            config.write("\n" + "\n".join(lines))


MakeSshCloud = Callable[..., SshCloud]


@contextlib.contextmanager
def sshfs_mounted(server: Sshd, folder: Path, at: Path, port: int | None = None,
                  options: tuple[str, ...] = ()) -> Iterator[None]:
    """`folder` on the server mounted at `at` with sshfs, through `port` (a proxy's in front
    of the server) if given, with sshfs's `options` besides; unmounted after, at once if
    something still uses it."""
    port = server.port if port is None else port
    known_hosts = server.known_hosts if port == server.port else server.known_hosts_for(port)
    login = (f"IdentityFile={server.user_key}", f"UserKnownHostsFile={known_hosts}",
             "StrictHostKeyChecking=yes", "BatchMode=yes")
    subprocess.run(["sshfs", "-p", str(port), "-o", ",".join((*login, *options)),
                    f"{server.user}@127.0.0.1:{folder}", str(at)], check=True,
                   capture_output=True, timeout=60)
    try:
        yield
    finally:
        if subprocess.run(["fusermount3", "-u", str(at)], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(at)], capture_output=True,
                           check=False)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running sshd on 127.0.0.1, killed with its sessions after the test."""
    server = Sshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path / "agent")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def make_ssh_cloud(tmp_path: Path) -> Iterator[MakeSshCloud]:
    """Makes SshClouds under tmp_path; each is unmounted and its daemon killed afterwards."""
    made: list[SshCloud] = []

    def make(local: dict[str, str], ssh: dict[str, SshRemote], **settings: str) -> SshCloud:
        root = tmp_path / f"sshcloud{len(made)}"
        root.mkdir()
        cloud = SshCloud(root, local, ssh, **settings)
        made.append(cloud)
        return cloud

    try:
        yield make
    finally:
        for cloud in made:
            cloud.cleanup()
