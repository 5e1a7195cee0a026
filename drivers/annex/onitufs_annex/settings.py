"""The keys of an annex remote's table, read and checked, and where its files go."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from onitufs.config import ConfigError, Options
from onitufs.gitannex.protocol import WHITESPACE

# The table's keys besides the core's driver and mode: the core refuses any other.
OPTIONS = ("program", "config", "poll_interval", "timeout", "remove_after", "export")


@dataclass(frozen=True)
class Settings:
    where: str
    program: str  # as found on PATH when it has no '/', else an absolute path
    config: dict[str, str]  # what GETCONFIG answers
    poll_interval: float
    timeout: float
    remove_after: float
    export: bool  # files under their own paths (the export interface), not their keys


def read(options: Options) -> Settings:
    raw = options.string("program")
    program = str(options.path("program")) if "/" in raw else raw
    config = {}
    for name, value in options.table("config").items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{options.where_of('config')}.{name}: expected a string "
                              "(every setting of a special remote is one)")
        config[str(name)] = str(value)
    return Settings(where=options.where, program=program, config=config,
                    poll_interval=options.duration("poll_interval", "30s"),
                    timeout=options.duration("timeout", "60s"),
                    remove_after=options.duration("remove_after", "1h"),
                    export=options.boolean("export", False))


def check(options: Options) -> None:
    """The program can be run; read() itself checks the rest."""
    settings = read(options)
    found = shutil.which(settings.program)
    if found is None:
        what = "is not an executable file" if "/" in settings.program else \
            "is not a program on PATH (install it, or give its path)"
        raise ConfigError(f"{settings.where}.program: {settings.program} {what}")


def work_folder(state: Path) -> Path:
    """Where files handed to the program go (uploads spooled, content retrieved): the
    remote's own folder of the cache, unless its path holds whitespace (some programs split
    lines on it); then a private folder under /tmp, removed when a mount ends with no
    upload left to resume."""
    if not any(byte in WHITESPACE for byte in bytes(state)):
        return state
    digest = hashlib.sha256(bytes(state)).hexdigest()[:16]
    folder = Path("/tmp") / f"onitufs-annex-{os.getuid()}-{digest}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        st = folder.lstat()  # made by someone else, or a link: not ours to use
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ConfigError(f"{folder}: exists and is not a private folder of this "
                              "user") from None
    return folder
