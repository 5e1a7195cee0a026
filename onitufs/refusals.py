"""What a remote refused while the core settled one of its versions, and how long the next
try of that version waits.

A conflict is kept apart by renaming the remote's version aside there, after reading it
whole to compare it with ours where the sizes are one. A remote that refuses the rename (an
immutable file, a Dropbox folder shared read-only, a program that fails) or the read (or
where no copy of ours can be read) would otherwise be asked again at each report of that
version, every half second or so: the whole file read again each time, for as long as the
refusal lasts. Instead the same version (the remote's and ours) waits 1, 2, 4 ... s, up to
5 minutes, as a failed upload does; a new version on either side is tried at once, and so
is everything once the remote says that what it refused may go through now
(Plug.retry_now).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .plug import Metadata
from .remotes import backoff

# The remote's version (revision, file id, changed_ns) and our revision it met.
Version = tuple[str | None, str | None, int | None, int | None]


@dataclass
class Refusal:
    version: Version
    failures: int
    until: float  # time.monotonic() before which that version is not tried again


def version_of(md: Metadata, ours_rev: int | None) -> Version:
    return md.revision, md.file_id, md.changed_ns, ours_rev


class Refusals:
    """Per remote and path, the last version whose settling the remote refused."""

    def __init__(self) -> None:
        self._refused: dict[tuple[int, str], Refusal] = {}

    def waiting(self, rid: int, md: Metadata, ours_rev: int | None) -> bool:
        """Whether this version was refused lately: its try waits for now."""
        refusal = self._refused.get((rid, md.path))
        return refusal is not None and refusal.version == version_of(md, ours_rev) \
            and time.monotonic() < refusal.until

    def refused(self, rid: int, md: Metadata, ours_rev: int | None) -> None:
        """The remote refused what settling this version asked of it."""
        version = version_of(md, ours_rev)
        last = self._refused.get((rid, md.path))
        failures = last.failures + 1 if last is not None and last.version == version else 1
        self._refused[(rid, md.path)] = Refusal(version, failures,
                                                time.monotonic() + backoff(failures))

    def forget(self, rid: int) -> None:
        """Everything the remote refused is tried at its next report."""
        for key in [key for key in self._refused if key[0] == rid]:
            del self._refused[key]
