"""A local Dropbox: the HTTPS API v2 endpoints a sync client uses, for tests, in one module.

FakeDropbox serves, on 127.0.0.1 and a free port, with a certificate it makes at start,
the routes below the way api.dropboxapi.com, content.dropboxapi.com,
notify.dropboxapi.com and www.dropbox.com answer them, so that the official `dropbox`
Python SDK talks to it unchanged: a test puts `fake.env` (DROPBOX_API_HOST,
DROPBOX_API_CONTENT_HOST, DROPBOX_API_NOTIFY_HOST, DROPBOX_WEB_HOST and
REQUESTS_CA_BUNDLE) in the environment of the process that imports `dropbox` (the SDK
reads the hosts when it is imported). Results and errors have the JSON shapes of the
SDK's stone types (dropbox/files.py, auth.py): 409 with
{"error_summary": "path/not_found/..", "error": {".tag": "path", ...}}, 401 with
{"error": {".tag": "expired_access_token"}}, 429 with a RateLimitError body and a
Retry-After header, OAuth errors as {"error": "invalid_grant", ...}.

Implemented (documented Dropbox behaviour):
  RPC: files/get_metadata, files/list_folder (recursive, include_deleted, limit),
    files/list_folder/continue, files/list_folder/get_latest_cursor, files/delete_v2
    (parent_rev), files/move_v2 (keeps ids; autorename), files/create_folder_v2,
    users/get_current_account, users/get_space_usage (an individual allocation: the quota
    set, else 2 TiB); POST /oauth2/token (authorization_code with a PKCE S256
    code_verifier, refresh_token).
  Content: files/upload and files/upload_session/{start,append_v2,finish} (WriteMode
    add/overwrite/update, autorename, strict_conflict, client_modified, content_hash of
    the call's data, offsets with incorrect_offset/correct_offset, closed sessions, 150 MiB
    per request), files/download (path, "id:...", "rev:..." or rev; one Range
    "bytes=a-b", "a-" or "-n" -> 206; the metadata in Dropbox-API-Result).
  Notify: files/list_folder/longpoll (no auth; answers changes=true as soon as something
    under the cursor's folder changes, changes=false after `timeout` seconds; reset).
  Web: GET /oauth2/authorize, a page that shows the code (as if the user clicked Allow).
  Paths: case-insensitive and Unicode-normalised (NFC and NFD forms are one name); a name
    keeps the case and the form of its first creation (path_display), path_lower is its
    lower case. Names Dropbox refuses answer malformed_path (backslash, NUL, DEL, unpaired
    surrogates, empty, "." or ".." components, over 255 UTF-16 units) or disallowed_name
    (a trailing space; the names Dropbox never syncs: desktop.ini, thumbs.db, .ds_store,
    icon\\r, .dropbox, .dropbox.attr). A trailing dot is accepted, as Dropbox does.
  Content hash: SHA-256 of the concatenated SHA-256 digests of each 4 MiB block (the
    empty file hashes the empty string). rev: 16 lowercase hex digits, new for each
    version; id: "id:" and 22 characters, kept across moves and edits.
  Tokens: access tokens live 4 hours (expires_in 14400), refresh tokens until revoke().

The test's side (the Dropbox website, another client): write/read/mkdir/delete/move/tree/
metadata act on the same store and wake longpolls; faults: fail() (the next calls of a
route answer 429/500/503...), expire_access_tokens(), revoke(), expire_upload_sessions(),
reset_cursors(), set_quota() (a write past it answers insufficient_space),
go_offline()/go_online(), stop_answering()/answer_again() (calls are
taken in and held unanswered, then served late), damage() (downloads of a file serve a
flipped byte under its rev and content_hash); `calls` records every request's route and
argument (for upload-style routes the argument also carries "_data_len", the size of the
body: a key of the fake's own).

Use:
    with FakeDropbox() as dbx:
        env = {**os.environ, **dbx.env}  # for the process that will import dropbox
        token = dbx.refresh_token()      # or approve() the URL an OAuth flow prints
        dbx.write("/Cloud/a.txt", b"made on the website")
        ...                              # the client under test runs with env and token
        assert dbx.tree()["/Cloud/b.txt"] == b"uploaded by the client"

Known deviations from Dropbox:
  - all four hosts are one port, so a route also answers on a host Dropbox would not serve
    it on (the SDK never does that);
  - longpoll answers after exactly `timeout` seconds (Dropbox adds up to 90 s of jitter),
    never asks for a backoff, and accepts any timeout (the SDK enforces 30..480);
    cursors and upload sessions stay valid until reset_cursors()/expire_upload_sessions();
  - no sharing, teams, namespaces (Dropbox-API-Path-Root), properties, tags, media info,
    locks, batch routes, copy, revisions listing, restore, search, thumbnails, app (Basic)
    auth, scopes (every token has all scopes); other routes answer 400 "Unknown API
    function";
  - autorename names are "name (1).ext", and "name (conflicted copy).ext" for a failed
    update; Dropbox words them slightly differently.
Where Dropbox does not document its answer the fake picks one; a client should not depend
on either: an upload of the content the file already has changes nothing (same rev,
same client_modified; strict_conflict still reports a stale rev); a move keeps the files'
revs; a deleted folder shows up in list_folder/continue as one DeletedMetadata for the
folder (the documentation tells clients to delete the children too); in one batch of
changes deletes come first, then files and folders, parents before children; delete_v2
with a parent_rev that is not the file's answers path_write/conflict/file; a Range on an
empty file answers 416. The test's side raises ApiFailure (the error JSON Dropbox would
answer) when it asks for something Dropbox would refuse, FileNotFoundError for a path
that is not there.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import html
import ipaddress
import itertools
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Json = dict[str, Any]

BLOCK = 4 * 1024 * 1024  # content_hash block size
MAX_REQUEST = 150 * 1024 * 1024  # Dropbox's limit for the data of one upload call
ACCESS_TOKEN_LIFE = 14400
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
NEVER_SYNCED = {"desktop.ini", "thumbs.db", ".ds_store", "icon\r", ".dropbox", ".dropbox.attr"}
SCOPES = "account_info.read files.content.read files.content.write files.metadata.read files.metadata.write"


def content_hash(data: bytes) -> str:
    """Dropbox's content_hash: SHA-256 over the SHA-256 digests of each 4 MiB block."""
    blocks = b"".join(hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
    return hashlib.sha256(blocks).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)


def _stamp(when: dt.datetime) -> str:
    return when.strftime(TIME_FORMAT)


def _key(path: str) -> str:
    """The identity of a path for Dropbox: case and Unicode form folded."""
    return unicodedata.normalize("NFC", path).lower()


def _parent(key: str) -> str:
    return key.rsplit("/", 1)[0]


def _under(key: str, top: str, recursive: bool) -> bool:
    if recursive:
        return key == top or key.startswith(top + "/")
    return _parent(key) == top


class ApiFailure(Exception):
    """A route error: HTTP 409 with the error union's JSON (and the summary built from its tags)."""

    def __init__(self, error: Json) -> None:
        super().__init__(error)
        self.error = error


class BadInput(Exception):
    """HTTP 400 with a plain-text message, as Dropbox answers a call it cannot parse."""


def _summary(error: Any) -> str:
    tags = []
    while isinstance(error, dict) and ".tag" in error:
        tag = error[".tag"]
        tags.append(tag)
        error = error.get(tag, error.get("reason") if tag == "path" else None)
    return "/".join(tags) + "/.."


def _lookup(tag: str, **extra: Any) -> Json:
    return {".tag": tag, **extra}


def _conflict(what: str) -> Json:
    return {".tag": "conflict", "conflict": {".tag": what}}


def _malformed(why: str) -> Json:
    return {".tag": "malformed_path", "malformed_path": why}


@dataclass
class _Entry:
    id: str
    name: str  # the display name: the case of its first creation
    folder: bool
    data: bytes = b""
    rev: str = ""
    hash: str = ""
    client_modified: dt.datetime = field(default_factory=_now)
    server_modified: dt.datetime = field(default_factory=_now)


@dataclass
class _Session:
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False


@dataclass
class _Cursor:
    top: str  # key of the listed folder ("" for the root)
    recursive: bool
    seq: int  # changes after this one are news
    limit: int | None
    pending: list[Json] = field(default_factory=list)  # the rest of a listing, paged


@dataclass
class _Fault:
    route: str
    status: int
    times: int
    retry_after: int | None


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1 and localhost; returns (ca, cert, key) files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onitufs FakeDropbox test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, cert_file, key_file


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, fake: FakeDropbox, context: ssl.SSLContext) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Handler)
        # The handshake happens in the request's thread (_Handler.setup), so a client that
        # stalls in it does not hold up the others.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections and failed handshakes are the client's business


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 600

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()
        self.server.fake._track(self.request, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.fake._track(self.request, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._answer(self.server.fake._serve(self, self._body()))

    def do_GET(self) -> None:
        self._answer(self.server.fake._serve(self, b""))

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, reply: _Reply | None) -> None:
        if reply is None:  # gone offline while the call waited: the connection just drops
            self.close_connection = True
            return
        self.send_response(reply.status)
        reply.headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("X-Dropbox-Request-Id", secrets.token_hex(16))
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


NO_QUOTA = 2 << 40  # the allocation get_space_usage answers while no quota is set


class FakeDropbox:
    """One Dropbox account with one registered app (PKCE, no secret), served over HTTPS.

    `with FakeDropbox() as dbx:` starts it; `dbx.env` is what the client's environment needs.
    Every method is thread-safe; paths are Dropbox paths ("/Cloud/a.txt")."""

    app_key = "onitufs-test-app"

    def __init__(self, state_dir: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakedropbox-")
            state_dir = Path(self._tmp.name)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ca_file, self._cert_file, self._key_file = _make_certificates(state_dir)
        self.env: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.account_id = "dbid:" + secrets.token_hex(18)[:35]
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}  # key -> entry; the root folder is not an entry
        self._deleted: dict[str, str] = {}  # key -> display path of what used to be there
        self._revisions: dict[str, tuple[str, _Entry]] = {}  # rev -> (display path then, that version)
        self._rev_count = 0
        self._changes: list[tuple[int, str, bool]] = []  # (seq, key, deleted?)
        self._seq = 0
        self._rev_prefix = secrets.token_hex(4)
        self._sessions: dict[str, _Session] = {}
        self._cursors: dict[str, _Cursor] = {}
        self._access: dict[str, float] = {}  # access token -> expiry (time.time())
        self._refresh: set[str] = set()
        self._codes: dict[str, tuple[str, bool]] = {}  # code -> (code_challenge, offline)
        self._faults: list[_Fault] = []
        self._silent: set[str] = set()  # the routes ("*": any) whose calls go unanswered
        self._silent_path: str | None = None  # and only those naming this path, if set
        self._held = 0  # calls waiting for an answer, or being served late
        self._quota: int | None = None  # bytes of files the account may hold
        self._connections: set[Any] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._online = False
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self._cert_file, self._key_file)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._listen()
        host = f"127.0.0.1:{self._port}"
        self.env = {
            "DROPBOX_API_HOST": host,
            "DROPBOX_API_CONTENT_HOST": host,
            "DROPBOX_API_NOTIFY_HOST": host,
            "DROPBOX_WEB_HOST": host,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
        }

    def stop(self) -> None:
        self.go_offline()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeDropbox:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def go_offline(self) -> None:
        """Stop listening and drop every open connection (waiting longpolls too); state is kept."""
        with self._changed:
            self._online = False
            server, self._server = self._server, None
            connections = list(self._connections)
            self._changed.notify_all()
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def go_online(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            self._listen()

    def _listen(self) -> None:
        server = _Server(self._port, self, self._context)
        self._port = server.server_address[1]
        with self._lock:
            self._server, self._online = server, True
        # a short poll interval: go_offline() and stop() wait for the loop to notice
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="FakeDropbox", daemon=True
        )
        self._thread.start()

    def _track(self, conn: Any, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- OAuth -----------------------------------------------------------------------------

    def refresh_token(self) -> str:
        """A valid offline refresh token, as if `onitufs auth` had run."""
        token = "rt-" + secrets.token_urlsafe(32)
        with self._lock:
            self._refresh.add(token)
        return token

    def approve(self, authorize_url: str) -> str:
        """What a user who clicks "Allow" on the authorize page gets: the code. ValueError when the
        URL is not one Dropbox would accept for this app, or does not ask for offline access."""
        url = urllib.parse.urlsplit(authorize_url)
        if url.path != "/oauth2/authorize":
            raise ValueError(f"not an authorize URL: {authorize_url}")
        params = dict(urllib.parse.parse_qsl(url.query))
        if params.get("token_access_type") != "offline":
            # Dropbox would grant a short-lived token only: no refresh token, no unattended client
            raise ValueError("the authorize URL does not ask for token_access_type=offline")
        code = self._authorize(params)
        if code.startswith("error:"):
            raise ValueError(code[6:])
        return code

    def _authorize(self, params: dict[str, str]) -> str:
        if params.get("client_id") != self.app_key:
            return "error:invalid client_id"
        if params.get("response_type") != "code":
            return "error:response_type must be code"
        challenge = params.get("code_challenge")
        if not challenge or params.get("code_challenge_method") != "S256":
            return "error:this app is PKCE only: code_challenge with code_challenge_method=S256"
        access_type = params.get("token_access_type", "online")
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = (challenge, access_type == "offline")
        return code

    def _token(self, form: dict[str, str]) -> _Reply:
        def oauth_error(error: str, description: str) -> _Reply:
            return _json_reply({"error": error, "error_description": description}, 400)

        if form.get("client_id") != self.app_key or "client_secret" in form:
            return oauth_error("invalid_client", "Invalid client_id or client_secret")
        grant = form.get("grant_type")
        with self._lock:
            if grant == "refresh_token":
                if form.get("refresh_token") not in self._refresh:
                    return oauth_error("invalid_grant", "refresh token is invalid or revoked")
                return _json_reply(
                    {
                        "access_token": self._new_access(),
                        "token_type": "bearer",
                        "expires_in": ACCESS_TOKEN_LIFE,
                    }
                )
            if grant == "authorization_code":
                found = self._codes.pop(form.get("code", ""), None)
                if found is None:
                    return oauth_error("invalid_grant", "code doesn't exist or has expired")
                challenge, offline = found
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                if digest.decode() != challenge:
                    return oauth_error("invalid_grant", "invalid code verifier")
                answer: Json = {
                    "access_token": self._new_access(),
                    "token_type": "bearer",
                    "expires_in": ACCESS_TOKEN_LIFE,
                    "scope": SCOPES,
                    "uid": str(int.from_bytes(hashlib.sha256(self.account_id.encode()).digest()[:4])),
                    "account_id": self.account_id,
                }
                if offline:
                    answer["refresh_token"] = self.refresh_token()
                return _json_reply(answer)
        return oauth_error("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _new_access(self) -> str:
        token = "sl." + secrets.token_urlsafe(48)
        self._access[token] = time.time() + ACCESS_TOKEN_LIFE
        return token

    # -- faults ----------------------------------------------------------------------------

    def fail(self, route: str, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """The next `times` calls of `route` ("files/upload_session/append_v2", "oauth2/token",
        "*" for any) answer `status`: 429 as Dropbox's rate limit (retry_after, default 1),
        401 as an invalid token, anything else as a plain server error."""
        with self._lock:
            self._faults.append(_Fault(route, status, times, retry_after))

    def stop_answering(self, *routes: str, path: str | None = None) -> None:
        """Calls of `routes` (of any, when none is named), or only those whose argument
        names `path`, are taken in and left unanswered, as by a server that hangs: each
        waits until answer_again() or go_offline(), which drops it; a call held before
        and not named now is served."""
        with self._changed:
            self._silent = set(routes or ["*"])
            self._silent_path = path
            self._changed.notify_all()

    def answer_again(self) -> None:
        """Serve the calls held unanswered, and return once they are carried out: what a
        call asked is done even if its client gave up waiting."""
        with self._changed:
            self._silent = set()
            self._changed.notify_all()
            while self._held:
                self._changed.wait()

    def set_quota(self, allocated: int | None) -> None:
        """The account may hold `allocated` bytes of files (None: any amount, the default);
        a write past it answers insufficient_space. set_quota(fake.used()) fills it."""
        with self._lock:
            self._quota = allocated

    def used(self) -> int:
        """Bytes of files the account holds (their current versions, as Dropbox counts)."""
        with self._lock:
            return sum(len(entry.data) for entry in self._entries.values() if not entry.folder)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers 401 expired_access_token from now on."""
        with self._lock:
            for token in self._access:
                self._access[token] = 0.0

    def revoke(self) -> None:
        """The app is unlinked: its tokens answer invalid_access_token, refreshes invalid_grant."""
        with self._lock:
            self._access.clear()
            self._refresh.clear()

    def expire_upload_sessions(self) -> None:
        with self._lock:
            self._sessions.clear()

    def reset_cursors(self) -> None:
        """Cursors issued so far answer `reset` on continue and longpoll."""
        with self._changed:
            self._cursors.clear()
            self._changed.notify_all()

    # -- the other side: the website, another client -----------------------------------------

    def write(self, path: str, data: bytes, client_modified: dt.datetime | None = None) -> Json:
        with self._changed:
            return self._metadata(
                self._commit(path, data, {".tag": "overwrite"}, client_modified, False, False)
            )

    def read(self, path: str) -> bytes:
        with self._lock:
            entry = self._entries.get(_key(path))
            if entry is None or entry.folder:
                raise FileNotFoundError(path)
            return entry.data

    def damage(self, path: str) -> None:
        """Flip the first byte of a file's stored content, its rev and content_hash kept:
        what every download of it then serves is damaged, as on a bad link."""
        with self._lock:
            entry = self._entries.get(_key(path))
            if entry is None or entry.folder or not entry.data:
                raise FileNotFoundError(path)
            entry.data = bytes([entry.data[0] ^ 0xFF]) + entry.data[1:]

    def mkdir(self, path: str) -> None:
        with self._changed:
            self._create_folder(path, False)

    def delete(self, path: str) -> None:
        with self._changed:
            if _key(path) not in self._entries:
                raise FileNotFoundError(path)
            self._delete(path, None)

    def move(self, src: str, dst: str) -> None:
        with self._changed:
            if _key(src) not in self._entries:
                raise FileNotFoundError(src)
            self._move(src, dst, False)

    def tree(self) -> dict[str, bytes | None]:
        """Display path -> content (None for a folder) of everything in the Dropbox."""
        with self._lock:
            return {
                self._display(key): (None if e.folder else e.data) for key, e in sorted(self._entries.items())
            }

    def metadata(self, path: str) -> Json:
        """What get_metadata answers for `path` (FileNotFoundError if nothing is there)."""
        with self._lock:
            key = _key(path)
            if key not in self._entries:
                raise FileNotFoundError(path)
            return self._metadata(key)

    # -- the store -------------------------------------------------------------------------

    def _display(self, key: str) -> str:
        parts = []
        while key:
            parts.append(self._entries[key].name)
            key = _parent(key)
        return "/" + "/".join(reversed(parts))

    def _metadata(self, key: str, tagged: bool = True) -> Json:
        """The entry's metadata; tagged (".tag": "file") where the route's result is a Metadata
        union (get_metadata, list_folder...), plain where it is a FileMetadata (upload, download)."""
        return self._describe(self._entries[key], self._display(key), tagged)

    def _describe(self, entry: _Entry, display: str, tagged: bool) -> Json:
        meta: Json = {".tag": "folder" if entry.folder else "file"} if tagged else {}
        meta.update(name=entry.name, path_lower=display.lower(), path_display=display, id=entry.id)
        if not entry.folder:
            meta.update(
                client_modified=_stamp(entry.client_modified),
                server_modified=_stamp(entry.server_modified),
                rev=entry.rev,
                size=len(entry.data),
                is_downloadable=True,
                content_hash=entry.hash,
            )
        return meta

    def _deleted_metadata(self, key: str, display: str) -> Json:
        return {
            ".tag": "deleted",
            "name": display.rsplit("/", 1)[1],
            "path_lower": display.lower(),
            "path_display": display,
        }

    def _note(self, key: str, deleted: bool) -> None:
        self._seq += 1
        self._changes.append((self._seq, key, deleted))
        self._changed.notify_all()

    def _check_path(self, path: str, writing: bool) -> str:
        """The key of a valid path; ApiFailure(malformed_path / disallowed_name) otherwise."""
        if not path.startswith("/") or path == "/" or path.endswith("/"):
            raise ApiFailure(_malformed("path must start with '/' and not end with one"))
        for name in path[1:].split("/"):
            if name in ("", ".", ".."):
                raise ApiFailure(_malformed(f"empty or relative path component in {path!r}"))
            if any(c in name for c in "\\\x00\x7f") or any(0xD800 <= ord(c) <= 0xDFFF for c in name):
                raise ApiFailure(_malformed(f"character not allowed in {name!r}"))
            if len(name.encode("utf-16-le")) // 2 > 255:
                raise ApiFailure(_malformed("name longer than 255 UTF-16 code units"))
            if writing and (name.endswith(" ") or _key(name) in NEVER_SYNCED):
                raise ApiFailure({".tag": "disallowed_name"})
        return _key(path)

    def _find(self, path: str) -> tuple[str, _Entry]:
        """Path, "id:..." or "rev:..." -> (key, entry) of what is there now; LookupError JSON otherwise."""
        if path.startswith("id:"):
            for key, entry in self._entries.items():
                if entry.id == path:
                    return key, entry
            raise ApiFailure(_lookup("not_found"))
        if path.startswith("rev:"):
            found = self._revisions.get(path[4:])
            if found is None:
                raise ApiFailure(_lookup("not_found"))
            return _key(found[0]), found[1]
        key = self._check_path(path, False)
        there = self._entries.get(key)
        if there is None:
            raise ApiFailure(_lookup("not_found"))
        return key, there

    def _new_id(self) -> str:
        return "id:" + secrets.token_urlsafe(17)[:22]

    def _make_parents(self, key: str, path: str) -> None:
        """Create the missing folders above `key`; a file among them is a file_ancestor conflict."""
        names = path.split("/")
        for depth in range(2, len(names)):
            above = _key("/".join(names[:depth]))
            entry = self._entries.get(above)
            if entry is None:
                self._entries[above] = _Entry(self._new_id(), names[depth - 1], True)
                self._deleted.pop(above, None)
                self._note(above, False)
            elif not entry.folder:
                raise ApiFailure(_conflict("file_ancestor"))

    def _free_name(self, path: str, suffix: str) -> tuple[str, str]:
        """An autorename target not yet taken: "name (1).ext", "name (2).ext"... or, with a
        suffix, "name (conflicted copy).ext", "name (conflicted copy 2).ext"..."""
        folder, name = path.rsplit("/", 1)
        dot = name.rfind(".")
        stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
        for n in itertools.count(1):
            label = suffix if suffix and n == 1 else f"{suffix} {n}".strip()
            candidate = f"{folder}/{stem} ({label}){ext}"
            if _key(candidate) not in self._entries:
                return _key(candidate), candidate
        raise AssertionError("unreachable")

    def _commit(
        self,
        path: str,
        data: bytes,
        mode: Json,
        client_modified: dt.datetime | None,
        autorename: bool,
        strict: bool,
    ) -> str:
        """Write a file the way a CommitInfo says; returns its key. WriteError JSON on failure."""
        key = self._check_path(path, True)
        existing = self._entries.get(key)
        tag = mode[".tag"]
        digest = content_hash(data)
        if existing is not None and not existing.folder:
            same = existing.hash == digest
            if tag == "update" and mode["update"] != existing.rev and (strict or not same):
                return self._renamed(key, path, data, client_modified, autorename, "conflicted copy", "file")
            if tag == "add" and (strict or not same):
                return self._renamed(key, path, data, client_modified, autorename, "", "file")
            if same:
                return key  # Dropbox keeps the version it has: same rev, nothing changes
        elif existing is not None:
            return self._renamed(key, path, data, client_modified, autorename, "", "folder")
        elif tag == "update" and strict:
            raise ApiFailure(_conflict("file"))
        return self._store(key, path, data, client_modified)

    def _renamed(
        self,
        key: str,
        path: str,
        data: bytes,
        client_modified: dt.datetime | None,
        autorename: bool,
        suffix: str,
        conflict: str,
    ) -> str:
        if not autorename:
            raise ApiFailure(_conflict(conflict))
        key, path = self._free_name(path, suffix)
        return self._store(key, path, data, client_modified)

    def _store(self, key: str, path: str, data: bytes, client_modified: dt.datetime | None) -> str:
        old = self._entries.get(key)
        replaced = len(old.data) if old is not None and not old.folder else 0
        if self._quota is not None and self.used() - replaced + len(data) > self._quota:
            raise ApiFailure({".tag": "insufficient_space"})
        self._make_parents(key, path)
        now = _now()
        entry = _Entry(
            old.id if old is not None else self._new_id(),
            old.name if old is not None else path.rsplit("/", 1)[1],
            False,
            data,
            self._new_rev(),
            content_hash(data),
            client_modified or now,
            now,
        )
        self._entries[key] = entry
        self._revisions[entry.rev] = (self._display(key), entry)
        self._deleted.pop(key, None)
        self._note(key, False)
        return key

    def _new_rev(self) -> str:
        self._rev_count += 1
        return f"{self._rev_prefix}{self._rev_count:08x}"

    def _create_folder(self, path: str, autorename: bool) -> str:
        key = self._check_path(path, True)
        existing = self._entries.get(key)
        if existing is not None:
            if not autorename:
                raise ApiFailure(_conflict("folder" if existing.folder else "file"))
            key, path = self._free_name(path, "")
        self._make_parents(key, path)
        self._entries[key] = _Entry(self._new_id(), path.rsplit("/", 1)[1], True)
        self._deleted.pop(key, None)
        self._note(key, False)
        return key

    def _subtree(self, key: str) -> list[str]:
        return sorted(k for k in self._entries if k == key or k.startswith(key + "/"))

    def _delete(self, path: str, parent_rev: str | None) -> Json:
        try:
            key, entry = self._find(path)
        except ApiFailure as failure:
            raise ApiFailure({".tag": "path_lookup", "path_lookup": failure.error}) from None
        if parent_rev is not None and (entry.folder or entry.rev != parent_rev):
            raise ApiFailure({".tag": "path_write", "path_write": _conflict("file")})
        meta = self._metadata(key)
        for k in self._subtree(key):
            self._deleted[k] = self._display(k)
        for k in reversed(self._subtree(key)):
            del self._entries[k]
        self._note(key, True)
        return meta

    def _move(self, src: str, dst: str, autorename: bool) -> Json:
        try:
            key, entry = self._find(src)
        except ApiFailure as failure:
            raise ApiFailure({".tag": "from_lookup", "from_lookup": failure.error}) from None
        try:
            to = self._check_path(dst, True)
        except ApiFailure as failure:
            raise ApiFailure({".tag": "to", "to": failure.error}) from None
        if to.startswith(key + "/"):
            raise ApiFailure({".tag": "cant_move_folder_into_itself"})
        new_name = dst.rsplit("/", 1)[1]
        if to == key:  # a change of case (or of Unicode form) only
            entry.name = new_name
            self._note(key, False)
            return self._metadata(key)
        if to in self._entries:
            if not autorename:
                raise ApiFailure(
                    {".tag": "to", "to": _conflict("folder" if self._entries[to].folder else "file")}
                )
            to, dst = self._free_name(dst, "")
            new_name = dst.rsplit("/", 1)[1]
        try:
            self._make_parents(to, dst)
        except ApiFailure as failure:
            raise ApiFailure({".tag": "to", "to": failure.error}) from None
        moved = self._subtree(key)
        for k in moved:
            self._deleted[k] = self._display(k)
        for k in moved:
            new_key = to + k[len(key) :]
            self._entries[new_key] = self._entries.pop(k)
            self._deleted.pop(new_key, None)
        entry.name = new_name
        self._note(key, True)
        for k in moved:
            self._note(to + k[len(key) :], False)
        return self._metadata(to)

    # -- listing ---------------------------------------------------------------------------

    def _folder_key(self, path: str) -> str:
        if path == "":
            return ""
        if path == "/":
            raise BadInput(
                'Error in call to API function "files/list_folder": request body: path: '
                'Specify the root folder as an empty string rather than as "/".'
            )
        key, entry = self._find(path)
        if not entry.folder:
            raise ApiFailure(_lookup("not_folder"))
        return key

    def _listing(self, top: str, recursive: bool, include_deleted: bool) -> list[Json]:
        keys = [k for k in self._entries if _under(k, top, recursive) and k != top]
        entries = [self._metadata(k) for k in sorted(keys, key=lambda k: k.split("/"))]
        if include_deleted:
            gone = sorted(k for k in self._deleted if _under(k, top, recursive) and k != top)
            entries[:0] = [self._deleted_metadata(k, self._deleted[k]) for k in gone]
        return entries

    def _news(self, cursor: _Cursor) -> list[Json]:
        """What changed under the cursor's folder since its seq: deletes, then parents before children."""
        last_delete: dict[str, int] = {}
        last_write: dict[str, int] = {}
        for seq, key, deleted in self._changes[cursor.seq :]:  # change n is at index n - 1
            if _under(key, cursor.top, cursor.recursive):
                (last_delete if deleted else last_write)[key] = seq
        deletes = sorted(last_delete, key=last_delete.__getitem__)
        news = [
            self._deleted_metadata(k, self._deleted.get(k) or self._display(k))
            for k in deletes
            if k not in self._entries or last_write.get(k, 0) > last_delete[k]
        ]
        writes = sorted((k for k in last_write if k in self._entries), key=lambda k: k.split("/"))
        return news + [self._metadata(k) for k in writes]

    def _cursor(self, cursor: _Cursor) -> str:
        token = "AA" + secrets.token_urlsafe(40)
        self._cursors[token] = cursor
        return token

    def _page(self, cursor: _Cursor, entries: list[Json]) -> Json:
        """A ListFolderResult of the first `limit` entries; its cursor holds the rest."""
        limit = cursor.limit or 2000
        page, rest = entries[:limit], entries[limit:]
        following = _Cursor(cursor.top, cursor.recursive, cursor.seq, cursor.limit, rest)
        return {"entries": page, "cursor": self._cursor(following), "has_more": bool(rest)}

    def _known_cursor(self, token: str) -> _Cursor:
        cursor = self._cursors.get(token)
        if cursor is None:
            raise ApiFailure({".tag": "reset"})
        return cursor

    # -- the routes ------------------------------------------------------------------------

    def _serve(self, handler: _Handler, body: bytes) -> _Reply | None:
        url = urllib.parse.urlsplit(handler.path)
        if handler.command == "GET":
            if url.path != "/oauth2/authorize":
                return _Reply(404, b"Not Found")
            code = self._authorize(dict(urllib.parse.parse_qsl(url.query)))
            if code.startswith("error:"):
                return _Reply(400, html.escape(code[6:]).encode(), {"Content-Type": "text/html"})
            page = (
                "<!DOCTYPE html><title>API Request Authorization - Dropbox</title>"
                f"<p>Enter this code into {html.escape(self.app_key)} to finish the process."
                f'<p><input id="auth-code" readonly value="{code}">'
            )
            return _Reply(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
        if url.path == "/oauth2/token":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            with self._lock:
                self.calls.append(("oauth2/token", {"grant_type": form.get("grant_type")}))
            return self._fault("oauth2/token") or self._token(form)
        if not url.path.startswith("/2/"):
            return _Reply(404, b"Not Found")
        route = url.path[3:]
        spec = ROUTES.get(route)
        if spec is None:
            return _Reply(400, f'Unknown API function: "{route}"'.encode())
        style, needs_auth, serve = spec
        try:
            raw = body if style == "rpc" else handler.headers.get("Dropbox-API-Arg", "").encode()
            arg = json.loads(raw) if raw.strip() else None
        except ValueError:
            arg = None
            if style == "rpc" or "Dropbox-API-Arg" in handler.headers:
                return _Reply(
                    400, f'Error in call to API function "{route}": could not decode input as JSON'.encode()
                )
        if (
            style == "rpc"
            and handler.headers.get("Content-Type", "").split(";")[0] != "application/json"
            and body
        ):
            return _Reply(
                400, f'Error in call to API function "{route}": Bad HTTP "Content-Type" header'.encode()
            )
        recorded = dict(arg) if isinstance(arg, dict) else {}
        if style == "upload":
            recorded["_data_len"] = len(body)
        with self._changed:
            self.calls.append((route, recorded))
            held = self._unanswered(route, recorded)
            self._held += held
            while self._online and self._unanswered(route, recorded):
                self._changed.wait()
        try:
            return self._answer(route, arg, body, handler, needs_auth, serve) if self._online \
                else None
        finally:
            if held:
                with self._changed:
                    self._held -= 1
                    self._changed.notify_all()

    def _unanswered(self, route: str, arg: dict[str, Any]) -> bool:
        """Whether a call is to be held (stop_answering; hold the lock)."""
        return bool(self._silent & {route, "*"}) and self._silent_path in (None, arg.get("path"))

    def _answer(self, route: str, arg: Any, body: bytes, handler: _Handler, needs_auth: bool,
                serve: Route) -> _Reply | None:
        fault = self._fault(route)
        if fault is not None:
            return fault
        if needs_auth:
            refused = self._refuse(handler, route)
            if refused is not None:
                return refused
        try:
            return serve(self, arg if isinstance(arg, dict) else {}, body, handler)
        except ApiFailure as failure:
            return _json_reply({"error_summary": _summary(failure.error), "error": failure.error}, 409)
        except BadInput as bad:
            return _Reply(400, str(bad).encode())
        except (KeyError, TypeError, ValueError) as bad:
            return _Reply(400, f'Error in call to API function "{route}": request body: {bad!r}'.encode())

    def _fault(self, route: str) -> _Reply | None:
        with self._lock:
            fault = next((f for f in self._faults if f.route in (route, "*")), None)
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
        if fault.status == 429:
            wait = 1 if fault.retry_after is None else fault.retry_after
            reply = _json_reply(
                {
                    "error_summary": "too_many_requests/..",
                    "error": {"reason": {".tag": "too_many_requests"}, "retry_after": wait},
                },
                429,
            )
            reply.headers["Retry-After"] = str(wait)
            return reply
        if fault.status == 401:
            return _json_reply(
                {"error_summary": "invalid_access_token/..", "error": {".tag": "invalid_access_token"}}, 401
            )
        reply = _Reply(fault.status, f"Error: {fault.status} (injected by FakeDropbox)".encode())
        if fault.retry_after is not None:
            reply.headers["Retry-After"] = str(fault.retry_after)
        return reply

    def _refuse(self, handler: _Handler, route: str) -> _Reply | None:
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _Reply(
                400,
                f'Error in call to API function "{route}": Must provide HTTP header '
                '"Authorization" or URL parameter "authorization".'.encode(),
            )
        with self._lock:
            expiry = self._access.get(header[7:])
        if expiry is None:
            tag = "invalid_access_token"
        elif expiry <= time.time():
            tag = "expired_access_token"
        else:
            return None
        return _json_reply({"error_summary": f"{tag}/..", "error": {".tag": tag}}, 401)

    def _get_metadata(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        path = arg["path"]
        if path in ("", "/"):
            raise BadInput(
                'Error in call to API function "files/get_metadata": request body: path: '
                "The root folder is unsupported."
            )
        with self._lock:
            try:
                key, _ = self._find(path)
            except ApiFailure as failure:
                key = _key(path)
                if (
                    failure.error[".tag"] == "not_found"
                    and arg.get("include_deleted")
                    and key in self._deleted
                ):
                    return _json_reply(self._deleted_metadata(key, self._deleted[key]))
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            return _json_reply(self._metadata(key))

    def _list_folder(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._lock:
            try:
                top = self._folder_key(arg["path"])
            except ApiFailure as failure:
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            recursive = bool(arg.get("recursive"))
            cursor = _Cursor(top, recursive, self._seq, arg.get("limit"))
            entries = self._listing(top, recursive, bool(arg.get("include_deleted")))
            if recursive and top:
                entries.insert(0, self._metadata(top))  # Dropbox lists the folder itself first
            return _json_reply(self._page(cursor, entries))

    def _continue(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._lock:
            cursor = self._known_cursor(arg["cursor"])
            if cursor.pending:
                return _json_reply(self._page(cursor, cursor.pending))
            news = self._news(cursor)
            return _json_reply(
                self._page(_Cursor(cursor.top, cursor.recursive, self._seq, cursor.limit), news)
            )

    def _latest_cursor(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._lock:
            try:
                top = self._folder_key(arg["path"])
            except ApiFailure as failure:
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            cursor = _Cursor(top, bool(arg.get("recursive")), self._seq, arg.get("limit"))
            return _json_reply({"cursor": self._cursor(cursor)})

    def _longpoll(self, arg: Json, body: bytes, handler: _Handler) -> _Reply | None:
        deadline = time.monotonic() + int(arg.get("timeout", 30))
        with self._changed:
            while True:
                if not self._online:
                    return None
                cursor = self._known_cursor(arg["cursor"])
                if cursor.pending or self._news(cursor):
                    return _json_reply({"changes": True})
                left = deadline - time.monotonic()
                if left <= 0:
                    return _json_reply({"changes": False})
                self._changed.wait(left)

    def _delete_v2(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._changed:
            return _json_reply({"metadata": self._delete(arg["path"], arg.get("parent_rev"))})

    def _move_v2(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._changed:
            return _json_reply(
                {"metadata": self._move(arg["from_path"], arg["to_path"], bool(arg.get("autorename")))}
            )

    def _create_folder_v2(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._changed:
            try:
                key = self._create_folder(arg["path"], bool(arg.get("autorename")))
            except ApiFailure as failure:
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            return _json_reply({"metadata": self._metadata(key, tagged=False)})

    def _space_usage(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._lock:
            used, quota = self.used(), self._quota
        return _json_reply({"used": used, "allocation": {
            ".tag": "individual", "allocated": NO_QUOTA if quota is None else quota}})

    def _current_account(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        namespace = str(int.from_bytes(hashlib.sha256(self.account_id.encode()).digest()[:4]))
        return _json_reply(
            {
                "account_id": self.account_id,
                "name": {
                    "given_name": "Test",
                    "surname": "User",
                    "familiar_name": "Test",
                    "display_name": "Test User",
                    "abbreviated_name": "TU",
                },
                "email": "test@example.invalid",
                "email_verified": True,
                "disabled": False,
                "locale": "en",
                "referral_link": "https://db.tt/fake",
                "is_paired": False,
                "account_type": {".tag": "basic"},
                "root_info": {".tag": "user", "root_namespace_id": namespace, "home_namespace_id": namespace},
            }
        )

    # content routes

    def _checked_data(self, arg: Json, body: bytes) -> None:
        if len(body) > MAX_REQUEST:
            raise ApiFailure({".tag": "payload_too_large"})
        expected = arg.get("content_hash")
        if expected is not None and expected != content_hash(body):
            raise ApiFailure({".tag": "content_hash_mismatch"})

    def _commit_arg(self, commit: Json, data: bytes) -> str:
        mode = commit.get("mode", {".tag": "add"})
        if isinstance(mode, str):
            mode = {".tag": mode}
        when = commit.get("client_modified")
        return self._commit(
            commit["path"],
            data,
            mode,
            dt.datetime.strptime(when, TIME_FORMAT) if when else None,
            bool(commit.get("autorename")),
            bool(commit.get("strict_conflict")),
        )

    def _upload(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        self._checked_data(arg, body)
        with self._changed:
            try:
                key = self._commit_arg(arg, body)
            except ApiFailure as failure:
                session = "pid_upload_session:" + secrets.token_urlsafe(24)
                raise ApiFailure(
                    {".tag": "path", "reason": failure.error, "upload_session_id": session}
                ) from None
            return _json_reply(self._metadata(key, tagged=False))

    def _session_start(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        self._checked_data(arg, body)
        session_id = "pid_upload_session:" + secrets.token_urlsafe(48)
        with self._lock:
            self._sessions[session_id] = _Session(bytearray(body), bool(arg.get("close")))
        return _json_reply({"session_id": session_id})

    def _session(self, cursor: Json, appending: bool) -> _Session:
        """The session a cursor names, at the offset it says; UploadSessionLookupError JSON otherwise."""
        session = self._sessions.get(cursor["session_id"])
        if session is None:
            raise ApiFailure({".tag": "not_found"})
        if cursor["offset"] != len(session.data):
            raise ApiFailure({".tag": "incorrect_offset", "correct_offset": len(session.data)})
        if appending and session.closed:
            raise ApiFailure({".tag": "closed"})
        return session

    def _append(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._lock:
            session = self._session(arg["cursor"], True)
            self._checked_data(arg, body)
            session.data += body
            session.closed = bool(arg.get("close"))
        return _json_reply(None)

    def _finish(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        with self._changed:
            try:
                session = self._session(arg["cursor"], bool(body))
            except ApiFailure as failure:
                raise ApiFailure({".tag": "lookup_failed", "lookup_failed": failure.error}) from None
            self._checked_data(arg, body)
            data = bytes(session.data + body)
            try:
                key = self._commit_arg(arg["commit"], data)
            except ApiFailure as failure:
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            del self._sessions[arg["cursor"]["session_id"]]
            return _json_reply(self._metadata(key, tagged=False))

    def _download(self, arg: Json, body: bytes, handler: _Handler) -> _Reply:
        path = arg["path"] if arg.get("rev") is None else "rev:" + arg["rev"]
        with self._lock:
            try:
                key, entry = self._find(path)
            except ApiFailure as failure:
                raise ApiFailure({".tag": "path", "path": failure.error}) from None
            if entry.folder:
                raise ApiFailure({".tag": "path", "path": _lookup("not_file")})
            if path.startswith("rev:"):
                meta = self._describe(entry, self._revisions[entry.rev][0], False)
            else:
                meta = self._metadata(key, tagged=False)
            data = entry.data
        headers = {
            "Dropbox-API-Result": json.dumps(meta),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        wanted = handler.headers.get("Range")
        if wanted is None:
            return _Reply(200, data, headers)
        span = _range(wanted, len(data))
        if span is None:
            return _Reply(416, b"Requested Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"})
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return _Reply(206, data[start:end], headers)


def _range(header: str, size: int) -> tuple[int, int] | None:
    """One "bytes=a-b" / "a-" / "-n" range -> [start, end), or None when it cannot be served."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec:
        return None
    try:
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), size if last == "" else min(size, int(last) + 1)
    except ValueError:
        return None
    return (start, end) if start < end else None


Route = Callable[[FakeDropbox, Json, bytes, _Handler], _Reply | None]
ROUTES: dict[str, tuple[str, bool, Route]] = {
    "files/get_metadata": ("rpc", True, FakeDropbox._get_metadata),
    "files/list_folder": ("rpc", True, FakeDropbox._list_folder),
    "files/list_folder/continue": ("rpc", True, FakeDropbox._continue),
    "files/list_folder/get_latest_cursor": ("rpc", True, FakeDropbox._latest_cursor),
    "files/list_folder/longpoll": ("rpc", False, FakeDropbox._longpoll),
    "files/delete_v2": ("rpc", True, FakeDropbox._delete_v2),
    "files/move_v2": ("rpc", True, FakeDropbox._move_v2),
    "files/create_folder_v2": ("rpc", True, FakeDropbox._create_folder_v2),
    "users/get_current_account": ("rpc", True, FakeDropbox._current_account),
    "users/get_space_usage": ("rpc", True, FakeDropbox._space_usage),
    "files/upload": ("upload", True, FakeDropbox._upload),
    "files/upload_session/start": ("upload", True, FakeDropbox._session_start),
    "files/upload_session/append_v2": ("upload", True, FakeDropbox._append),
    "files/upload_session/finish": ("upload", True, FakeDropbox._finish),
    "files/download": ("download", True, FakeDropbox._download),
}
