"""What is on the server: Metadata from SFTP attributes, and the full listing the poll reports,
decoded only when the server's answers changed (Tree).

SFTP (version 3) gives sizes, permissions and modification times in whole
seconds, and no inode numbers: a version's token is "MTIME:SIZE" and
file_id stays None, so a rename on the server reads as a delete and a
create (the core copes). Uploads set the mtime, so an edit made on the
server shows by its new mtime or size.
"""

from __future__ import annotations

import collections
import hashlib
import stat
from dataclasses import dataclass

from onitufs.plug import TEMP_SUFFIX, Kind, Metadata

from .sftp import (
    CLOSE,
    HANDLE,
    OPENDIR,
    READDIR,
    READLINK,
    Attrs,
    Session,
    SftpError,
    decode_names,
    pack_string,
)

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


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class _Folder:
    """What a walk found in one folder."""

    digest: bytes  # of the server's READDIR answers, as they came
    folders: tuple[str, ...]  # the paths of its subfolders
    links: tuple[str, ...]  # of its symbolic links


class Tree:
    """The remote's tree, walked again and again.

    A folder's READDIR answers hold the names and attributes of its entries,
    so a folder in which nothing was added, removed, renamed or changed
    (size, times, mode) gives the same bytes as at the last walk: a hash of
    them tells so for far less than decoding each entry into Metadata, which
    is most of what a walk of a large tree costs here. A walk decodes the
    folders whose answers differ (to find their subfolders and links), and
    the rest only when it lists.
    """

    def __init__(self) -> None:
        self._folders: dict[str, _Folder] = {}  # as the last complete walk found them
        self._targets: dict[str, bytes] = {}  # every symbolic link's target, the same

    def walk(self, sftp: Session, root: bytes, wanted: bool = True) -> list[Metadata] | None:
        """Every file, folder and symlink below root (temporary upload files left out), or
        None when the server answered exactly as at the last walk, unless `wanted`.

        Up to FOLDERS_AT_ONCE folders are read at once, each request sent without
        waiting for the others' answers, so that a listing costs a few round trips
        per level of the tree rather than three for every folder; the requests made
        while answers are at hand go out together, in one SSH packet.
        """
        answers: dict[str, list[memoryview]] = {}  # of each folder, kept until the end
        folders: dict[str, _Folder] = {}  # read to the end
        decoded: dict[str, list[Metadata]] = {}  # of the folders that changed
        targets: dict[str, bytes] = {}
        unread = collections.deque([""])  # folders found and not yet opened
        # (request id, request type, the folder, or for READLINK the link; the folder's handle)
        asked: collections.deque[tuple[int, int, str, bytes]] = collections.deque()
        handles: set[bytes] = set()  # of the folders open
        opened = 0  # folders asked to be opened and not closed yet
        try:
            while unread or asked:
                while unread and opened < FOLDERS_AT_ONCE:
                    folder = unread.popleft()
                    asked.append((sftp.request(OPENDIR, pack_string(where(root, folder)),
                                               later=True), OPENDIR, folder, b""))
                    answers[folder] = []
                    opened += 1
                request_id, kind, folder, handle = asked.popleft()
                what = where(root, folder).decode(errors="replace")
                if kind == READLINK:
                    targets[folder] = sftp.named(request_id, what)
                    continue
                if kind == OPENDIR:
                    handle = sftp.check(request_id, HANDLE, what).string()
                    handles.add(handle)
                else:
                    answer = sftp.name_answer(request_id, what)
                    if answer is None:
                        handles.discard(handle)
                        sftp.discard(sftp.request(CLOSE, pack_string(handle), later=True))
                        opened -= 1
                        found = folders[folder] = self._read(folder, answers[folder], decoded)
                        unread.extend(found.folders)
                        for link in found.links:
                            asked.append((sftp.request(READLINK, pack_string(where(root, link)),
                                                       later=True), READLINK, link, b""))
                        continue
                    answers[folder].append(answer)
                asked.append((sftp.request(READDIR, pack_string(handle), later=True), READDIR,
                              folder, handle))
        except SftpError:  # the session goes on serving: leave nothing of this walk in it
            for request_id, _, _, _ in asked:
                sftp.discard(request_id)
            for handle in handles:
                sftp.discard(sftp.request(CLOSE, pack_string(handle), later=True))
            raise
        finally:
            sftp.flush()  # the last CLOSEs, whose answers no one waits for
        same = folders == self._folders and targets == self._targets
        self._folders, self._targets = folders, targets
        if same and not wanted:
            return None
        entries = []
        for folder, raw in answers.items():
            entries += decoded[folder] if folder in decoded else _decode(folder, raw)
        for md in entries:
            if md.kind == "symlink":
                md.target = decode(targets[md.path])
        return entries

    def _read(self, folder: str, raw: list[memoryview],
              decoded: dict[str, list[Metadata]]) -> _Folder:
        """What the folder holds: as at the last walk when its answers were the same, else
        decoded from them (and kept in `decoded`)."""
        hashed = hashlib.sha256()  # of the fast ones here (SHA extensions), and sound
        for answer in raw:
            hashed.update(answer)
        digest = hashed.digest()
        before = self._folders.get(folder)
        if before is not None and before.digest == digest:
            return before
        entries = decoded[folder] = _decode(folder, raw)
        return _Folder(digest, tuple(md.path for md in entries if md.kind == "dir"),
                       tuple(md.path for md in entries if md.kind == "symlink"))


def walk(sftp: Session, root: bytes) -> list[Metadata]:
    """Every file, folder and symlink below root, listed once."""
    entries = Tree().walk(sftp, root)
    assert entries is not None  # a first walk always lists
    return entries


def where(root: bytes, folder: str) -> bytes:
    return root + b"/" + encode(folder) if folder else root


def _decode(folder: str, answers: list[memoryview]) -> list[Metadata]:
    """The entries of a folder the listing reports, from its READDIR answers."""
    return [md for answer in answers for raw, attrs in decode_names(answer)
            if (md := _entry(folder, raw, attrs)) is not None]


def _entry(folder: str, raw: bytes, attrs: Attrs) -> Metadata | None:
    """The Metadata of one entry of a folder, or None for what the listing leaves out."""
    name = decode(raw)
    if name.endswith(TEMP_SUFFIX) or "/" in name or kind_of(attrs) is None:
        return None
    return describe(f"{folder}/{name}" if folder else name, attrs)
