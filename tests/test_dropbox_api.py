"""FakeDropbox (onitufs/testing/dropbox_api.py) through the real dropbox SDK.

The SDK reads its hosts when it is imported, so each check runs as a small Python program
in a child process whose environment is the fake's `env`: nothing leaks into this process,
and the fake's own side (its backdoor, its faults) stays in the test. The child prints its
findings as JSON on its last line; an exception in it fails the test with its traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from onitufs.testing.dropbox_api import FakeDropbox
from tests.conftest import wait_for

PRELUDE = """\
import json, os, sys, time
import dropbox, requests
from dropbox import exceptions, files

def client(**options):
    options.setdefault("max_retries_on_error", 0)
    options.setdefault("max_retries_on_rate_limit", 0)
    return dropbox.Dropbox(oauth2_refresh_token=os.environ["FAKE_REFRESH_TOKEN"],
                           app_key=os.environ["FAKE_APP_KEY"], session=dropbox.create_session(), **options)

def error(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except exceptions.ApiError as e:
        return e.error
    raise AssertionError(f"{call.__name__} did not fail")

def out(value):
    print(json.dumps(value), flush=True)

dbx = client()
"""


Children = list[subprocess.Popen[str]]


@pytest.fixture
def fake() -> Iterator[FakeDropbox]:
    with FakeDropbox() as dropbox_api:
        yield dropbox_api


@pytest.fixture
def children() -> Iterator[Children]:
    """The SDK programs a test starts: none outlives it, even when it fails."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def child(
    fake: FakeDropbox, children: Children, code: str, token: str | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, **fake.env, "FAKE_APP_KEY": fake.app_key}
    env["FAKE_REFRESH_TOKEN"] = token or fake.refresh_token()
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(proc)
    return proc


def sdk(fake: FakeDropbox, children: Children, code: str) -> Any:
    """Run `code` with the SDK against the fake; what it last printed with out()."""
    proc = child(fake, children, code)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def dropbox_hash(data: bytes) -> str:
    """Dropbox's documented content_hash, computed here independently of the fake."""
    blocks = [data[i : i + 4 * 1024 * 1024] for i in range(0, len(data), 4 * 1024 * 1024)]
    return hashlib.sha256(b"".join(hashlib.sha256(block).digest() for block in blocks)).hexdigest()


def routes(fake: FakeDropbox) -> list[str]:
    return [route for route, _ in fake.calls]


def test_upload_ranged_download_revisions_and_content_hash(fake: FakeDropbox, children: Children) -> None:
    data = os.urandom(4 * 1024 * 1024 + 1000)  # two content_hash blocks
    fake.write("/Cloud/big.bin", data)
    found = sdk(fake, children, """
        first = dbx.files_upload(b"version one", "/Cloud/a.txt")
        second = dbx.files_upload(b"version two", "/Cloud/a.txt", mode=files.WriteMode.overwrite)
        meta, whole = dbx.files_download("/Cloud/big.bin")
        _, part = dbx.files_download("/Cloud/big.bin", extra_headers={"Range": "bytes=4194300-4194309"})
        _, tail = dbx.files_download("/Cloud/big.bin", extra_headers={"Range": "bytes=-5"})
        _, old = dbx.files_download("rev:" + first.rev)
        empty = dbx.files_upload(b"", "/Cloud/empty")
        out({
            "revs": [first.rev, second.rev], "ids": [first.id, second.id], "old": old.content.decode(),
            "hash": meta.content_hash, "size": meta.size, "whole": whole.content.hex(),
            "part": [part.status_code, part.content.hex(), part.headers["Content-Range"]],
            "tail": tail.content.hex(), "empty": empty.content_hash,
            "sdk_hash": dropbox.content_hash.content_hash(whole.content),
            "mismatch": repr(error(dbx.files_upload, b"x", "/Cloud/x", content_hash="0" * 64)),
            "missing": error(dbx.files_download, "/Cloud/nothing").get_path().is_not_found(),
            "not_file": error(dbx.files_download, "/Cloud").get_path().is_not_file(),
        })
    """)
    assert bytes.fromhex(found["whole"]) == data
    assert found["hash"] == found["sdk_hash"] == dropbox_hash(data)
    assert fake.metadata("/Cloud/big.bin")["content_hash"] == found["hash"]
    assert found["size"] == len(data)
    assert found["part"] == [206, data[4194300:4194310].hex(), f"bytes 4194300-4194309/{len(data)}"]
    assert found["tail"] == data[-5:].hex()
    assert found["empty"] == hashlib.sha256(b"").hexdigest()
    assert found["revs"][0] != found["revs"][1] and all(len(rev) >= 9 for rev in found["revs"])
    assert found["ids"][0] == found["ids"][1] and found["old"] == "version one"
    assert fake.read("/cloud/A.TXT") == b"version two"
    assert "content_hash_mismatch" in found["mismatch"] and "/Cloud/x" not in fake.tree()
    assert found["missing"] and found["not_file"]


def test_upload_session_offsets_closed_and_expired(fake: FakeDropbox, children: Children) -> None:
    found = sdk(fake, children, """
        session = dbx.files_upload_session_start(b"abc").session_id
        cursor = lambda offset: files.UploadSessionCursor(session, offset)
        wrong = error(dbx.files_upload_session_append_v2, b"def", cursor(5))
        dbx.files_upload_session_append_v2(b"def", cursor(3))
        commit = files.CommitInfo("/Cloud/s.bin")
        late = error(dbx.files_upload_session_finish, b"", cursor(3), commit)
        done = dbx.files_upload_session_finish(b"g", cursor(6), commit)
        gone = error(dbx.files_upload_session_finish, b"", cursor(7), commit)
        closed = dbx.files_upload_session_start(b"x", close=True).session_id
        shut = error(dbx.files_upload_session_append_v2, b"y", files.UploadSessionCursor(closed, 1))
        kept = dbx.files_upload_session_start(b"z").session_id
        out({"wrong": wrong.get_incorrect_offset().correct_offset,
             "late": late.get_lookup_failed().get_incorrect_offset().correct_offset,
             "gone": gone.get_lookup_failed().is_not_found(), "shut": shut.is_closed(),
             "size": done.size, "hash": done.content_hash, "kept": kept})
    """)
    assert found["wrong"] == 3 and found["late"] == 6 and found["gone"] and found["shut"]
    assert fake.read("/Cloud/s.bin") == b"abcdefg" and found["hash"] == dropbox_hash(b"abcdefg")
    appends = [args for route, args in fake.calls if route == "files/upload_session/append_v2"]
    assert [(a["cursor"]["offset"], a["_data_len"]) for a in appends] == [(5, 3), (3, 3), (1, 1)]
    fake.expire_upload_sessions()
    expired = sdk(fake, children, f"""
        cursor = files.UploadSessionCursor({found["kept"]!r}, 1)
        out(error(dbx.files_upload_session_append_v2, b"more", cursor).is_not_found())
    """)
    assert expired


def test_update_conflicts_keep_both_versions(fake: FakeDropbox, children: Children) -> None:
    first = fake.write("/Cloud/doc.txt", b"base")
    fake.write("/Cloud/doc.txt", b"changed on dropbox")  # meanwhile, another client
    found = sdk(fake, children, f"""
        stale = files.WriteMode.update({first["rev"]!r})
        conflict = error(dbx.files_upload, b"my edit", "/Cloud/doc.txt", mode=stale)
        same = dbx.files_upload(b"changed on dropbox", "/Cloud/doc.txt", mode=stale)
        strict = error(dbx.files_upload, b"changed on dropbox", "/Cloud/doc.txt", mode=stale,
                       strict_conflict=True)
        copy = dbx.files_upload(b"my edit", "/Cloud/doc.txt", mode=stale, autorename=True)
        added = error(dbx.files_upload, b"new", "/Cloud/DOC.txt")
        ancestor = error(dbx.files_upload, b"x", "/Cloud/doc.txt/inner")
        current = dbx.files_get_metadata("/Cloud/doc.txt")
        fresh = dbx.files_upload(b"mine", "/Cloud/doc.txt", mode=files.WriteMode.update(current.rev))
        session = dbx.files_upload_session_start(b"late").session_id
        finish = error(dbx.files_upload_session_finish, b"", files.UploadSessionCursor(session, 4),
                       files.CommitInfo("/Cloud/doc.txt", mode=stale))
        out({{"conflict": conflict.get_path().reason.get_conflict().is_file(),
             "same": [same.rev, current.rev], "strict": strict.get_path().reason.get_conflict().is_file(),
             "copy": copy.path_display, "added": added.get_path().reason.get_conflict().is_file(),
             "ancestor": ancestor.get_path().reason.get_conflict().is_file_ancestor(),
             "fresh": fresh.rev != current.rev,
             "finish": finish.get_path().get_conflict().is_file()}})
    """)
    assert found["conflict"] and found["strict"] and found["added"] and found["ancestor"] and found["finish"]
    assert found["same"][0] == found["same"][1]  # identical content: nothing to change, no conflict
    assert found["copy"] == "/Cloud/doc (conflicted copy).txt" and found["fresh"]
    assert fake.tree() == {
        "/Cloud": None,
        "/Cloud/doc (conflicted copy).txt": b"my edit",
        "/Cloud/doc.txt": b"mine",
    }


def test_list_folder_pages_and_longpoll_wakes_on_change(fake: FakeDropbox, children: Children) -> None:
    for name in ["a", "b", "sub/c", "sub/deeper/d"]:
        fake.write(f"/Cloud/{name}", name.encode())
    fake.write("/Elsewhere/e", b"not under /Cloud")
    proc = child(fake, children, """
        page = dbx.files_list_folder("/Cloud", recursive=True, limit=2)
        seen = [e.path_display for e in page.entries]
        pages = 1
        while page.has_more:
            page = dbx.files_list_folder_continue(page.cursor)
            seen += [e.path_display for e in page.entries]
            pages += 1
        top = [e.name for e in dbx.files_list_folder("/Cloud").entries]
        out({"seen": seen, "pages": pages, "top": top})
        started = time.monotonic()
        woke = dbx.files_list_folder_longpoll(page.cursor, timeout=30)
        news = dbx.files_list_folder_continue(page.cursor)
        out({"changes": woke.changes, "after": time.monotonic() - started,
             "news": [(type(e).__name__, e.path_display) for e in news.entries]})
    """)
    assert proc.stdout is not None
    listed = json.loads(proc.stdout.readline())
    assert listed["seen"] == [
        "/Cloud", "/Cloud/a", "/Cloud/b", "/Cloud/sub", "/Cloud/sub/c", "/Cloud/sub/deeper",
        "/Cloud/sub/deeper/d",
    ]
    assert listed["pages"] == 4 and sorted(listed["top"]) == ["a", "b", "sub"]
    wait_for(lambda: "files/list_folder/longpoll" in routes(fake), what="the longpoll")
    fake.write("/Elsewhere/f", b"does not wake a /Cloud cursor")
    time.sleep(0.3)
    fake.write("/Cloud/sub/new", b"new")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    woke = json.loads(stdout.splitlines()[-1])
    assert woke["changes"] and 0.3 <= woke["after"] < 5
    assert woke["news"] == [["FileMetadata", "/Cloud/sub/new"]]


def test_continue_reports_moves_deletes_and_keeps_ids(fake: FakeDropbox, children: Children) -> None:
    fake.write("/Cloud/dir/x", b"x")
    fake.write("/Cloud/gone", b"g")
    ids = {path: fake.metadata(path)["id"] for path in ["/Cloud/dir", "/Cloud/dir/x"]}
    proc = child(fake, children, """
        cursor = dbx.files_list_folder_get_latest_cursor("/Cloud", recursive=True).cursor
        out("ready")
        sys.stdin.readline()  # the test changes the Dropbox meanwhile
        news = dbx.files_list_folder_continue(cursor)
        out([{"kind": type(e).__name__, "path": e.path_display, "id": getattr(e, "id", None)}
             for e in news.entries])
        dbx.files_move_v2("/Cloud/moved/x", "/Cloud/moved/X")  # a change of case only
        moved = dbx.files_get_metadata("/cloud/MOVED/x")
        into = error(dbx.files_move_v2, "/Cloud/moved", "/Cloud/moved/in")
        taken = error(dbx.files_move_v2, "/Cloud/moved/X", "/Cloud/made")
        out({"name": moved.name, "id": moved.id, "to": repr(into),
             "taken": taken.get_to().get_conflict().is_folder(),
             "deleted": repr(error(dbx.files_delete_v2, "/Cloud/gone"))})
    """)
    assert proc.stdin is not None and proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == "ready"
    fake.move("/Cloud/dir", "/Cloud/moved")
    fake.delete("/Cloud/gone")
    fake.mkdir("/Cloud/made")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    news = json.loads(proc.stdout.readline())
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert news == [
        {"kind": "DeletedMetadata", "path": "/Cloud/dir", "id": None},
        {"kind": "DeletedMetadata", "path": "/Cloud/gone", "id": None},
        {"kind": "FolderMetadata", "path": "/Cloud/made", "id": fake.metadata("/Cloud/made")["id"]},
        {"kind": "FolderMetadata", "path": "/Cloud/moved", "id": ids["/Cloud/dir"]},
        {"kind": "FileMetadata", "path": "/Cloud/moved/x", "id": ids["/Cloud/dir/x"]},
    ]
    last = json.loads(stdout.splitlines()[-1])
    assert last["name"] == "X" and last["id"] == ids["/Cloud/dir/x"]
    assert "cant_move_folder_into_itself" in last["to"] and last["taken"]
    assert "path_lookup" in last["deleted"] and "not_found" in last["deleted"]
    assert fake.tree() == {"/Cloud": None, "/Cloud/made": None, "/Cloud/moved": None, "/Cloud/moved/X": b"x"}


def test_reset_cursor(fake: FakeDropbox, children: Children) -> None:
    fake.mkdir("/Cloud")
    proc = child(fake, children, """
        cursor = dbx.files_list_folder("/Cloud", recursive=True).cursor
        out("ready")
        sys.stdin.readline()
        out({"continue": error(dbx.files_list_folder_continue, cursor).is_reset(),
             "longpoll": error(dbx.files_list_folder_longpoll, cursor).is_reset(),
             "fresh": dbx.files_list_folder("/Cloud", recursive=True).entries[0].path_display})
    """)
    assert proc.stdin is not None and proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == "ready"
    fake.reset_cursors()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1]) == {"continue": True, "longpoll": True, "fresh": "/Cloud"}


def test_paths_fold_case_and_unicode_and_refuse_bad_names(fake: FakeDropbox, children: Children) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    found = sdk(fake, children, f"""
        dbx.files_upload(b"one", "/Cloud/Report.txt")
        meta = dbx.files_get_metadata("/CLOUD/report.TXT")
        clash = error(dbx.files_upload, b"two", "/Cloud/report.txt")
        dbx.files_upload(b"nfc", "/Cloud/{nfc}")
        nfd = dbx.files_get_metadata("/Cloud/{nfd}")
        dbx.files_upload(b"nfd", "/Cloud/New-{nfd.upper()}")
        upper = dbx.files_get_metadata("/Cloud/new-{nfc}")
        folder = error(dbx.files_create_folder_v2, "/cloud/REPORT.txt")
        def why(path):
            return repr(error(dbx.files_upload, b"x", path))
        out({{"display": meta.path_display, "lower": meta.path_lower, "clash": repr(clash),
             "nfd": [nfd.name, nfd.path_display], "upper": upper.name,
             "folder": folder.get_path().get_conflict().is_file(),
             "backslash": why("/Cloud/a\\\\b"), "space": why("/Cloud/trailing "),
             "long": why("/Cloud/" + "x" * 256),
             "emoji": dbx.files_upload(b"x", "/Cloud/" + "\\U0001F600" * 127).name,
             "too_long": why("/Cloud/" + "\\U0001F600" * 128), "ds_store": why("/Cloud/.DS_Store"),
             "dots": why("/Cloud/a/../b"), "trailing_dot": dbx.files_upload(b"x", "/Cloud/dot.").name}})
    """)
    assert found["display"] == "/Cloud/Report.txt" and found["lower"] == "/cloud/report.txt"
    assert "conflict" in found["clash"]
    assert found["nfd"] == [nfc, f"/Cloud/{nfc}"] and found["folder"]
    assert found["upper"] == f"New-{nfd.upper()}"  # the case and form of its first creation, kept
    for name in ["backslash", "long", "too_long", "dots"]:
        assert "malformed_path" in found[name], name
    for name in ["space", "ds_store"]:
        assert "disallowed_name" in found[name], name
    assert found["emoji"] == "\U0001f600" * 127 and found["trailing_dot"] == "dot."
    assert fake.read(f"/cloud/{nfd.upper()}") == b"nfc"


def test_expired_token_is_refreshed_and_revoked_one_refused(fake: FakeDropbox, children: Children) -> None:
    fake.write("/Cloud/a", b"a")
    proc = child(fake, children, """
        dbx.files_get_metadata("/Cloud/a")
        out("ready")
        sys.stdin.readline()
        dbx.files_get_metadata("/Cloud/a")  # the SDK refreshes on expired_access_token, then retries
        out("refreshed")
        sys.stdin.readline()
        refused = None
        try:
            dbx.files_get_metadata("/Cloud/a")
        except exceptions.AuthError as e:
            refused = e.error.is_invalid_access_token()
        try:
            client().files_get_metadata("/Cloud/a")  # a new client must refresh first: invalid_grant
        except exceptions.AuthError as e:
            out({"refused": refused, "refresh": e.error.is_invalid_access_token()})
    """)
    assert proc.stdin is not None and proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == "ready"
    fake.expire_access_tokens()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == "refreshed"
    assert routes(fake)[-3:] == ["files/get_metadata", "oauth2/token", "files/get_metadata"]
    fake.revoke()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1]) == {"refused": True, "refresh": True}


def test_rate_limits_and_server_errors(fake: FakeDropbox, children: Children) -> None:
    fake.write("/Cloud/a", b"a")
    fake.fail("files/get_metadata", 429, retry_after=3)
    fake.fail("files/upload_session/append_v2", 500)
    fake.fail("files/download", 503)
    found = sdk(fake, children, """
        try:
            dbx.files_get_metadata("/Cloud/a")
        except exceptions.RateLimitError as e:
            limited = [e.backoff, e.error.reason.is_too_many_requests()]
        session = dbx.files_upload_session_start(b"ab").session_id
        try:
            dbx.files_upload_session_append_v2(b"cd", files.UploadSessionCursor(session, 2))
        except exceptions.InternalServerError as e:
            failed = e.status_code
        dbx.files_upload_session_append_v2(b"cd", files.UploadSessionCursor(session, 2))
        try:
            dbx.files_download("/Cloud/a")
        except exceptions.InternalServerError as e:
            unavailable = e.status_code
        out({"limited": limited, "failed": failed, "unavailable": unavailable})
    """)
    assert found == {"limited": [3, True], "failed": 500, "unavailable": 503}
    fake.fail("files/get_metadata", 429, times=2, retry_after=1)
    waited = sdk(fake, children, """
        started = time.monotonic()
        patient = client(max_retries_on_rate_limit=None)  # the SDK's own retry honours retry_after
        patient.files_get_metadata("/Cloud/a")
        out(time.monotonic() - started)
    """)
    assert 2 <= waited < 10


def test_pkce_flow_gives_a_working_refresh_token(fake: FakeDropbox, children: Children) -> None:
    proc = child(fake, children, """
        flow = dropbox.DropboxOAuth2FlowNoRedirect(os.environ["FAKE_APP_KEY"], use_pkce=True,
                                                   token_access_type="offline")
        out(flow.start())
        result = flow.finish(sys.stdin.readline().strip())
        api = dropbox.Dropbox(oauth2_refresh_token=result.refresh_token, app_key=os.environ["FAKE_APP_KEY"])
        api.files_upload(b"authorized", "/Cloud/auth.txt")
        page = dropbox.DropboxOAuth2FlowNoRedirect(os.environ["FAKE_APP_KEY"], use_pkce=True,
                                                   token_access_type="offline")
        html = requests.get(page.start(), timeout=10).text  # the authorize page a user would see
        code = html.split('value="')[1].split('"')[0]
        again = page.finish(code).refresh_token != result.refresh_token
        try:
            page.finish(code)  # a code serves once
        except requests.HTTPError as e:
            reused = [e.response.status_code, e.response.json()["error"]]
        out({"account": result.account_id, "again": again, "reused": reused})
    """, token="unused")
    assert proc.stdin is not None and proc.stdout is not None
    url = json.loads(proc.stdout.readline())
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["client_id"] == fake.app_key and query["code_challenge_method"] == "S256"
    proc.stdin.write(fake.approve(url) + "\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    found = json.loads(stdout.splitlines()[-1])
    assert found == {"account": fake.account_id, "again": True, "reused": [400, "invalid_grant"]}
    assert fake.read("/Cloud/auth.txt") == b"authorized"
    online = url.replace("token_access_type=offline", "token_access_type=online")
    with pytest.raises(ValueError, match="offline"):
        fake.approve(online)
    with pytest.raises(ValueError, match="client_id"):
        fake.approve(url.replace(f"client_id={fake.app_key}", "client_id=another"))


def test_offline_refuses_connections_and_keeps_state(fake: FakeDropbox, children: Children) -> None:
    fake.write("/Cloud/a", b"kept")
    proc = child(fake, children, """
        dbx.files_get_metadata("/Cloud/a")
        out("ready")
        sys.stdin.readline()
        try:
            dbx.files_get_metadata("/Cloud/a")
        except requests.exceptions.ConnectionError:
            out("offline")
        sys.stdin.readline()
        out(dbx.files_download("/Cloud/a")[1].content.decode())
        untrusted = dropbox.Dropbox(oauth2_access_token="x", session=dropbox.create_session())
        untrusted._session.trust_env = False  # without the fake's CA the certificate is refused
        try:
            untrusted.files_get_metadata("/Cloud/a")
        except requests.exceptions.SSLError:
            out("untrusted")
    """)
    assert proc.stdin is not None and proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == "ready"
    fake.go_offline()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == "offline"
    fake.go_online()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert stdout.splitlines()[-2:] == ['"kept"', '"untrusted"']
