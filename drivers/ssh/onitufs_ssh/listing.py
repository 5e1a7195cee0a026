"""What is on the server: Metadata from SFTP attributes, and the listing the poll reports,
whole or the part that changed, decoded only where needed (Tree, Walked).

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
from collections.abc import Iterable
from dataclasses import dataclass

from onitufs.plug import TEMP_SUFFIX, Kind, Metadata, outermost, set_aside_by, within
from onitufs.storednames import SUFFIX, disk_name, disk_refusable

from .sftp import (
    CLOSE,
    HANDLE,
    OPENDIR,
    READDIR,
    READLINK,
    Attrs,
    Reader,
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


_SUFFIX = encode(SUFFIX)  # what ends an escape (onitufs.storednames)
_TEMP_SUFFIX = encode(TEMP_SUFFIX)


# What tells an entry's change: a folder's time moves with every name made in it, which
# its own entries tell; a file's token holds its time and size.
Signature = tuple[str, str | None, int]  # kind, token (None for a folder), mode


def signature(md: Metadata) -> Signature:
    return md.kind, None if md.kind == "dir" else md.revision, md.mode


@dataclass(frozen=True, eq=False)
class _Folder:
    """What a walk found in one folder."""

    digest: bytes  # of the server's READDIR answers, as they came
    entries: dict[str, Signature]  # by path
    folders: tuple[tuple[str, bytes], ...]  # its subfolders: their paths, and where they are
    links: tuple[tuple[str, bytes], ...]  # its symbolic links, the same
    asides: tuple[tuple[bytes, Attrs], ...]  # the Tree's owner's aside files: where, and what


class Walked:
    """One walk's answers: the paths that changed since the walk before (new, gone, or
    different), and the listing, whole or in part, decoded from the answers as asked."""

    def __init__(self, answers: dict[str, list[memoryview]], decoded: dict[str, list[Metadata]],
                 targets: dict[str, bytes], changed: set[str]) -> None:
        self._answers, self._decoded, self._targets = answers, decoded, targets
        self.changed = changed

    def listing(self) -> list[Metadata]:
        """Every file, folder and symlink below the root (temporary upload files left out)."""
        return [md for folder in self._answers for md in self._entries_of(folder)]

    def part(self, scope: Iterable[str]) -> tuple[list[Metadata], list[str]]:
        """What is held at and below the paths of `scope`, and those of its paths that are
        not below another: a part of the listing for plug.report_part. Only the folders
        holding them are decoded."""
        tops = outermost(scope)
        wanted = set(tops)
        parents = {top.rpartition("/")[0] for top in tops}
        found = [md for folder in parents if folder in self._answers
                 for md in self._entries_of(folder) if md.path in wanted]
        if any(top in self._answers for top in tops):  # folders: what is below them too
            found += [md for folder in self._answers if within(folder, wanted)
                      for md in self._entries_of(folder)]
        return found, tops

    def _entries_of(self, folder: str) -> list[Metadata]:
        entries = self._decoded.get(folder)
        if entries is None:
            named = _decode(folder, self._answers[folder])
            entries = self._decoded[folder] = [md for md, _ in named]
        for md in entries:
            if md.kind == "symlink":
                md.target = decode(self._targets[md.path])
        return entries


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

    def __init__(self, aside_owner: str = "") -> None:
        self._aside_owner = aside_owner  # whose aside files it keeps (plug.aside_owner)
        self._folders: dict[str, _Folder] = {}  # as the last complete walk found them
        self._targets: dict[str, bytes] = {}  # every symbolic link's target, the same

    def asides(self) -> list[tuple[bytes, Attrs]]:
        """The aside files of the owner's (onitufs.plug.set_aside_by) that the last walk
        found: where each is on the server, and what the walk found there."""
        return [aside for found in self._folders.values() for aside in found.asides]

    def walk(self, sftp: Session, root: bytes) -> Walked:
        """Read every folder below root; what changed since the last walk, and the listing.

        Up to FOLDERS_AT_ONCE folders are read at once, each request sent without
        waiting for the others' answers, so that a listing costs a few round trips
        per level of the tree rather than three for every folder; the requests made
        while answers are at hand go out together, in one SSH packet.
        """
        answers: dict[str, list[memoryview]] = {}  # of each folder, kept until the end
        folders: dict[str, _Folder] = {}  # read to the end
        decoded: dict[str, list[Metadata]] = {}  # of the folders that changed
        targets: dict[str, bytes] = {}
        # folders found and not yet opened: their paths, and where they are on the server
        unread: collections.deque[tuple[str, bytes]] = collections.deque([("", root)])
        at: dict[str, bytes] = {}  # where each folder opened is
        # (request id, request type, the folder, or for READLINK the link; the folder's handle,
        # or the link's path on the server)
        asked: collections.deque[tuple[int, int, str, bytes]] = collections.deque()
        handles: set[bytes] = set()  # of the folders open
        opened = 0  # folders asked to be opened and not closed yet
        try:
            while unread or asked:
                while unread and opened < FOLDERS_AT_ONCE:
                    folder, at[folder] = unread.popleft()
                    asked.append((sftp.request(OPENDIR, pack_string(at[folder]),
                                               later=True), OPENDIR, folder, b""))
                    answers[folder] = []
                    opened += 1
                request_id, kind, folder, handle = asked.popleft()
                what = (handle if kind == READLINK else at[folder]).decode(errors="replace")
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
                        found = folders[folder] = self._read(folder, at[folder], answers[folder],
                                                             decoded)
                        unread.extend(found.folders)
                        for link, link_at in found.links:
                            asked.append((sftp.request(READLINK, pack_string(link_at),
                                                       later=True), READLINK, link, link_at))
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
        changed = {link for link in targets.keys() | self._targets.keys()
                   if targets.get(link) != self._targets.get(link)}
        for folder, found in folders.items():
            before = self._folders.get(folder)
            if found is not before:
                old = before.entries if before is not None else {}
                changed.update(path for path in found.entries.keys() | old.keys()
                               if found.entries.get(path) != old.get(path))
        self._folders, self._targets = folders, targets
        return Walked(answers, decoded, targets, changed)

    def _read(self, folder: str, folder_at: bytes, raw: list[memoryview],
              decoded: dict[str, list[Metadata]]) -> _Folder:
        """What the folder (at `folder_at` on the server) holds: as at the last walk when
        its answers were the same, else decoded from them (and kept in `decoded`)."""
        hashed = hashlib.sha256()  # of the fast ones here (SHA extensions), and sound
        for number, answer in enumerate(raw):
            hashed.update(answer if number else _past_dots(answer))
        digest = hashed.digest()
        before = self._folders.get(folder)
        if before is not None and before.digest == digest:
            return before
        hidden: list[tuple[bytes, Attrs]] = []
        named = _decode(folder, raw, hidden)
        entries = decoded[folder] = [md for md, _ in named]
        return _Folder(digest, {md.path: signature(md) for md in entries},
                       tuple((md.path, folder_at + b"/" + name) for md, name in named
                             if md.kind == "dir"),
                       tuple((md.path, folder_at + b"/" + name) for md, name in named
                             if md.kind == "symlink"),
                       tuple((folder_at + b"/" + name, attrs) for name, attrs in hidden
                             if stat.S_ISREG(attrs.mode or 0)
                             and set_aside_by(decode(name), self._aside_owner) is not None))


def walk(sftp: Session, root: bytes) -> list[Metadata]:
    """Every file, folder and symlink below root, listed once."""
    return Tree().walk(sftp, root).listing()


def _past_dots(answer: memoryview) -> memoryview:
    """A folder's first READDIR answer from past its entries . and .., where it starts
    with them (the server reads them in the file system's order: first on ext4 for a
    folder of more than one block, last or in between for a smaller one): .. holds the
    parent's times, which every name made in the parent moves, and . the folder's own,
    which its other entries and its parent's answer tell. Elsewhere, the whole answer."""
    reader = Reader(answer)
    names = reader.u32()
    past = reader.pos
    for _ in range(min(2, names)):
        if reader.string() not in (b".", b".."):
            break
        reader.view()  # the long name
        reader.attrs()
        past = reader.pos
    return answer[past:]


def _decode(folder: str, answers: list[memoryview],
            hidden: list[tuple[bytes, Attrs]] | None = None) -> list[tuple[Metadata, bytes]]:
    """The entries of a folder the listing reports, from its READDIR answers, each with
    its name as stored; `hidden` (if given) gets the folder's hidden names (TEMP_SUFFIX)
    with their attributes. An escape (names.py) reads as the name it stands for, except
    beside that very name, which is the mount's file."""
    found = [(raw, attrs) for answer in answers for raw, attrs in decode_names(answer)]
    if hidden is not None:  # (only a walk's changed folders: a listing's need none)
        hidden += [(raw, attrs) for raw, attrs in found if raw.endswith(_TEMP_SUFFIX)]
    escapes = any(raw.endswith(_SUFFIX) for raw, _ in found)
    held = {raw for raw, _ in found} if escapes else set()
    return [(md, raw) for raw, attrs in found
            if (md := _entry(folder, raw, attrs, held)) is not None]


def _entry(folder: str, raw: bytes, attrs: Attrs, held: set[bytes]) -> Metadata | None:
    """The Metadata of one entry of a folder (which holds `held`, where it holds escapes),
    or None for what the listing leaves out."""
    name = decode(raw)
    if name.endswith(TEMP_SUFFIX) or "/" in name or kind_of(attrs) is None:
        return None
    shown = disk_name(name)
    if shown != name and disk_refusable(shown) and encode(shown) in held:
        return None
    return describe(f"{folder}/{shown}" if folder else shown, attrs)
