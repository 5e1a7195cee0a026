"""Opening one SSH connection (OpenSSH's client, openssh.py), and saying why one failed.

The server's host key must already be in known_hosts: an unknown or a
changed key raises HostKeyError, whose message is one line saying what the
server offered and how to accept it (`onitufs trust`, see trust.py). A
connection never adds anything to known_hosts.
Keys come from the configured identity file, or from the running ssh-agent
(which is also where a key with a passphrase is used from). ssh decides;
when it refuses, paramiko looks again (the key the server offers, the keys
there are to offer) to say exactly why, in onitufs's words. Nothing secret
is logged; paramiko's own logging is kept to warnings.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hmac
import logging
import re
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from .openssh import CONNECT_TIMEOUT, IO_TIMEOUT, Link
from .settings import Settings
from .sftp import ConnectionLost, Session, SftpError

log = logging.getLogger(__name__)
logging.getLogger("paramiko").setLevel(logging.WARNING)
# Where the command has set up no logging (`onitufs trust`), what paramiko logs of a failed
# handshake (a traceback) would reach stderr beside the one line that says it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# From this round trip on, what one connection may leave unacknowledged caps a large
# transfer (OpenSSH's window for an upload, the requests in flight for a read): it then
# goes over LANES_ON_LONG_LINKS connections. Close by, a second one only adds work.
LONG_LINK = 0.01
LANES_ON_LONG_LINKS = 2
RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
# what ssh says when it could not reach the server: the reason is the part after the colon
UNREACHABLE = re.compile(r"(?:connect to host .* port \d+|Could not resolve hostname .*): (.+)$")


class ConnectError(Exception):
    """The server cannot be reached or refused us; the message is one line."""


class HostKeyError(ConnectError):
    """The server's host key is not the one known_hosts has for it."""


@dataclass
class OpenFile:
    """A file kept open for reading, and when a read last used it (time.monotonic())."""

    handle: bytes
    used: float


@dataclass
class Connection:
    link: Link
    sftp: Session
    # files kept open for reading, least recently used first: (path, revision) -> file
    handles: collections.OrderedDict[tuple[bytes, str | None], OpenFile] = field(
        default_factory=collections.OrderedDict)

    def alive(self) -> bool:
        return self.link.alive()

    def lanes(self) -> int:
        """Connections a large transfer should use."""
        return LANES_ON_LONG_LINKS if self.sftp.round_trip >= LONG_LINK else 1

    def close(self) -> None:
        self.link.close()


@dataclass(frozen=True)
class KnownKey:
    """A key known_hosts has for the server, and the line it is on (counted from 1)."""

    line: int
    key: paramiko.PKey


def _names(name: str, host: str) -> bool:
    """Whether a host name of known_hosts is `host`: as written, or hashed (|1|SALT|HASH, as
    ssh's HashKnownHosts writes it). Patterns are not names, as for paramiko's HostKeys."""
    if not name.startswith("|1|"):
        return name == host
    try:
        salt, digest = (base64.b64decode(part, validate=True) for part in name[3:].split("|"))
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, host.encode(), "sha1").digest(), digest)


def known_keys(settings: Settings) -> list[KnownKey]:
    """The keys known_hosts has for the server, in file order (none when there is no file).

    Read line by line rather than through paramiko's HostKeys, to name the line
    of a key that changed; a line paramiko cannot read names no key, as in
    HostKeys.load."""
    try:
        text = settings.known_hosts.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ConnectError(f"{settings.where}.known_hosts: cannot read "
                           f"{settings.known_hosts}: {error.strerror or error}") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, InvalidHostKey, ValueError):
            continue
        if entry is not None and any(_names(name, settings.host_name)
                                     for name in entry.hostnames):
            found.append(KnownKey(number, entry.key))
    return found


def trust_command(settings: Settings) -> str:
    """The `onitufs trust` command line that accepts this remote's host key."""
    # where is "CONFIG: remotes.NAME" (onitufs.config)
    config, _, name = settings.where.rpartition(": remotes.")
    return f"onitufs trust {shlex.quote(config)} {shlex.quote(name)}"


def check_host_key(settings: Settings, offered: paramiko.PKey, known: list[KnownKey]) -> None:
    if any(entry.key == offered for entry in known):
        return
    kind = offered.get_name()
    changed = [entry for entry in known if entry.key.get_name() == kind]
    if not changed:
        others = ", ".join(sorted({entry.key.get_name() for entry in known}))
        only = f" (it has only {others} keys for it)" if others else ""
        raise HostKeyError(
            f"{settings.where}: the host key of {settings.host_name} is not in "
            f"{settings.known_hosts}{only}; the server offered {kind} {offered.fingerprint}. If "
            f"that is the server's key, trust it with: {trust_command(settings)}")
    have = ", ".join(f"{kind} {entry.key.fingerprint} (line {entry.line})" for entry in changed)
    raise HostKeyError(
        f"{settings.where}: HOST KEY CHANGED for {settings.host_name}: the server offered {kind} "
        f"{offered.fingerprint} but {settings.known_hosts} has {have}; not connecting (someone "
        f"may be impersonating the server). If its key was really replaced, remove the old one "
        f"with: ssh-keygen -R '{settings.host_name}' -f {settings.known_hosts}, then trust the "
        f"new one with: {trust_command(settings)}")


def key_types(available: Sequence[str], known: list[KnownKey]) -> tuple[str, ...]:
    """The host key types to ask the server for: those known_hosts has for it first, as ssh
    does, so that a server with several keys offers the one that can be checked."""
    wanted = {entry.key.get_name() for entry in known}
    if "ssh-rsa" in wanted:
        wanted.update(RSA_SIGNATURES)
    return (tuple(name for name in available if name in wanted)
            + tuple(name for name in available if name not in wanted))


def _public_blob(identity: Path) -> bytes | None:
    """The public key beside an identity file (IDENTITY.pub), as the agent names keys."""
    try:
        fields = identity.with_name(identity.name + ".pub").read_text().split()
    except OSError:
        return None
    if len(fields) < 2:
        return None
    try:
        return base64.b64decode(fields[1], validate=True)
    except ValueError:
        return None


def login_keys(settings: Settings) -> list[paramiko.PKey]:
    """The keys to offer, in order."""
    agent_keys: list[paramiko.PKey] = []
    with contextlib.suppress(paramiko.SSHException, OSError):
        agent_keys = list(paramiko.Agent().get_keys())
    if settings.identity is None:
        if agent_keys:
            return agent_keys
        defaults = [Path("~/.ssh", name).expanduser()
                    for name in ("id_ed25519", "id_ecdsa", "id_rsa")]
        keys = []
        for path in defaults:
            # TypeError: what paramiko passes on from cryptography for a key with a passphrase
            with contextlib.suppress(OSError, paramiko.SSHException, TypeError, ValueError):
                keys.append(paramiko.PKey.from_path(path))
        if not keys:
            raise ConnectError(f"{settings.where}: no key to log in with: ssh-agent has none "
                               "(is SSH_AUTH_SOCK set?) and there is no key file without a "
                               "passphrase in ~/.ssh; set identity, or ssh-add a key")
        return keys
    try:
        return [paramiko.PKey.from_path(settings.identity)]
    except (paramiko.PasswordRequiredException, TypeError):
        # TypeError: what paramiko passes on from cryptography for a key with a passphrase
        blob = _public_blob(settings.identity)
        matching = [key for key in agent_keys if blob is None or key.asbytes() == blob]
        if not matching:
            raise ConnectError(
                f"{settings.where}.identity: {settings.identity} needs a passphrase and "
                f"ssh-agent does not hold it: add it with ssh-add {settings.identity}") from None
        return matching
    except (OSError, paramiko.SSHException, ValueError) as error:
        raise ConnectError(f"{settings.where}.identity: cannot use {settings.identity}: "
                           f"{error}") from None


def open_transport(settings: Settings, known: list[KnownKey]) -> paramiko.Transport:
    """TCP and the SSH handshake, up to the server's host key (not checked yet, nor logged
    in), or ConnectError."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise ConnectError(f"cannot connect to {settings.host} port {settings.port}: "
                           f"{error.strerror or error}") from None
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        options.key_types = key_types(options.key_types, known)
        transport.start_client(timeout=CONNECT_TIMEOUT)
    except Exception as error:
        transport.close()
        raise ConnectError(f"{settings.host} port {settings.port}: "
                           f"{error or type(error).__name__}") from None
    return transport


def connect(settings: Settings) -> Connection:
    """A logged-in connection with an SFTP session, or ConnectError."""
    try:
        link = Link(settings)
    except OSError as error:
        raise ConnectError(f"cannot run ssh: {error.strerror or error}") from None
    try:
        session = Session(link)
    except (ConnectionLost, SftpError) as error:
        said = link.said() or [str(error)]
        link.close()
        raise refusal(settings, said) from None
    link.timeout = IO_TIMEOUT
    log.debug("%s: logged in to %s, round trip %.1f ms", settings.where, settings.host_name,
              session.round_trip * 1000)
    return Connection(link, session)


def refusal(settings: Settings, said: list[str]) -> ConnectError:
    """Why ssh could not open the session, from what it said (its last line says why)."""
    where = f"{settings.host} port {settings.port}"
    if unreachable := UNREACHABLE.search(said[-1]):
        return ConnectError(f"cannot connect to {where}: {unreachable.group(1)}")
    if "Host key verification failed" in said[-1]:
        try:
            known = known_keys(settings)
            transport = open_transport(settings, known)
        except ConnectError as error:
            return error
        try:
            check_host_key(settings, transport.get_remote_server_key(), known)
        except HostKeyError as error:
            return error
        finally:
            transport.close()
    if "Permission denied" in said[-1]:
        if settings.identity is not None and any("UNPROTECTED PRIVATE KEY" in line
                                                 for line in said):
            return ConnectError(f"{settings.where}.identity: ssh will not use {settings.identity}: "
                                f"others may read it (chmod 600 {settings.identity})")
        try:
            keys = login_keys(settings)
        except ConnectError as error:
            return error
        return ConnectError(f"{settings.where}: {settings.user}@{settings.host} refused every "
                            f"key offered ({', '.join(key.get_name() for key in keys)})")
    return ConnectError(f"{where}: {said[-1]}")
