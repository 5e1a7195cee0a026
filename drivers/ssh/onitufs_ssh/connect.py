"""Opening one SSH connection: TCP, the host key checked against known_hosts, a key to log in.

The server's host key must already be in known_hosts: an unknown or a
changed key raises HostKeyError, whose message is one line saying what the
server offered and how to accept it. Nothing is ever added to known_hosts.
Keys come from the configured identity file, or from the running ssh-agent
(which is also where a key with a passphrase is used from). Nothing secret
is logged; paramiko's own logging is kept to warnings.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from .settings import Settings
from .sftp import Session

log = logging.getLogger(__name__)
logging.getLogger("paramiko").setLevel(logging.WARNING)

CONNECT_TIMEOUT = 15.0
IO_TIMEOUT = 120.0  # a request unanswered this long is a dead connection
WINDOW = 8 * 1024 * 1024
MAX_PACKET = 32768
KEEPALIVE = 15
# From this round trip on, what one connection may leave unacknowledged caps a large
# transfer (OpenSSH's window for an upload, the requests in flight for a read): it then
# goes over LANES_ON_LONG_LINKS connections. Close by, a second one only adds work.
LONG_LINK = 0.01
LANES_ON_LONG_LINKS = 2
# Fast authenticated ciphers first: AES-GCM is what keeps one connection near the wire's speed.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr")
KEYSCAN_TYPES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ssh-dss": "dsa"}
RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


class ConnectError(Exception):
    """The server cannot be reached or refused us; the message is one line."""


class HostKeyError(ConnectError):
    """The server's host key is not the one known_hosts has for it."""


@dataclass
class Connection:
    transport: paramiko.Transport
    sftp: Session
    # files kept open for reading: (path, revision) -> (handle, when last checked)
    handles: collections.OrderedDict[tuple[bytes, str | None], tuple[bytes, float]] = field(
        default_factory=collections.OrderedDict)

    def alive(self) -> bool:
        return self.transport.is_active() and not self.sftp.channel.closed

    def lanes(self) -> int:
        """Connections a large transfer should use."""
        return LANES_ON_LONG_LINKS if self.sftp.round_trip >= LONG_LINK else 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.transport.close()


def keyscan_type(key_name: str) -> str:
    return "ecdsa" if key_name.startswith("ecdsa-") else KEYSCAN_TYPES.get(key_name, key_name)


def known_keys(settings: Settings) -> dict[str, paramiko.PKey]:
    """The keys known_hosts has for the server, by type (empty when none or no file)."""
    try:
        hostkeys = paramiko.HostKeys(str(settings.known_hosts))
    except FileNotFoundError:
        return {}
    except (OSError, paramiko.SSHException) as error:
        raise ConnectError(f"{settings.where}.known_hosts: cannot read "
                           f"{settings.known_hosts}: {error}") from None
    found = hostkeys.lookup(settings.host_name)
    return {name: found[name] for name in found} if found is not None else {}


def check_host_key(settings: Settings, offered: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
    kind = offered.get_name()
    keyscan = (f"ssh-keyscan -p {settings.port} -t {keyscan_type(kind)} {settings.host} "
               f">> {settings.known_hosts}")
    if not known:
        raise HostKeyError(
            f"{settings.where}: the host key of {settings.host_name} is not in "
            f"{settings.known_hosts}; the server offered {kind} {offered.fingerprint}. If that "
            f"is the server's key, accept it with: {keyscan}")
    if known.get(kind) == offered:
        return
    have = ", ".join(f"{name} {key.fingerprint}" for name, key in known.items())
    raise HostKeyError(
        f"{settings.where}: HOST KEY CHANGED for {settings.host_name}: the server offered {kind} "
        f"{offered.fingerprint} but {settings.known_hosts} has {have}; not connecting (someone "
        f"may be impersonating the server). If its key was really replaced, accept the new one "
        f"with: ssh-keygen -R '{settings.host_name}' -f {settings.known_hosts} && {keyscan}")


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


def connect(settings: Settings) -> Connection:
    """A logged-in connection with an SFTP session, or ConnectError."""
    known = known_keys(settings)
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise ConnectError(f"cannot connect to {settings.host} port {settings.port}: "
                           f"{error.strerror or error}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests go out at once
    transport = paramiko.Transport(sock, default_window_size=WINDOW,
                                   default_max_packet_size=MAX_PACKET)
    try:
        options = transport.get_security_options()
        options.ciphers = tuple(
            [c for c in PREFERRED_CIPHERS if c in options.ciphers]
            + [c for c in options.ciphers if c not in PREFERRED_CIPHERS])
        if known:  # ask for the kind of key we know, as ssh does
            wanted = set(known) | (set(RSA_SIGNATURES) if "ssh-rsa" in known else set())
            types = [t for t in options.key_types if t in wanted]
            if types:
                options.key_types = tuple(types)
        transport.start_client(timeout=CONNECT_TIMEOUT)
        check_host_key(settings, transport.get_remote_server_key(), known)
        refused = []
        for key in login_keys(settings):
            try:
                transport.auth_publickey(settings.user, key)
                break
            except paramiko.AuthenticationException:
                refused.append(key.get_name())
        if not transport.is_authenticated():
            raise ConnectError(f"{settings.where}: {settings.user}@{settings.host} refused every "
                               f"key offered ({', '.join(refused) or 'none'})")
        transport.set_keepalive(KEEPALIVE)
        channel = transport.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET)
        channel.settimeout(IO_TIMEOUT)
        channel.invoke_subsystem("sftp")
        session = Session(channel)
        log.debug("%s: logged in to %s, round trip %.1f ms", settings.where, settings.host_name,
                  session.round_trip * 1000)
        return Connection(transport, session)
    except ConnectError:
        transport.close()
        raise
    except Exception as error:
        transport.close()
        raise ConnectError(f"{settings.host} port {settings.port}: "
                           f"{error or type(error).__name__}") from None
