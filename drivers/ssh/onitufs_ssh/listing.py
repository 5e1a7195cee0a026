"""What is on the server: Metadata from SFTP attributes, and the full listing the poll reports.

SFTP (version 3) gives sizes, permissions and modification times in whole
seconds, and no inode numbers: a version's token is "MTIME:SIZE" and
file_id stays None, so a rename on the server reads as a delete and a
create (the core copes). Uploads set the mtime, so an edit made on the
server shows by its new mtime or size.
"""

from __future__ import annotations

import stat

from onitufs.plug import TEMP_SUFFIX, Kind, Metadata

from .sftp import Attrs, Session


def token(attrs: Attrs) -> str:
    return f"{attrs.mtime or 0}:{attrs.size or 0}"


def kind_of(attrs: Attrs) -> Kind | None:
    mode = attrs.mode or 0
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return None  # fifos, sockets, devices: not ours to copy


def describe(path: str, attrs: Attrs) -> Metadata:
    kind = kind_of(attrs) or "file"
    return Metadata(path=path, kind=kind, size=(attrs.size or 0) if kind == "file" else 0,
                    mtime_ns=(attrs.mtime or 0) * 10**9, mode=stat.S_IMODE(attrs.mode or 0),
                    revision=token(attrs), file_id=None)


def encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def walk(sftp: Session, root: bytes) -> list[Metadata]:
    """Every file, folder and symlink below root (temporary upload files left out)."""
    entries: list[Metadata] = []
    folders = [""]
    while folders:
        folder = folders.pop()
        where = root + b"/" + encode(folder) if folder else root
        for raw, attrs in sftp.listdir(where):
            name = raw.decode("utf-8", "surrogateescape")
            if name.endswith(TEMP_SUFFIX) or "/" in name:
                continue
            kind = kind_of(attrs)
            if kind is None:
                continue
            path = f"{folder}/{name}" if folder else name
            md = describe(path, attrs)
            if kind == "dir":
                folders.append(path)
            elif kind == "symlink":
                md.target = sftp.readlink(where + b"/" + raw).decode("utf-8", "surrogateescape")
            entries.append(md)
    return entries
