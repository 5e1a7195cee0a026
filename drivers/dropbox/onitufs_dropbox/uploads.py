"""Uploads: one `upload` for a small file, an upload session for a large one.

A file of up to SINGLE_MAX bytes is kept in memory and sent by end_upload in
one request. A larger one goes through an upload session: the chunks the
core hands over are gathered, and each time APPEND_SIZE bytes are there the
largest multiple of 4 MiB of them goes (`upload_session/start`, then
`append_v2` at the offset Dropbox holds); end_upload sends the rest with
`finish`. So no more than APPEND_SIZE plus one chunk is held per upload.

What md.extra keeps for a resume after a crash: the session, the offset
Dropbox acknowledged ("sent", a multiple of 4 MiB) and the SHA-256 of each
4 MiB block sent, which make the content_hash that end_upload checks. After
a crash restart_upload asks Dropbox where the session is (an empty append at
"sent"; `incorrect_offset` says where it is) and resumes there: the core
sends again from that offset, and the part of a chunk Dropbox already holds
is skipped. A session that expired, or that holds bytes the saved state does
not vouch for, starts over from 0. (The offsets returned are multiples of
4 MiB: chunk boundaries for any cache block size that divides 4 MiB.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dropbox import files
from dropbox.exceptions import ApiError

from onitufs.plug import DriverError

from .client import BLOCK, Api, block_hashes

SINGLE_MAX = 8 * 1024 * 1024  # bytes: up to this, one `upload` request
APPEND_SIZE = 8 * 1024 * 1024  # bytes gathered before an append (a multiple of 4 MiB)


@dataclass
class Upload:
    session: str | None = None
    sent: int = 0  # bytes Dropbox holds in the session
    hashes: list[str] = field(default_factory=list)  # of each 4 MiB block sent
    buffer: bytearray = field(default_factory=bytearray)  # the bytes from `sent` on

    def state(self) -> dict[str, Any]:
        return {"started": True, "session": self.session, "sent": self.sent,
                "hashes": "".join(self.hashes)}

    @classmethod
    def saved(cls, extra: dict[str, Any]) -> Upload:
        hashes = str(extra.get("hashes") or "")
        return cls(session=extra.get("session"), sent=int(extra.get("sent") or 0),
                   hashes=[hashes[at:at + 64] for at in range(0, len(hashes), 64)])

    @property
    def end(self) -> int:
        return self.sent + len(self.buffer)

    def restart(self) -> None:
        self.session, self.sent, self.hashes = None, 0, []
        self.buffer.clear()


class Uploads:
    """The uploads under way, by transfer name; each is used by one thread at a time."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._uploads: dict[str, Upload] = {}

    def start(self, name: str) -> Upload:
        upload = Upload()
        with self._lock:
            self._uploads[name] = upload
        return upload

    def get(self, name: str) -> Upload:
        with self._lock:
            found = self._uploads.get(name)
        if found is None:
            raise DriverError("no upload in progress (resume it first)")
        return found

    def drop(self, name: str) -> None:
        with self._lock:
            self._uploads.pop(name, None)

    def resume(self, name: str, extra: dict[str, Any], offset: int) -> int:
        with self._lock:
            upload = self._uploads.get(name)
        if upload is None:
            if not extra.get("started"):
                raise DriverError("nothing to resume: the upload never started")
            upload = Upload.saved(extra)
            with self._lock:
                self._uploads[name] = upload
        if upload.session is not None and self._where(upload) != upload.sent:
            upload.restart()  # expired, or ahead of what the saved hashes vouch for
        if offset >= upload.sent:
            del upload.buffer[offset - upload.sent:]
        return min(offset, upload.end)

    def add(self, upload: Upload, offset: int, chunk: bytes, size: int) -> None:
        if offset + len(chunk) <= upload.sent:
            return  # Dropbox holds it already (sent again after a crash)
        if offset < upload.sent:
            chunk, offset = chunk[upload.sent - offset:], upload.sent
        if offset != upload.end:
            raise DriverError(f"a chunk at {offset} where {upload.end} was expected")
        upload.buffer += chunk
        if size > SINGLE_MAX and len(upload.buffer) >= APPEND_SIZE:
            self._append(upload, len(upload.buffer) // BLOCK * BLOCK)

    def _append(self, upload: Upload, length: int) -> None:
        piece = bytes(upload.buffer[:length])
        if upload.session is None:
            result = self.api.call(self.api.client.files_upload_session_start, piece)
            upload.session = result.session_id
        else:
            cursor = files.UploadSessionCursor(upload.session, upload.sent)
            try:
                self.api.call(self.api.client.files_upload_session_append_v2, piece, cursor)
            except ApiError as error:
                if _correct_offset(error) != upload.sent + length:  # else: it had landed
                    raise DriverError(f"the upload session refused the append: "
                                      f"{error.error}") from None
        upload.sent += length
        upload.hashes += block_hashes(piece)
        del upload.buffer[:length]

    def _where(self, upload: Upload) -> int | None:
        """The offset Dropbox holds for the session; None when it no longer has it."""
        assert upload.session is not None
        cursor = files.UploadSessionCursor(upload.session, upload.sent)
        try:
            self.api.call(self.api.client.files_upload_session_append_v2, b"", cursor)
        except ApiError as error:
            return _correct_offset(error)
        return upload.sent


def _correct_offset(error: ApiError) -> int | None:
    """What an `incorrect_offset` error says the session holds; None for any other error."""
    lookup = error.error
    if isinstance(lookup, files.UploadSessionAppendError | files.UploadSessionLookupError) \
            and lookup.is_incorrect_offset():
        return int(lookup.get_incorrect_offset().correct_offset)
    return None
