"""The [remotes.NAME] table of an SSH remote, read and checked once into Settings."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from onitufs.config import ConfigError, Options

# The keys of the table besides the core's driver and mode: the core refuses any other.
OPTIONS = ("host", "port", "user", "path", "identity", "known_hosts", "poll_interval",
           "connections", "upload_connections")


@dataclass(frozen=True)
class Settings:
    where: str  # the config's name for this table, for messages
    host: str
    port: int
    user: str
    path: str  # as configured: relative to the login folder, or absolute
    identity: Path | None  # None: the keys of the running ssh-agent
    known_hosts: Path
    poll_interval: float
    connections: int  # SSH connections for reads (uploads open their own)
    upload_connections: int | None  # per large upload; None: as the link's round trip says

    @property
    def host_name(self) -> str:
        """The host as known_hosts names it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def read(options: Options) -> Settings:
    port = options.integer("port", 22)
    if not 0 < port < 65536:
        raise ConfigError(f"{options.where}.port: expected a port number from 1 to 65535")
    connections = options.integer("connections", 4)
    if not 1 <= connections <= 16:
        raise ConfigError(f"{options.where}.connections: expected 1 to 16")
    upload_connections = None  # left out: chosen per upload from the link's round trip
    if "upload_connections" in options:
        upload_connections = options.integer("upload_connections")
        if not 1 <= upload_connections <= 4:
            raise ConfigError(f"{options.where}.upload_connections: expected 1 to 4")
    host, user = login(options)
    return Settings(
        where=options.where,
        host=host,
        port=port,
        user=user,
        path=options.string("path"),
        identity=options.path("identity") if "identity" in options else None,
        known_hosts=options.path("known_hosts", "~/.ssh/known_hosts"),
        poll_interval=options.duration("poll_interval", "30s"),
        connections=connections,
        upload_connections=upload_connections,
    )


def login(options: Options) -> tuple[str, str]:
    """The host and the user: `host` may be USER@HOST, as ssh takes it, and then names the
    user itself; a `user` key that says otherwise is refused, never silently overridden."""
    user = options.string("user", getpass.getuser())
    named, at, host = options.string("host").rpartition("@")
    if not at:
        return host, user
    if not named or not host:
        raise ConfigError(f"{options.where_of('host')}: expected HOST or USER@HOST")
    if "user" in options and named != user:
        raise ConfigError(f"{options.where_of('host')}: names the user {named!r}, and user "
                          f"says {user!r}: keep one")
    return host, named
