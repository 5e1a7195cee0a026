"""Reading and checking the TOML configuration of one mount.

Every problem is raised as a ConfigError whose message names the file and
the key, so the command line can print it as one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("rw", "r", "w")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def parse_size(value: object, where: str) -> int:
    """Bytes from an integer or a string such as "4 GiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ConfigError(f"{where}: {value!r} is not a size (try \"4 GiB\" or \"512 MiB\")")


def parse_duration(value: object, where: str) -> float:
    """Seconds from a number or a string such as "30s", "500ms" or "5m"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        if match and match.group(2).lower() in _DURATION_UNITS:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    raise ConfigError(f"{where}: {value!r} is not a duration (try \"30s\" or \"500ms\")")


class Options:
    """The keys of one config table, with typed getters that name the key on error.

    Drivers receive their table as an Options object, so that every driver
    reports a bad value in the same words. `origins` names where a key came from when
    that is not this table of the file (a mount option, say).
    """

    def __init__(self, table: Mapping[str, Any], where: str, base_dir: Path,
                 origins: Mapping[str, str] | None = None) -> None:
        self._table = dict(table)
        self.where = where
        self.base_dir = base_dir
        self._origins = dict(origins or {})

    def __repr__(self) -> str:
        # The keys only: a value may be a secret (a token, a password) that no log may show.
        return f"Options({self.where}: {', '.join(self._table)})"

    def where_of(self, key: str) -> str:
        """Where `key` was set, for an error message."""
        return self._origins.get(key, f"{self.where}.{key}")

    def __contains__(self, key: str) -> bool:
        return key in self._table

    def only(self, *allowed: str) -> None:
        """Refuse keys this table does not have: a typo must not pass silently."""
        for key in self._table:
            if key not in allowed:
                raise ConfigError(f"{self._origins.get(key, self.where)}: unknown key '{key}' "
                                  f"(known: {', '.join(allowed)})")

    def _get(self, key: str, default: object) -> object:
        if key in self._table:
            return self._table[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.where}: missing key '{key}'")
        return default

    def string(self, key: str, default: object = None) -> str:
        value = self._get(key, default if default is not None else _REQUIRED)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where_of(key)}: expected a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self._table else None

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.where_of(key)}: expected a whole number")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where_of(key)}: expected true or false")
        return value

    def size(self, key: str, default: int | str) -> int:
        return parse_size(self._get(key, default), self.where_of(key))

    def duration(self, key: str, default: float | str) -> float:
        return parse_duration(self._get(key, default), self.where_of(key))

    def path(self, key: str, default: str | None = None) -> Path:
        """A path; '~' is expanded and a relative one is taken from the config's folder."""
        raw = self.string(key, default)
        return (self.base_dir / Path(raw).expanduser()).absolute()

    def table(self, key: str) -> dict[str, Any]:
        """A table of its own (`key = { name = "value" }`); empty when the key is absent."""
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where_of(key)}: expected a table, as "
                              f"{key} = {{ name = \"value\" }}")
        return dict(value)


_REQUIRED = object()


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    driver: str
    mode: str
    options: Options

    @property
    def readable(self) -> bool:
        return "r" in self.mode

    @property
    def writable(self) -> bool:
        return "w" in self.mode


@dataclass(frozen=True)
class Config:
    source: Path
    cache_path: Path
    cache_size: int
    block_size: int
    write_buffer: int  # written data held in memory before it goes to LMDB
    upload_delay: float
    stall: float  # how long a remote may get nowhere before an unmount stops waiting for it
    fsync_replicas: int  # fsync returns once this many remotes hold the revision (0: local)
    remotes: list[RemoteConfig] = field(default_factory=list)
    mountpoint: Path | None = None  # where `onitufs mount CONFIG` mounts it


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOP_LEVEL = {"mountpoint", "cache", "sync", "remotes"}
OPTION_TABLES = ("cache", "sync")  # whose keys a mount option can set


def load(path: Path, options: Mapping[str, str] | None = None) -> Config:
    """Read and check the config file at `path`, with `options` ("TABLE.KEY" to a value,
    from `-o TABLE.KEY=VALUE`) set over the file's keys."""
    path = path.expanduser().resolve()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:  # the arguments swapped: mount CONFIG MOUNTPOINT
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse(data, path, options or {})


def parse(data: Mapping[str, Any], path: Path,
          mount_options: Mapping[str, str] | None = None) -> Config:
    base = path.parent
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"{path}: unknown table or key '{sorted(unknown)[0]}'")
    cache, sync = _with_options(data, path, mount_options or {})
    cache.only("path", "size", "block_size", "write_buffer")
    sync.only("upload_delay", "fsync", "stall")
    block_size = cache.size("block_size", "1 MiB")
    if not 4096 <= block_size <= 64 * 1024**2 or block_size % 4096:
        raise ConfigError(f"{cache.where_of('block_size')}: must be a multiple of 4 KiB "
                          "between 4 KiB and 64 MiB")
    cache_size = cache.size("size", "4 GiB")
    if cache_size < 16 * block_size:
        raise ConfigError(f"{cache.where_of('size')}: must hold at least 16 blocks "
                          f"({16 * block_size} bytes)")
    write_buffer = cache.size("write_buffer", "64 MiB")
    if write_buffer < 2 * block_size:
        raise ConfigError(f"{cache.where_of('write_buffer')}: must hold at least 2 blocks "
                          f"({2 * block_size} bytes)")
    remotes_table = _table(data, "remotes", path)
    if not remotes_table:
        raise ConfigError(f"{path}: no remotes: add at least one [remotes.NAME] table")
    remotes = []
    for name, table in remotes_table.items():
        where = f"{path}: remotes.{name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: a remote name may use only letters, digits, '.', '_', '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        options = Options(table, where, base)
        mode = options.string("mode", "rw")
        if mode not in MODES:
            raise ConfigError(f"{where}.mode: expected one of rw, r, w")
        remotes.append(RemoteConfig(name, options.string("driver"), mode, options))
    if not any(remote.readable for remote in remotes):
        raise ConfigError(f"{path}: every remote is write-only; at least one must be readable")
    fsync = sync.string("fsync", "local")
    match = re.fullmatch(r"replicas:(\d+)", fsync)
    writable = sum(remote.writable for remote in remotes)
    if fsync != "local" and not (match and 1 <= int(match.group(1)) <= writable):
        raise ConfigError(f"{sync.where_of('fsync')}: expected \"local\" or \"replicas:K\" with K "
                          f"from 1 to {writable} (the writable remotes)")
    return Config(
        source=path,
        cache_path=cache.path("path", str(_cache_home() / "onitufs" / f"{path.stem}-{_digest(path)}")),
        cache_size=cache_size,
        block_size=block_size,
        write_buffer=write_buffer,
        upload_delay=sync.duration("upload_delay", "2s"),
        stall=sync.duration("stall", "60s"),
        fsync_replicas=int(match.group(1)) if match else 0,
        remotes=remotes,
        mountpoint=_mountpoint(data, path),
    )


def _with_options(data: Mapping[str, Any], path: Path,
                  options: Mapping[str, str]) -> tuple[Options, Options]:
    """The [cache] and [sync] tables with the mount options' keys set over the file's; an
    error in one of those names the option, not the file."""
    tables = {name: _table(data, name, path) for name in OPTION_TABLES}
    origins: dict[str, dict[str, str]] = {name: {} for name in OPTION_TABLES}
    for dotted, value in options.items():
        table, _, key = dotted.partition(".")
        if table not in OPTION_TABLES or not key:
            raise ConfigError(f"-o {dotted}={value}: only the keys of [cache] and [sync] can "
                              "be mount options (as cache.size=8GiB)")
        tables[table] = {**tables[table], key: value}
        origins[table][key] = f"-o {dotted}"
    cache, sync = (Options(tables[name], f"{path}: {name}", path.parent, origins[name])
                   for name in OPTION_TABLES)
    return cache, sync


def _mountpoint(data: Mapping[str, Any], path: Path) -> Path | None:
    """The top-level `mountpoint` key: a path, resolved as the other local paths are."""
    if "mountpoint" not in data:
        return None
    return Options(data, str(path), path.parent,
                   {"mountpoint": f"{path}: mountpoint"}).path("mountpoint")


def _cache_home() -> Path:
    """$XDG_CACHE_HOME, or ~/.cache where it is unset or not absolute (XDG base dirs)."""
    configured = Path(os.environ.get("XDG_CACHE_HOME", ""))
    return configured if configured.is_absolute() else Path("~/.cache")


def _digest(path: Path) -> str:
    return hashlib.sha256(bytes(path)).hexdigest()[:8]


def _table(data: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{key}' must be a table ([{key}])")
    return value
