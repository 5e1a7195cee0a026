"""The mapping of names for remotes that store only UTF-8, both ways."""

from __future__ import annotations

import os
import random

from onitufs.plug import from_utf8, to_utf8


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
