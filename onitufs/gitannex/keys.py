"""git-annex keys: the content key of a revision, parsing a key, and the two directory
hashes git-annex answers DIRHASH and DIRHASH-LOWER with.

A key is ``BACKEND[-sSIZE][-mMTIME][-SCHUNKSIZE-CCHUNKNUMBER]--NAME``. A revision that
onitufs stores is named by its content, ``SHA256E-s<size>--<sha256 hex>``: the same
content gets the same key wherever it is, and a key never holds whitespace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

# The fields of a key, in the order git-annex writes them.
_FIELDS = ("s", "m", "S", "C")
# What DIRHASH's characters are made of: git-annex avoids letters that would spell words.
_MIXED = "0123456789zqjxkmvwgpfZQJXKMVWGPF"


@dataclass(frozen=True)
class Key:
    backend: str
    name: str
    size: int | None = None
    mtime: int | None = None
    chunk_size: int | None = None
    chunk_number: int | None = None

    def __str__(self) -> str:
        values = (self.size, self.mtime, self.chunk_size, self.chunk_number)
        fields = "".join(f"-{letter}{value}" for letter, value in zip(_FIELDS, values, strict=True)
                         if value is not None)
        return f"{self.backend}{fields}--{self.name}"

    def whole(self) -> Key:
        """The key without its chunk fields: what the directory hashes are computed from, so
        that every chunk of a key lands beside the others."""
        return replace(self, chunk_size=None, chunk_number=None)


def parse_key(text: str) -> Key:
    """The key `text` names; ValueError if it is not one (git-annex would not take it)."""
    head, separator, name = text.partition("--")
    backend, *fields = head.split("-")
    if not separator or not backend or not name or any(c.isspace() for c in text):
        raise ValueError(f"not a git-annex key: {text!r}")
    values: dict[str, int] = {}
    for field in fields:
        letter, digits = field[:1], field[1:]
        # each field at most once, in git-annex's order, as git-annex requires
        if letter not in _FIELDS or any(_FIELDS.index(seen) >= _FIELDS.index(letter)
                                        for seen in values) \
                or not digits.isdigit() or not digits.isascii():
            raise ValueError(f"not a git-annex key: {text!r} (field {field!r})")
        values[letter] = int(digits)
    return Key(backend, name, values.get("s"), values.get("m"), values.get("S"), values.get("C"))


def content_key(sha256: bytes, size: int, extension: str = "") -> str:
    """The key of content of `size` bytes with that SHA-256 digest; `extension` (".txt"),
    where wanted, is part of its name as in git-annex's SHA256E keys."""
    return f"SHA256E-s{size}--{sha256.hex()}{extension}"


def _md5(key: str) -> bytes:
    whole = str(parse_key(key).whole())
    return hashlib.md5(whole.encode("utf-8", "surrogateescape"), usedforsecurity=False).digest()


def dirhash_lower(key: str) -> str:
    """DIRHASH-LOWER: the first six hex digits of the key's MD5, as ``abc/def/``."""
    digest = _md5(key).hex()
    return f"{digest[0:3]}/{digest[3:6]}/"


def dirhash_mixed(key: str) -> str:
    """DIRHASH, ``aB/cD/``: from the first 32-bit little-endian word of the key's MD5, one
    character for each 6 bits (the low 5 of them), each pair swapped."""
    word = int.from_bytes(_md5(key)[:4], "little")
    chars = [_MIXED[(word >> (6 * n)) & 31] for n in range(4)]
    chars[0], chars[1], chars[2], chars[3] = chars[1], chars[0], chars[3], chars[2]
    return f"{chars[0]}{chars[1]}/{chars[2]}{chars[3]}/"
