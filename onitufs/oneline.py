"""A message for one line of a status, a log or a protocol: no line breaks, and no more
than LIMIT characters.

An error often holds a path, and a path can be as long as the tree is deep: thousands of
bytes where a remote cannot hold it (ENAMETOOLONG below a folder deeper than PATH_MAX). Its
middle goes: the start says what failed, the end names the file.
"""

from __future__ import annotations

LIMIT = 400


def one_line(text: str, limit: int = LIMIT) -> str:
    text = " ".join(text.splitlines())
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[len(text) - half:]}"
