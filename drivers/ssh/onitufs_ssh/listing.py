"""What is on the server: Metadata from SFTP attributes, and the full listing the poll reports.

SFTP (version 3) gives sizes, permissions and modification times in whole
seconds, and no inode numbers: a version's token is "MTIME:SIZE" and
file_id stays None, so a rename on the server reads as a delete and a
create (the core copes). Uploads set the mtime, so an edit made on the
server shows by its new mtime or size.
"""

from __future__ import annotations

import collections
import stat

from onitufs.plug import TEMP_SUFFIX, Kind, Metadata

from .sftp import CLOSE, HANDLE, OPENDIR, READDIR, READLINK, Attrs, Session, SftpError, pack_string

FOLDERS_AT_ONCE = 16  # folders the listing has open at once on the server


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
    """Every file, folder and symlink below root (temporary upload files left out).

    Up to FOLDERS_AT_ONCE folders are read at once, each request sent without
    waiting for the others' answers, so that a listing costs a few round trips
    per level of the tree rather than three for every folder.
    """
    entries: list[Metadata] = []
    unread = collections.deque([""])  # folders found and not yet opened
    # (request id, request type, the folder, or for READLINK the link; the folder's handle)
    asked: collections.deque[tuple[int, int, str, bytes]] = collections.deque()
    handles: set[bytes] = set()  # of the folders open
    links: dict[str, Metadata] = {}  # whose targets are asked for
    opened = 0  # folders asked to be opened and not closed yet
    try:
        while unread or asked:
            while unread and opened < FOLDERS_AT_ONCE:
                folder = unread.popleft()
                asked.append((sftp.request(OPENDIR, pack_string(where(root, folder))), OPENDIR,
                              folder, b""))
                opened += 1
            request_id, kind, folder, handle = asked.popleft()
            what = where(root, folder).decode(errors="replace")
            if kind == READLINK:
                target = sftp.link_target(request_id, what)
                links.pop(folder).target = target.decode("utf-8", "surrogateescape")
                continue
            if kind == OPENDIR:
                handle = sftp.check(request_id, HANDLE, what).string()
                handles.add(handle)
            else:
                found = sftp.names(request_id, what)
                if found is None:
                    handles.discard(handle)
                    sftp.discard(sftp.request(CLOSE, pack_string(handle)))  # no use waiting
                    opened -= 1
                    continue
                for raw, attrs in found:
                    md = _entry(folder, raw, attrs)
                    if md is None:
                        continue
                    entries.append(md)
                    if md.kind == "dir":
                        unread.append(md.path)
                    elif md.kind == "symlink":
                        links[md.path] = md
                        asked.append((sftp.request(READLINK, pack_string(where(root, md.path))),
                                      READLINK, md.path, b""))
            asked.append((sftp.request(READDIR, pack_string(handle)), READDIR, folder, handle))
    except SftpError:  # the session goes on serving: leave nothing of this listing in it
        for request_id, _, _, _ in asked:
            sftp.discard(request_id)
        for handle in handles:
            sftp.discard(sftp.request(CLOSE, pack_string(handle)))
        raise
    return entries


def where(root: bytes, folder: str) -> bytes:
    return root + b"/" + encode(folder) if folder else root


def _entry(folder: str, raw: bytes, attrs: Attrs) -> Metadata | None:
    """The Metadata of one entry of a folder, or None for what the listing leaves out."""
    name = raw.decode("utf-8", "surrogateescape")
    if name.endswith(TEMP_SUFFIX) or "/" in name or kind_of(attrs) is None:
        return None
    return describe(f"{folder}/{name}" if folder else name, attrs)
