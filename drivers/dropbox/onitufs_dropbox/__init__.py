"""onitufs driver for a folder in a Dropbox account, through the official SDK.

Config keys: ``app_key`` (required: the user's own Dropbox app, which needs
no secret: PKCE), ``token_file`` (required: where `onitufs auth` stores the
refresh token, mode 0600; auth.py) and ``path`` ("/": the folder in the
Dropbox, such as "/Cloud").

Uploads go in one request or through an upload session (uploads.py) and are
committed with mode=update and the revision onitufs last saw, or add for a
new file: a file changed on Dropbox meanwhile is a Conflict, never
overwritten; the content_hash Dropbox computes must be ours. Reads are
ranged downloads of the path, whose rev must be the revision asked for
(else Changed); a read of a whole file must match its content_hash. A file
is deleted on the condition of its rev (parent_rev); a folder, which Dropbox
deletes with everything in it, is moved to a hidden name first and deleted
there only if empty. A file is moved after a check of its rev, and moved back
if what moved has another content_hash (a save landed in between).
Changes made on Dropbox come through list_folder, longpoll and continue
(changes.py). Names Dropbox would fold together or refuse are
stored under an escape (onitufs.storednames, tree.py). Dropbox keeps no modes, no
extended attributes and no symbolic links, and times in whole seconds
(client_modified): the token is the rev, so a time shared by two versions
hides no change. Failures: client.py. A Dropbox that refused an upload for
want of room is looked at (users/get_space_usage) until it has room
(onitufs.room).
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from dropbox import files
from dropbox.exceptions import ApiError, HttpError

from onitufs.config import ConfigError, Options
from onitufs.lookout import Lookout
from onitufs.plug import Changed, Conflict, DriverError, Metadata, Plug, Stopped, set_aside_by
from onitufs.room import DiskState, RoomWatch
from onitufs.storednames import mount_name

from .auth import TOKEN_LOOK, load_token
from .auth import auth as auth  # the hook of `onitufs auth`
from .changes import Watcher
from .client import Api, block_hashes, content_hash, make_client
from .settings import OPTIONS as OPTIONS  # the table's keys, for the core to check
from .settings import Settings, read
from .tree import FILE_MODE, FOLDER_MODE, Node, Tree, node_metadata, node_of
from .uploads import Upload, Uploads

log = logging.getLogger(__name__)
TOKEN_RETRY = 5.0  # seconds between looks at a token file that could not be used
F = TypeVar("F", bound=Callable[..., Any])


def check(options: Options) -> None:
    """The token works and the path is a folder of the Dropbox."""
    settings = read(options)
    api = Api(settings, make_client(settings, load_token(settings)), threading.Event())
    if not settings.root:
        return
    try:
        found = api.call(api.client.files_get_metadata, settings.root)
    except ApiError:
        found = None
    except DriverError as error:
        raise ConfigError(f"{settings.where}: {error}") from None
    if not isinstance(found, files.FolderMetadata):
        raise ConfigError(f"{settings.where}.path: {settings.root} is not a folder in the "
                          "Dropbox (create it, or fix the path)")


def write_error(error: ApiError) -> files.WriteError | None:
    """The WriteError inside an upload's, a finish's, a folder's, a move's or a delete's
    error."""
    value = error.error
    if isinstance(value, files.UploadError) and value.is_path():
        return value.get_path().reason
    if isinstance(value, files.UploadSessionFinishError) and value.is_path():
        return value.get_path()
    if isinstance(value, files.CreateFolderError) and value.is_path():
        return value.get_path()
    if isinstance(value, files.RelocationError) and value.is_to():
        return value.get_to()
    if isinstance(value, files.DeleteError) and value.is_path_write():
        return value.get_path_write()
    return None


def not_found(error: ApiError) -> bool:
    value = error.error
    for kind, getter in ((files.GetMetadataError, "get_path"), (files.DownloadError, "get_path"),
                         (files.ListFolderError, "get_path"),
                         (files.DeleteError, "get_path_lookup"),
                         (files.RelocationError, "get_from_lookup")):
        if isinstance(value, kind):
            try:
                lookup = getattr(value, getter)()
            except AttributeError:
                return False
            return isinstance(lookup, files.LookupError) and bool(lookup.is_not_found())
    return False


class DropboxFull(DriverError):
    """Dropbox refused a write: the account has no room (insufficient_space)."""


def start(plug: Plug) -> None:
    settings = read(plug.options)
    if not log.isEnabledFor(logging.DEBUG):  # the SDK logs every request at INFO
        logging.getLogger("dropbox").setLevel(logging.WARNING)
    token = wait_for_token(plug, settings)
    api = Api(settings, make_client(settings, token), plug.stopping)
    tree = Tree(settings.root)
    uploads = Uploads(api)

    def client() -> Any:
        return api.client  # a new one after `onitufs auth`

    def reconnect() -> bool:
        nonlocal token
        try:
            fresh = load_token(settings)
        except ConfigError:
            return False
        if fresh == token:
            return False
        token = fresh
        api.client, api.refused = make_client(settings, token), False
        return True

    # After a refusal of the token, the token file is looked at until `onitufs auth` put a
    # new one there: its user waits for the remote.
    api.on_refused = Lookout(plug, "token", TOKEN_LOOK, reconnect).arm

    def guarded(function: F) -> F:
        """A name Dropbox refuses outright is a failure of this file, not of the remote."""
        @functools.wraps(function)
        def wrapper(*args: Any) -> Any:
            try:
                return function(*args)
            except ApiError as error:
                raise DriverError(f"Dropbox: {error.error}") from None
        return wrapper  # type: ignore[return-value]

    def space() -> DiskState | None:
        """The account's room, for RoomWatch (Dropbox keeps nothing read-only, and counts
        no inodes); None for an allocation of a kind the SDK does not know."""
        usage = api.call(client().users_get_space_usage)
        allocation = usage.allocation
        if allocation.is_individual():
            free = allocation.get_individual().allocated - usage.used
        elif allocation.is_team():
            team = allocation.get_team()
            free = team.allocated - team.used
        else:
            return None
        return DiskState(max(0, free), 1, False)

    # A look every 5 s, at an API call each, only while a refusal is unrelieved.
    room_refused = RoomWatch(plug, space, every=5.0).watching(
        lambda error: isinstance(error, DropboxFull))

    def lookup(stored: str) -> files.Metadata | None:
        try:
            return api.call(client().files_get_metadata, tree.api_path(stored))
        except ApiError as error:
            if not_found(error):
                return None
            raise

    def learn(stored: str, entry: files.Metadata) -> Node:
        node = node_of(entry, stored)
        if node is None:
            raise DriverError(f"{stored}: Dropbox reported it deleted")
        tree.put(stored, node)
        return node

    def described(path: str, stored: str, entry: files.Metadata) -> Metadata:
        return node_metadata(path, learn(stored, entry))

    @plug.handler()
    @guarded
    def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
        stored = tree.stored_path(md.path)

        def download() -> tuple[files.FileMetadata | None, bytes]:
            try:
                entry, response = client().files_download(
                    tree.api_path(stored),
                    extra_headers={"Range": f"bytes={offset}-{offset + size - 1}"})
            except HttpError as error:
                if error.status_code == 416:  # the range starts past the end: no bytes
                    return None, b""
                raise
            with response:
                return entry, response.content

        try:
            entry, data = api.call(download)
            if entry is None:
                entry = lookup(stored)
        except ApiError as error:
            if not_found(error):
                gone()
                raise DriverError(f"{md.path}: no longer on Dropbox") from None
            raise
        if not isinstance(entry, files.FileMetadata):
            gone()
            raise DriverError(f"{md.path}: no longer a file on Dropbox")
        if md.revision is not None and entry.rev != md.revision:
            raise Changed(f"{md.path}: changed on Dropbox", described(md.path, stored, entry))
        # A read of the whole file is checked against Dropbox's content_hash (most files
        # come in one read); a range of a larger one cannot be, and gets the core's
        # checksums from then on.
        if offset == 0 and len(data) == entry.size \
                and content_hash(block_hashes(data)) != entry.content_hash:
            raise DriverError(f"{md.path}: the bytes read do not match Dropbox's content_hash")
        return data

    def gone() -> None:
        """A file onitufs holds on Dropbox is not there: the list of changes may have told
        of it before onitufs knew of the file (it learnt of it from a conflict's answer),
        and will not again. A whole listing, from the tree the list keeps, tells it."""
        plug.look_again()

    def clash(path: str) -> str:
        """The stored path for `path`, once Dropbox was asked what is there: a name made
        meanwhile that it folds onto this one sends this one to its escape."""
        stored = tree.stored_path(path)
        there = lookup(stored)
        if there is not None and mount_name(there.name) != path.rpartition("/")[2]:
            learn(stored, there)
            stored = tree.stored_path(path)
        return stored

    @plug.handler()
    @room_refused
    @guarded
    def start_upload(md: Metadata) -> None:
        clash(md.path)  # and Dropbox can be reached: the upload can go
        md.extra.update(uploads.start(md.extra["upload"]).state())

    @plug.handler()
    @room_refused
    @guarded
    def restart_upload(md: Metadata, offset: int) -> int:
        resumed = uploads.resume(md.extra["upload"], md.extra, offset)
        md.extra.update(uploads.get(md.extra["upload"]).state())
        return resumed

    @plug.handler()
    @room_refused
    @guarded
    def upload_chunk(md: Metadata, offset: int, chunk: bytes) -> None:
        upload = uploads.get(md.extra["upload"])
        uploads.add(upload, offset, bytes(chunk), md.size)
        md.extra.update(upload.state())

    @plug.handler()
    @room_refused
    @guarded
    def end_upload(md: Metadata) -> None:
        upload = uploads.get(md.extra["upload"])
        if upload.end != md.size:
            raise DriverError(f"{md.path}: {upload.end} bytes uploaded of {md.size}")
        stored = clash(md.path)
        try:
            there = lookup(stored)
            if isinstance(there, files.FolderMetadata) or (isinstance(
                    there, files.FileMetadata) and there.rev != md.revision):
                raise Conflict(f"{md.path}: changed on Dropbox since onitufs last saw it",
                               described(md.path, stored, there))
            entry = commit(md, upload, stored, there.rev if there is not None else None)
        except Conflict:
            # The upload waits for the conflict to be settled, then resumes: not with up
            # to 8 MiB (uploads.SINGLE_MAX) held here meanwhile: the resume sends them again.
            upload.buffer.clear()
            raise
        uploads.drop(md.extra["upload"])
        if entry.content_hash != content_hash(upload.hashes + block_hashes(upload.buffer)):
            raise DriverError(f"{md.path}: Dropbox holds other bytes than those sent "
                              "(content_hash); uploading again")
        learn(stored, entry)
        md.revision, md.file_id, md.mode = entry.rev, entry.id, FILE_MODE

    def commit(md: Metadata, upload: Upload, stored: str, rev: str | None) -> files.FileMetadata:
        mode = files.WriteMode.update(rev) if rev is not None else files.WriteMode.add
        modified = datetime.datetime.fromtimestamp(md.mtime_ns // 10**9, datetime.UTC) \
            .replace(tzinfo=None)
        expected = content_hash(upload.hashes + block_hashes(upload.buffer))
        try:
            if upload.session is None:
                return api.call(client().files_upload, bytes(upload.buffer),
                                tree.api_path(stored), mode=mode, client_modified=modified,
                                mute=True, strict_conflict=True, content_hash=expected)
            info = files.CommitInfo(tree.api_path(stored), mode=mode, client_modified=modified,
                                    mute=True, strict_conflict=True)
            return api.call(client().files_upload_session_finish, bytes(upload.buffer),
                            files.UploadSessionCursor(upload.session, upload.sent), info)
        except ApiError as error:
            write = write_error(error)
            if write is not None and write.is_conflict():
                now = lookup(stored)
                if now is not None and mount_name(now.name) != md.path.rpartition("/")[2]:
                    learn(stored, now)  # the next attempt stores ours under its escape
                    raise DriverError(f"{md.path}: {now.name!r}, which Dropbox takes for the "
                                      "same name, appeared there meanwhile") from None
                if now is not None:
                    raise Conflict(f"{md.path}: changed on Dropbox since onitufs last saw it",
                                   described(md.path, stored, now)) from None
            if write is not None and write.is_insufficient_space():
                raise DropboxFull("the Dropbox is full") from None
            raise DriverError(f"{md.path}: Dropbox refused the upload: {error.error}") from None

    @plug.handler()
    def abort_upload(md: Metadata) -> None:
        # an upload session Dropbox holds expires by itself (after 7 days)
        uploads.drop(md.extra["upload"])

    @plug.handler()
    @room_refused
    @guarded
    def delete_file(md: Metadata) -> None:
        stored = tree.stored_path(md.path)
        there = lookup(stored)
        if there is None:
            if md.kind == "dir":
                delete_aside(md, stored)  # a delete cut short after its move
            tree.remove(stored)
            return
        if isinstance(there, files.FolderMetadata):
            delete_folder(md, stored)
        else:
            if md.revision is not None and there.rev != md.revision:
                raise Changed(f"{md.path}: changed on Dropbox since it was listed; not "
                              "deleting it", described(md.path, stored, there))
            try:  # on the condition that it is still that version (parent_rev)
                api.call(client().files_delete_v2, tree.api_path(stored), there.rev)
            except ApiError as error:
                write = write_error(error)
                if write is not None and write.is_conflict():  # saved there meanwhile
                    now = lookup(stored)
                    if now is not None:
                        raise Changed(f"{md.path}: changed on Dropbox while it was deleted; "
                                      "left in place", described(md.path, stored, now)) from None
                elif not not_found(error):
                    raise
        tree.remove(stored)

    def delete_folder(md: Metadata, stored: str) -> None:
        """Never recursive, though delete_v2 takes everything in a folder, on no condition:
        the folder is moved to a hidden name first, then looked into and deleted there
        only if empty, so that what someone saves into it meanwhile is never deleted
        (it lands in the folder's place, or in the folder moved back)."""
        try:
            api.call(client().files_move_v2, tree.api_path(stored),
                     tree.api_path(plug.aside_path(md, stored)), autorename=False)
        except ApiError as error:
            if not not_found(error):
                raise
        delete_aside(md, stored)

    def delete_aside(md: Metadata, stored: str) -> None:
        if not finish_delete(plug.aside_path(md, stored), stored):
            raise DriverError(f"{md.path}: the folder on Dropbox is not empty")

    def finish_delete(aside: str, stored: str) -> bool:
        """The end of a folder's delete, once moved `aside` from `stored`: the folder goes
        if empty (True, also when it is gone already), else back to `stored` (False)."""
        try:
            inside = api.call(client().files_list_folder, tree.api_path(aside), limit=1)
            if not inside.entries:
                api.call(client().files_delete_v2, tree.api_path(aside))
                tree.remove(aside)
                return True
        except ApiError as error:
            if not_found(error):  # (or gone meanwhile: another try of the same delete)
                tree.remove(aside)
                return True
            raise
        relocate(aside, stored, f"{stored}: the folder on Dropbox is not empty, and another "
                                f"took its name: it is at {aside}")
        return False

    def sweep_asides() -> None:
        """Finish the folder deletes that a fault cut short after the move aside, and that
        no delete_file will finish: the core, told by a listing that the folder is gone
        from its name, does not ask again, and a crash forgets the call. Each of this
        mount's aside folders the Tree holds goes as the delete would have done it, where
        onitufs may write (plug.writable)."""
        if not plug.writable:
            return
        for aside in tree.hidden_folders():
            folder, _, name = aside.rpartition("/")
            beside = set_aside_by(name, plug.aside_owner)
            if beside is None:
                continue  # not this mount's (another's, finishing its own delete)
            if not beside:
                log.warning("remote %s: cannot finish deleting the folder at %s: its name "
                            "was cut short, and where it was is not known", plug.name, aside)
                continue
            stored = f"{folder}/{beside}" if folder else beside
            try:
                if not finish_delete(aside, stored):
                    log.warning("remote %s: %s: a folder being deleted on Dropbox had files "
                                "saved into it: it is back at its name", plug.name, stored)
            except (ApiError, DriverError) as error:
                log.warning("remote %s: cannot finish deleting the folder at %s: %s",
                            plug.name, aside, error.error if isinstance(error, ApiError)
                            else error)

    def relocate(source: str, target: str, taken: str) -> files.RelocationResult:
        """Move a stored path to another; DriverError(taken) where that name is taken."""
        try:
            return api.call(client().files_move_v2, tree.api_path(source),
                            tree.api_path(target), autorename=False)
        except ApiError as error:
            write = write_error(error)
            if write is not None and write.is_conflict():
                raise DriverError(taken) from None
            raise

    @plug.handler()
    @room_refused
    @guarded
    def move_file(old: Metadata, new: Metadata) -> None:
        source = tree.stored_path(old.path)
        target = tree.stored_path(new.path, moving=old.path)
        expected = None  # the content_hash of the version to move
        if old.kind == "file" and old.revision is not None:
            # Dropbox moves without a condition: what is there is checked first, and what
            # was moved after (a save may land between the two).
            there = lookup(source)
            if there is None:  # a save landing before the move would be moved unchecked
                raise DriverError(f"{old.path}: no longer on Dropbox")
            if not isinstance(there, files.FileMetadata) or there.rev != old.revision:
                raise Changed(f"{old.path}: changed on Dropbox since it was listed; not "
                              "moving it", described(old.path, source, there))
            expected = there.content_hash
        result = relocate(source, target, f"{new.path}: already exists on Dropbox")
        if expected is not None and (not isinstance(result.metadata, files.FileMetadata)
                                     or result.metadata.content_hash != expected):
            move_back(old, new, source, target)
        node = node_of(result.metadata, target)
        if node is None:
            raise DriverError(f"{new.path}: Dropbox reported the move as a delete")
        tree.move(source, target, node)
        new.revision, new.file_id = node.rev, node.id

    def move_back(old: Metadata, new: Metadata, source: str, target: str) -> NoReturn:
        """A save landed between move_file's check and its move, and was moved: it goes
        back to its name if that is still free; Changed says what is there."""
        back = relocate(target, source, f"{old.path}: changed on Dropbox during the move, "
                        f"and another file took its name: that version is at {new.path}")
        raise Changed(f"{old.path}: changed on Dropbox during the move; left in place",
                      described(old.path, source, back.metadata))

    @plug.handler()
    @room_refused
    @guarded
    def make_dir(md: Metadata) -> None:
        stored = tree.stored_path(md.path)
        try:
            entry = api.call(client().files_create_folder_v2, tree.api_path(stored)).metadata
        except ApiError as error:
            write = write_error(error)
            entry = lookup(stored) if write is not None and write.is_conflict() else None
            if not isinstance(entry, files.FolderMetadata):
                raise DriverError(f"{md.path}: cannot create the folder on Dropbox, or "
                                  "something else is there") from None
        learn(stored, entry)
        md.revision, md.file_id, md.mode = None, entry.id, FOLDER_MODE

    # client_modified keeps whole seconds, but the token is the rev, which every change of
    # content changes: a time shared by two versions hides nothing, and the core need not
    # read back each file uploaded within a second of its time (plug.mtime_granularity).
    plug.ready()
    state = plug.folder / "listing.json" if plug.folder is not None else None
    Watcher(plug, api, tree, state, sweep_asides).run()


def wait_for_token(plug: Plug, settings: Settings) -> str:
    """The refresh token; while the file is missing or refused, the remote is offline with
    the line that says why, and the file is looked at again every TOKEN_RETRY seconds."""
    reported = None
    while True:
        try:
            return load_token(settings)
        except ConfigError as error:
            if str(error) != reported:
                log.error("remote %s: %s", plug.name, error)
                reported = str(error)
            plug.offline(str(error))
        plug.stopping.wait(TOKEN_RETRY)
        if plug.stopping.is_set():
            raise Stopped()
