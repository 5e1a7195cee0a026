"""The mapping of names for remotes that store only UTF-8, both ways, and the escapes of
names a remote cannot hold (onitufs.storednames)."""

from __future__ import annotations

import os
import random

from onitufs.plug import from_utf8, to_utf8
from onitufs.storednames import disk_name, escape, mount_name, unescape


def test_valid_utf8_names_are_left_alone() -> None:
    for path in ["plain.txt", "100% sure", "a%zz", "ünïcödé/✓", "50%", "%", "a%41b", "%2F%00"]:
        assert to_utf8(path) == path
        assert from_utf8(path) == path


def test_other_bytes_are_escaped_and_come_back() -> None:
    assert to_utf8(os.fsdecode(b"caf\xe9.txt")) == "caf%E9.txt"
    assert to_utf8("looks%E9escaped") == "looks%25E9escaped"
    assert to_utf8("100%25") == "100%2525"
    assert from_utf8("caf%E9.txt") == os.fsdecode(b"caf\xe9.txt")
    rng = random.Random(5)
    for _ in range(2000):
        name = bytes(rng.choice([*range(1, 47), *range(48, 256)]) for _ in range(rng.randrange(1, 40)))
        path = os.fsdecode(name)
        mapped = to_utf8(path)
        mapped.encode("utf-8")  # storable
        assert from_utf8(mapped) == path, name


def test_every_name_round_trips_through_its_escape() -> None:
    for name in ["Report.txt", "at 10:30", "plain", "trailing.", "caf\u00e9", "cafe\u0301",
                 "%41~onitufs", os.fsdecode(b"not UTF-8 \xff"), "\u65e5\u672c", "a\tb"]:
        stored = escape(name)
        assert stored != name and unescape(stored) == name, name
        assert mount_name(stored) == name


def test_a_stored_name_that_would_read_as_no_name_is_its_own() -> None:
    """What escape() would make of a name with '/' or NUL, or of '.' or '..', names no
    mount holds: a file so named on a remote (made by hand, or by a hostile program)
    reads as itself, never as a path of two names, or as the folder or its parent."""
    for stored in ["a%2Fb~onitufs", "%2F~onitufs", ".%2E~onitufs", "%2E~onitufs",
                   "%00~onitufs", "a%00b~onitufs", "~onitufs"]:
        assert unescape(stored) is None, stored
        assert mount_name(stored) == stored and disk_name(stored) == stored, stored
