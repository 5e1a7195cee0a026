"""The keys of a Dropbox remote's table, read and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onitufs.config import ConfigError, Options

# The table's keys besides the core's driver and mode: the core refuses any other.
OPTIONS = ("app_key", "token_file", "path")


@dataclass(frozen=True)
class Settings:
    where: str
    app_key: str
    token_file: Path
    root: str  # the folder in the Dropbox as the API names it: "" or "/Cloud"

    @property
    def auth_hint(self) -> str:
        """The command that gives this remote a new token."""
        config, _, remote = self.where.rpartition(": remotes.")
        return f"onitufs auth {config} {remote}" if config else "onitufs auth CONFIG REMOTE"


def read(options: Options) -> Settings:
    path = options.string("path", "/")
    if not path.startswith("/") or "//" in path:
        raise ConfigError(f"{options.where}.path: expected a folder of the Dropbox such as "
                          f"\"/Cloud\" (starting with '/'), not {path!r}")
    return Settings(where=options.where, app_key=options.string("app_key"),
                    token_file=options.path("token_file"), root=path.rstrip("/"))
