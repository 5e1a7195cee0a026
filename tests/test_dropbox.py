"""The dropbox driver through a real mount, against FakeDropbox on loopback, with a local
remote beside it: what reaches Dropbox, what comes back from it, and its faults.

The daemon is started with the fake's environment (the SDK reads the hosts when it is
imported): `onitufs mount` runs with this process's environment, which the `fake` fixture
sets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from onitufs_dropbox.auth import save_token

from onitufs.plug import MARKER, MARKER_MAX, TEMP_SUFFIX
from onitufs.storednames import mount_name
from onitufs.testing.dropbox_api import FakeDropbox

from .conftest import (
    ONITUFS,
    Cloud,
    MakeCloud,
    failed,
    is_mounted,
    run,
    tries_in,
    umount_leaves_queued,
    unmarked_once,
    wait_for,
)

MIB = 1024 * 1024


def dropbox_table(fake: FakeDropbox, token_file: Path, write_token: bool = True) -> str:
    if write_token:
        save_token(token_file, fake.refresh_token())
    return ("[remotes.dropbox]\ndriver = \"dropbox\"\n"
            f"app_key = {json.dumps(fake.app_key)}\ntoken_file = {json.dumps(str(token_file))}\n"
            'path = "/Cloud"\n\n')


def with_dropbox(cloud: Cloud, fake: FakeDropbox, local: bool = True,
                 write_token: bool = True, first: bool = False) -> Cloud:
    """The cloud's config with the Dropbox remote besides (or, local=False, instead of) its
    local ones; `first`, before them (read first of the remotes that cost as much)."""
    if not local:
        cloud.modes = {}
        cloud.write_config()
    table = dropbox_table(fake, cloud.root / "dropbox.token", write_token)
    config = cloud.config.read_text()
    cloud.config.write_text(table + config if first else config + table)
    return cloud


@pytest.fixture
def cloud(make_cloud: MakeCloud, fake: FakeDropbox) -> Cloud:
    """A local remote `a` and the Dropbox folder /Cloud, mounted."""
    mounted = with_dropbox(make_cloud({"a": "rw"}), fake)
    mounted.mount()
    return mounted


def on_dropbox(fake: FakeDropbox, path: str) -> bytes | None:
    try:
        return fake.read(f"/Cloud/{path}")
    except FileNotFoundError:
        return None


def on_dropbox_all(fake: FakeDropbox) -> dict[str, bytes | None]:
    """Everything below the folder /Cloud, by its path there (None: a folder); onitufs's
    own files left out."""
    return {path[len("/Cloud/"):]: data for path, data in fake.tree().items()
            if path.startswith("/Cloud/") and ".onitufs" not in path}


def top_of(folder: Path) -> dict[str, bytes]:
    """What a local folder holds at its top, by name (its files); onitufs's own left out."""
    return {path.name: path.read_bytes() for path in folder.iterdir()
            if not path.name.startswith(".onitufs")}


def remote(cloud: Cloud, name: str = "dropbox") -> dict[str, object]:
    state: dict[str, object] = next(r for r in cloud.status()["remotes"] if r["name"] == name)
    return state


def test_written_read_back_cold_edited_on_dropbox_and_a_case_clash(
        cloud: Cloud, fake: FakeDropbox, make_cloud: MakeCloud) -> None:
    (cloud.mountpoint / "docs").mkdir()
    (cloud.mountpoint / "docs" / "notes.txt").write_bytes(b"first")
    (cloud.mountpoint / "Report.txt").write_bytes(b"upper")
    wait_for(lambda: on_dropbox(fake, "Report.txt") == b"upper", 10, "Report.txt on Dropbox")
    (cloud.mountpoint / "report.txt").write_bytes(b"lower")  # the same name, to Dropbox
    cloud.wait_synced()
    assert on_dropbox(fake, "docs/notes.txt") == b"first"
    stored = {path: data for path, data in fake.tree().items() if "eport" in path}
    assert stored == {"/Cloud/Report.txt": b"upper", "/Cloud/report.txt~onitufs": b"lower"}
    (cloud.mountpoint / "Notes.md").write_bytes(b"upper")  # both at once: either wins
    (cloud.mountpoint / "notes.md").write_bytes(b"lower")
    cloud.wait_synced()
    raced = {mount_name(path.rpartition("/")[2]): data
             for path, data in fake.tree().items() if "otes.md" in path}
    assert raced == {"Notes.md": b"upper", "notes.md": b"lower"}, fake.tree()
    assert cloud.log.count("stored on Dropbox as") == 2, "each said once in the log"
    (cloud.mountpoint / "Report.txt").rename(cloud.mountpoint / "REPORT.TXT")  # case only
    wait_for(lambda: "/Cloud/REPORT.TXT" in fake.tree(), 10, "the rename on Dropbox")
    # an edit made on Dropbox reaches the mount at once (longpoll), and the local remote
    fake.write("/Cloud/docs/notes.txt", b"edited on Dropbox")
    began = time.monotonic()
    wait_for(lambda: (cloud.mountpoint / "docs" / "notes.txt").read_bytes()
             == b"edited on Dropbox", 10, "the edit made on Dropbox")
    assert time.monotonic() - began < 3, "not pushed by the longpoll"
    cloud.wait_synced()
    assert (cloud.remotes["a"] / "docs" / "notes.txt").read_bytes() == b"edited on Dropbox"
    cloud.umount()
    # a new machine with Dropbox alone: every name as it was, read from Dropbox
    fresh = with_dropbox(make_cloud({"a": "rw"}), fake, local=False)
    fresh.mount()
    wait_for(lambda: (fresh.mountpoint / "report.txt").exists(), 10, "the listing")
    assert (fresh.mountpoint / "REPORT.TXT").read_bytes() == b"upper"
    assert (fresh.mountpoint / "report.txt").read_bytes() == b"lower"
    assert (fresh.mountpoint / "docs" / "notes.txt").read_bytes() == b"edited on Dropbox"
    assert (fresh.mountpoint / "Notes.md").read_bytes() == b"upper"
    assert (fresh.mountpoint / "notes.md").read_bytes() == b"lower"
    assert sorted(os.listdir(fresh.mountpoint)) == ["Notes.md", "REPORT.TXT", "docs", "notes.md",
                                                    "report.txt"]
    fresh.umount()


def shown(cloud: Cloud) -> dict[str, bytes] | None:
    """The mount's files and their contents; None where one was moved or deleted between
    the listing and its read (a change from the remote taken in meanwhile)."""
    try:
        return {p.name: p.read_bytes() for p in cloud.mountpoint.iterdir()}
    except FileNotFoundError:
        return None


def test_a_file_changed_on_both_sides_keeps_both(cloud: Cloud, fake: FakeDropbox) -> None:
    (cloud.mountpoint / "both.txt").write_bytes(b"the start")
    cloud.wait_synced()
    fake.go_offline()  # no network: the two edits cannot see each other
    try:
        (cloud.mountpoint / "both.txt").write_bytes(b"edited in the mount")
        fake.write("/Cloud/both.txt", b"edited on Dropbox")
        wait_for(lambda: remote(cloud)["state"] == "offline", 20, "dropbox offline")
    finally:
        fake.go_online()

    def both_kept() -> bool:
        contents = set((shown(cloud) or {}).values())
        return {b"edited in the mount", b"edited on Dropbox"} <= contents
    wait_for(both_kept, 30, "both versions in the mount")
    cloud.wait_synced()
    on_fake = {data for path, data in fake.tree().items() if path.startswith("/Cloud/both")}
    assert on_fake == {b"edited in the mount", b"edited on Dropbox"}, "one overwrote the other"
    assert any("conflict" in name for name in os.listdir(cloud.mountpoint))


def test_an_upload_resumes_after_kill9_and_starts_over_once_its_session_expired(
        cloud: Cloud, fake: FakeDropbox) -> None:
    """A large file goes through a session; killed in the middle, the daemon's next mount
    goes on in the same session from what Dropbox holds. A session Dropbox dropped while
    the daemon was away starts over."""
    fake.fail("files/upload_session/append_v2", 503, times=3)  # holds it after the start
    data = os.urandom(20 * MIB)
    (cloud.mountpoint / "big.bin").write_bytes(data)
    wait_for(lambda: any(route == "files/upload_session/append_v2" for route, _ in fake.calls),
             20, "the upload session under way")
    cloud.kill9()
    assert [route for route, _ in fake.calls].count("files/upload_session/start") == 1
    cloud.cleanup()
    cloud.mount()
    cloud.wait_synced(60)
    assert on_dropbox(fake, "big.bin") == data
    assert [route for route, _ in fake.calls].count("files/upload_session/start") == 1, \
        "started over instead of resuming"
    offsets = [args["cursor"]["offset"] for route, args in fake.calls
               if route == "files/upload_session/finish"]
    assert offsets == [16 * MIB], offsets

    fake.fail("files/upload_session/finish", 503, times=3)  # holds it before the commit
    late = os.urandom(9 * MIB)
    (cloud.mountpoint / "late.bin").write_bytes(late)
    wait_for(lambda: len([r for r, _ in fake.calls if r == "files/upload_session/finish"]) > 1,
             20, "the second upload at its end")
    cloud.kill9()
    fake.expire_upload_sessions()  # days went by
    cloud.cleanup()
    cloud.mount()
    cloud.wait_synced(60)
    assert on_dropbox(fake, "late.bin") == late
    assert [route for route, _ in fake.calls].count("files/upload_session/start") == 3


def test_an_expired_token_and_a_storm_of_429_mid_upload(cloud: Cloud, fake: FakeDropbox) -> None:
    data = os.urandom(20 * MIB)
    fake.fail("files/upload_session/append_v2", 429, times=2, retry_after=1)
    fake.expire_access_tokens()
    (cloud.mountpoint / "stormy.bin").write_bytes(data)
    cloud.wait_synced(60)
    assert on_dropbox(fake, "stormy.bin") == data
    routes = [route for route, _ in fake.calls]
    assert routes.count("oauth2/token") >= 1, "the access token was not refreshed"
    assert routes.count("files/upload_session/append_v2") >= 3  # 2 refused, then through
    assert routes.count("files/upload_session/start") == 1, "a 429 made it start over"
    assert "rt-" not in cloud.log, "a refresh token in the log"


def test_a_first_mount_shows_what_dropbox_holds_although_its_listing_comes_late(
        make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    """A script reads the folder as soon as `onitufs mount` returns. On a first mount,
    with Dropbox's listing held back by a rate limit, that must not be an empty folder
    (which says Dropbox holds nothing), nor a name missing: both wait for the listing."""
    fake.write("/Cloud/held.txt", b"on Dropbox before the first mount")
    fake.mkdir("/Cloud/folder")
    fake.write("/Cloud/folder/inner.txt", b"inside")
    cloud = with_dropbox(make_cloud({"a": "rw"}), fake)
    fake.fail("files/list_folder", 429, retry_after=2)
    cloud.mount()
    began = time.monotonic()
    assert (cloud.mountpoint / "folder" / "inner.txt").read_bytes() == b"inside"
    assert time.monotonic() - began > 1  # the listing did come late: the lookup waited
    assert sorted(os.listdir(cloud.mountpoint)) == ["folder", "held.txt"]
    cloud.umount()
    fake.fail("files/list_folder/continue", 429, retry_after=5)  # from the cursor kept
    cloud.mount()  # a remount shows what the index holds at once, and what comes later
    assert sorted(os.listdir(cloud.mountpoint)) == ["folder", "held.txt"]
    assert remote(cloud)["state"] == "listing"  # shown before Dropbox's listing came


def test_a_stop_does_not_wait_out_a_first_mounts_wait_for_the_listing(
        make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    """SIGTERM (systemd's stop) while an `ls` waits for a first listing held back, and the
    folder held open keeps the mount busy: the daemon stops serving and detaches the
    mount. The `ls` must not keep the daemon waiting until the listing comes or the first
    mount's wait (30 s) ends; it hung until killed, the daemon waiting for it to go."""
    fake.write("/Cloud/held.txt", b"on Dropbox")
    cloud = with_dropbox(make_cloud({"a": "rw"}), fake)
    fake.fail("files/list_folder", 429, retry_after=40)
    cloud.mount()
    assert cloud.pid is not None
    busy = os.open(cloud.mountpoint, os.O_RDONLY)
    ls = subprocess.Popen(["ls", str(cloud.mountpoint)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        assert ls.poll() is None, "the ls did not wait for the first listing"
        began = time.monotonic()
        os.kill(cloud.pid, signal.SIGTERM)
        ls.wait(timeout=60)
        cloud.wait_daemon_exit()
        took = time.monotonic() - began
    finally:
        ls.kill()
        ls.wait()
        os.close(busy)
    assert took < 10, f"the stop took {took:.1f} s"
    assert "detaching instead" in cloud.log
    assert not is_mounted(cloud.mountpoint)


def test_a_revoked_token_is_offline_with_the_command_to_run(cloud: Cloud, fake: FakeDropbox) -> None:
    (cloud.mountpoint / "before.txt").write_bytes(b"x")
    cloud.wait_synced()
    fake.revoke()
    fake.expire_access_tokens()
    (cloud.mountpoint / "after.txt").write_bytes(b"y")
    wait_for(lambda: "onitufs auth" in str(remote(cloud)["reason"]), 30, "the auth hint")
    reason = str(remote(cloud)["reason"])
    assert remote(cloud)["state"] == "offline"
    assert f"onitufs auth {cloud.config} dropbox" in reason, reason
    assert (cloud.mountpoint / "before.txt").read_bytes() == b"x"  # the mount works on
    save_token(cloud.root / "dropbox.token", fake.refresh_token())  # as onitufs auth does
    # (its user waits: within seconds, not after the backoff, up to 30 s)
    wait_for(lambda: on_dropbox(fake, "after.txt") == b"y", 8, "the remote back")


def test_a_damaged_download_is_refused_by_its_content_hash(cloud: Cloud,
                                                           fake: FakeDropbox) -> None:
    fake.write("/Cloud/bad.txt", b"what Dropbox holds")
    fake.damage("/Cloud/bad.txt")
    fake.write("/Cloud/good.txt", b"what Dropbox holds too")
    wait_for(lambda: (cloud.remotes["a"] / "good.txt").exists(), what="the good file")
    wait_for(lambda: "do not match Dropbox's content_hash" in cloud.log, what="the refusal")
    with pytest.raises(OSError):
        (cloud.mountpoint / "bad.txt").read_bytes()
    assert not (cloud.remotes["a"] / "bad.txt").exists()  # nothing damaged spread


def test_no_network_is_an_outage_and_the_mount_works_on(cloud: Cloud,
                                                       fake: FakeDropbox) -> None:
    (cloud.mountpoint / "before.txt").write_bytes(b"seen by Dropbox")
    cloud.wait_synced()
    fake.go_offline()
    (cloud.mountpoint / "during.txt").write_bytes(b"written offline")
    (cloud.mountpoint / "before.txt").unlink()
    wait_for(lambda: remote(cloud)["state"] == "offline", 30, "the remote offline")
    wait_for(lambda: (cloud.remotes["a"] / "during.txt").exists(), what="the local copy")
    assert os.listdir(cloud.mountpoint) == ["during.txt"]
    assert on_dropbox(fake, "before.txt") == b"seen by Dropbox"  # nothing reached it
    fake.go_online()
    wait_for(lambda: on_dropbox(fake, "during.txt") == b"written offline"
             and on_dropbox(fake, "before.txt") is None, 60, "the remote caught up")
    assert remote(cloud)["state"] == "online"


@pytest.mark.parametrize("route, size", [("files/upload", 300_000),
                                         ("files/upload_session/append_v2", 20 * MIB)])
def test_umount_leaves_a_call_dropbox_stopped_answering_and_its_late_answer_keeps_one_copy(
        make_cloud: MakeCloud, fake: FakeDropbox, route: str, size: int) -> None:
    """Dropbox stops answering with an upload under way: `onitufs umount` waits the stall
    time ([sync] stall), not the client's 60 s timeout, and leaves the call hanging; the
    local remote has the file. Dropbox then carries out the call the daemon gave up on
    (the whole file, or an append to its session). The next mount sends the file and
    keeps no second copy of it: the two contents are one."""
    cloud = with_dropbox(make_cloud({"a": "rw"}, upload_delay="0.2s", stall="2s"), fake)
    cloud.mount()
    (cloud.mountpoint / "one").write_text("1")
    cloud.wait_synced()
    content = os.urandom(size)
    asked = len(fake.calls)
    fake.stop_answering(route)
    try:
        (cloud.mountpoint / "two").write_bytes(content)
        wait_for(lambda: any(called == route for called, _ in fake.calls[asked:]),
                 what=f"{route} to be asked")
        began = time.monotonic()
        result = run("umount", cloud.mountpoint, check=False)
        took = time.monotonic() - began
        assert result.returncode == 2, result.stderr
        assert result.stderr == \
            "onitufs: dropbox: 1 changes still queued; they resume at the next mount\n"
        assert took < 30, f"umount waited {took:.0f} s for the call that hangs"
        assert not is_mounted(cloud.mountpoint)
        assert (cloud.remotes["a"] / "two").read_bytes() == content
    finally:
        fake.answer_again()
    # Done late: the whole file, or an append to a session no finish names yet.
    assert on_dropbox(fake, "two") == (content if route == "files/upload" else None)
    cloud.mount()
    cloud.wait_synced(60)
    assert on_dropbox(fake, "two") == content
    expected = {"one": b"1", "two": content}
    assert shown(cloud) == expected
    assert top_of(cloud.remotes["a"]) == expected
    assert on_dropbox_all(fake) == expected
    cloud.umount()


def test_a_rename_does_not_move_a_save_made_after_dropbox_showed_the_file_gone(
        make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    """The mount renames f to g while f is gone from Dropbox (deleted there, not yet
    reported), and another client saves a new f between the driver's look at f and its
    move. That save is not moved to g and taken for the mount's content: f ends as the
    other client saved it and g as the mount renamed it, in the mount and both remotes."""
    cloud = with_dropbox(make_cloud({"a": "rw"}, upload_delay="0.2s"), fake)
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"written in the mount")
    cloud.wait_synced()
    asked = len(fake.calls)
    fake.stop_answering("files/list_folder/continue", "files/move_v2")
    try:
        fake.delete("/Cloud/f")
        os.rename(cloud.mountpoint / "f", cloud.mountpoint / "g")
        wait_for(lambda: any(route == "files/get_metadata" and arg["path"] == "/Cloud/f"
                             for route, arg in fake.calls[asked:]), what="the driver's look at f")
        fake.write("/Cloud/f", b"saved by another client")
    finally:
        fake.answer_again()
    want = {"f": b"saved by another client", "g": b"written in the mount"}
    wait_for(lambda: shown(cloud) == want, 30, "the mount to show f saved and g renamed")
    cloud.wait_synced(60)
    assert on_dropbox_all(fake) == want
    assert top_of(cloud.remotes["a"]) == want
    cloud.umount()


def test_a_folder_delete_cut_short_after_its_move_aside_is_finished_by_the_next_mount(
        make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    """A folder is deleted on Dropbox by moving it to a hidden name, then deleting it there
    if it is empty. A crash between the two left the hidden folder on Dropbox for good:
    the next mount's listing told the core the folder was gone, and no delete came again.
    The next mount finishes it; a folder kept aside with a file saved into it meanwhile
    comes back to its name instead, the file in it."""
    cloud = with_dropbox(make_cloud({"a": "rw"}, upload_delay="0.2s"), fake)
    cloud.mount()
    for name in ("empty", "saved"):
        (cloud.mountpoint / name).mkdir()
    cloud.wait_synced()

    def aside() -> list[str]:
        return sorted(path for path in fake.tree() if TEMP_SUFFIX in path)

    fake.stop_answering("files/list_folder")  # the look into the folder moved aside
    try:
        for name in ("empty", "saved"):
            (cloud.mountpoint / name).rmdir()
        wait_for(lambda: len(aside()) == 2, what="both folders moved aside")
        cloud.kill9()
    finally:
        fake.answer_again()
    kept = next(path for path in aside() if "saved" in path)
    fake.write(f"{kept}/late.txt", b"saved into it as it was deleted")
    cloud.cleanup()
    cloud.mount()
    cloud.wait_synced()
    wait_for(lambda: aside() == [], what="the deletes finished")
    assert on_dropbox_all(fake) == {"saved": None,
                                    "saved/late.txt": b"saved into it as it was deleted"}
    wait_for(lambda: (cloud.mountpoint / "saved" / "late.txt").exists(), what="the file shown")
    assert not (cloud.mountpoint / "empty").exists()
    cloud.umount()
    assert (cloud.remotes["a"] / "saved" / "late.txt").read_bytes() \
        == b"saved into it as it was deleted"
    assert not (cloud.remotes["a"] / "empty").exists()


def test_a_full_dropbox_backs_off_unmount_says_why_and_the_file_goes_once_there_is_room(
        make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    """An account with no room left, even for the marker of a first mount: the remote is
    unavailable, said in one line, its marker tried again with backoff, not in a loop.
    Then room for the marker only: the upload is refused, tried a few times, not in a
    loop, named once. Each time `onitufs umount` says why, what Dropbox held stays and the
    local remote has the new file. With room again, the next mount sends it."""
    fake.write("/Cloud/kept.txt", b"on Dropbox before")
    fake.set_quota(fake.used())
    cloud = with_dropbox(make_cloud({"a": "rw"}, upload_delay="0.2s"), fake)
    cloud.mount()
    content = os.urandom(9 * MIB)
    (cloud.mountpoint / "big.bin").write_bytes(content)
    on_a = cloud.remotes["a"] / "big.bin"
    wait_for(lambda: on_a.exists() and on_a.read_bytes() == content,
             what="the local remote to get it")
    unmarked_once(cloud, "dropbox", "DropboxFull: the Dropbox is full")
    umount_leaves_queued(cloud, r"onitufs: dropbox: cannot keep its marker \.onitufs-remote "
                         r"\(.*the Dropbox is full\); treated as unavailable; 1 changes still "
                         r"queued")
    assert fake.tree() == {"/Cloud": None, "/Cloud/kept.txt": b"on Dropbox before"}

    fake.set_quota(fake.used() + MARKER_MAX)
    cloud.mount()
    wait_for(lambda: on_dropbox(fake, ".onitufs-remote") is not None, what="the marker")
    assert 1 <= tries_in(cloud, "dropbox", "big.bin", 8) <= 4, "no backoff"
    warnings = re.findall(r"WARNING onitufs\.remotes: remote dropbox: .* big\.bin: .*"
                          r"the Dropbox is full", cloud.log)
    assert len(warnings) == 1, warnings
    umount_leaves_queued(cloud, r"onitufs: dropbox: .*the Dropbox is full.*; 1 changes still queued")
    assert on_dropbox(fake, "big.bin") is None

    fake.set_quota(None)
    cloud.mount()
    cloud.wait_synced(60)
    expected = {"big.bin": content, "kept.txt": b"on Dropbox before"}
    assert shown(cloud) == expected
    assert on_dropbox_all(fake) == expected
    cloud.umount()


def test_onitufs_auth_stores_the_token_with_pkce(make_cloud: MakeCloud, fake: FakeDropbox) -> None:
    cloud = with_dropbox(make_cloud({"a": "rw"}), fake, write_token=False)
    token_file = cloud.root / "dropbox.token"
    for remote_name, answer, said in (
            ("dropbox", "\n", "no authorization code given; nothing written"),
            ("dropbox", "not-a-code\n", "Dropbox did not accept the code"),
            ("a", "", "remote a (driver local) needs no authorization"),
            ("nas", "", "no remote named 'nas' (remotes: a, dropbox)")):
        refused = subprocess.run([*ONITUFS, "auth", str(cloud.config), remote_name],
                                 input=answer, capture_output=True, text=True, timeout=60)
        last = refused.stderr.splitlines()[-1]
        assert refused.returncode == 1 and said in last and last.startswith("onitufs: "), \
            refused.stderr
        assert not token_file.exists()
    auth = subprocess.Popen([*ONITUFS, "auth", str(cloud.config), "dropbox"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert auth.stderr is not None and auth.stdin is not None
        prompted = ""
        while "Enter the authorization code here: " not in prompted:
            char = auth.stderr.read(1)
            assert char, f"onitufs auth ended first: {prompted}"
            prompted += char
        url = re.search(r"Go to: (\S+)", prompted)
        assert url is not None, prompted
        out, err = auth.communicate(fake.approve(url.group(1)) + "\n", timeout=30)
    finally:
        if auth.poll() is None:
            auth.kill()
            auth.wait()
    assert auth.returncode == 0, err
    assert out == f"{token_file}: refresh token saved (mode 0600)\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = json.loads(token_file.read_text())["refresh_token"]
    assert token not in out + err + prompted
    cloud.mount()  # the token works
    (cloud.mountpoint / "hello.txt").write_bytes(b"hello")
    cloud.wait_synced()
    assert on_dropbox(fake, "hello.txt") == b"hello"
    cloud.umount()
    token_file.chmod(0o644)  # others could read it: refused, before anything is mounted
    other = with_dropbox(make_cloud({"a": "rw"}), fake, write_token=False)
    other.config.write_text(other.config.read_text().replace(
        str(other.root / "dropbox.token"), str(token_file)))
    refused = run("mount", other.mountpoint, other.config, check=False)
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "can be read by others (mode 0644): chmod 600 it" in refused.stderr
    assert token not in refused.stderr


def test_after_a_kill9_a_mount_catches_up_from_an_older_cursor_and_loses_nothing(
        cloud: Cloud, fake: FakeDropbox) -> None:
    """The cursor and what the driver knows of the folder are saved now and then, not at
    each change: after a kill -9 the next mount goes again through changes it has seen
    (made there and here), and ends where Dropbox is, with nothing lost or doubled."""
    for name in ("keep.txt", "edit.txt", "gone.txt", "old.txt"):
        (cloud.mountpoint / name).write_bytes(name.encode())
    (cloud.mountpoint / "mine.txt").write_bytes(b"mine")
    cloud.wait_synced()
    fake.write("/Cloud/edit.txt", b"edited there")
    fake.move("/Cloud/old.txt", "/Cloud/new.txt")
    expected = {"keep.txt": b"keep.txt", "edit.txt": b"edited there", "gone.txt": b"gone.txt",
                "new.txt": b"old.txt", "mine.txt": b"mine"}
    wait_for(lambda: shown(cloud) == expected, 10, "the changes made on Dropbox")
    (cloud.mountpoint / "mine.txt").unlink()
    del expected["mine.txt"]
    cloud.wait_synced()
    cloud.kill9()
    fake.delete("/Cloud/gone.txt")
    fake.write("/Cloud/made.txt", b"made while away")
    del expected["gone.txt"]
    expected["made.txt"] = b"made while away"
    since = len(fake.calls)
    cloud.mount()
    wait_for(lambda: shown(cloud) == expected, 10, "the changes made before and after")
    cloud.wait_synced()
    time.sleep(1)  # a change taken twice, or undone, would show by now
    assert shown(cloud) == expected
    assert top_of(cloud.remotes["a"]) == expected
    assert on_dropbox_all(fake) == expected
    assert "files/list_folder" not in [route for route, _ in fake.calls[since:]], \
        "listed everything instead of catching up"


def test_a_remount_catches_up_from_the_cursor_and_a_reset_loses_nothing(
        cloud: Cloud, fake: FakeDropbox) -> None:
    for name in ("keep.txt", "edit.txt", "gone.txt", "old.txt"):
        (cloud.mountpoint / name).write_bytes(name.encode())
    cloud.wait_synced()
    cloud.umount()
    fake.write("/Cloud/edit.txt", b"edited while away")
    fake.delete("/Cloud/gone.txt")
    fake.move("/Cloud/old.txt", "/Cloud/new.txt")
    fake.write("/Cloud/made.txt", b"made while away")
    since = len(fake.calls)
    cloud.mount()
    expected = {"edit.txt": b"edited while away", "keep.txt": b"keep.txt",
                "made.txt": b"made while away", "new.txt": b"old.txt"}

    wait_for(lambda: shown(cloud) == expected, 10, "the changes made while unmounted")
    cloud.wait_synced()
    assert top_of(cloud.remotes["a"]) == expected
    routes = [route for route, _ in fake.calls[since:]]
    assert "files/list_folder/continue" in routes
    assert "files/list_folder" not in routes, "listed everything instead of catching up"
    # Dropbox forgets the cursor: the whole listing again, nothing lost or doubled
    fake.reset_cursors()
    since = len(fake.calls)
    fake.write("/Cloud/after.txt", b"after the reset")
    expected["after.txt"] = b"after the reset"
    wait_for(lambda: shown(cloud) == expected, 10, "the change after the reset")
    assert "files/list_folder" in [route for route, _ in fake.calls[since:]]
    time.sleep(1)  # a listing that doubled or lost something would show by now
    assert shown(cloud) == expected


def test_a_full_dropbox_given_room_is_tried_again_within_seconds(
        cloud: Cloud, fake: FakeDropbox) -> None:
    """After failures in a row, an upload Dropbox refused for want of room waits out a
    backoff that grows to minutes; it is tried again within seconds of the account having
    room (onitufs.room: the driver looks with users/get_space_usage), not after it."""
    wait_for(lambda: on_dropbox(fake, MARKER) is not None, 10, "the remote marked")
    fake.set_quota(fake.used())
    content = os.urandom(MIB)
    (cloud.mountpoint / "big.bin").write_bytes(content)
    began = time.monotonic()
    # The fifth try fails about 15 s in, and the next would wait 16 s more: a copy within
    # 12 s of the room is no try after the backoff.
    wait_for(lambda: failed(cloud, "dropbox", "big.bin") >= 5, 60, "five tries on Dropbox")
    assert time.monotonic() - began > 10, "no backoff"
    assert "the Dropbox is full" in cloud.log
    fake.set_quota(None)
    wait_for(lambda: on_dropbox(fake, "big.bin") == content, 12, "the file on Dropbox")


def test_a_read_that_finds_a_file_where_the_remote_held_a_folder_waits_for_its_listing(
        cloud: Cloud, fake: FakeDropbox) -> None:
    """Another client makes x a file, then a folder, then a file again, while the
    replicator's read of the first file (to copy it to a) is under way. That read finds
    the third version, where the mount has the folder from Dropbox: nothing here changed,
    so this is no conflict. The listing that follows says what became of the folder (a
    delete, by the rules of any delete) and brings the file; taken from the read, the
    file was renamed to a conflict name on Dropbox, as if the folder were an edit here."""
    fake.stop_answering("files/download")
    fake.write("/Cloud/x", b"first file")
    wait_for(lambda: any(route == "files/download" and arg.get("path") == "/Cloud/x"
                         for route, arg in fake.calls), what="the read of the first file")
    fake.delete("/Cloud/x")
    fake.mkdir("/Cloud/x")
    fake.write("/Cloud/x/inner", b"in the folder")
    wait_for(lambda: (cloud.mountpoint / "x").is_dir()
             and os.listdir(cloud.mountpoint / "x") == ["inner"], what="the folder shown")
    fake.stop_answering("files/download", "files/list_folder/continue")
    fake.delete("/Cloud/x")
    fake.write("/Cloud/x", b"the last file")
    told = cloud.log.count("x: changed on Dropbox")
    fake.stop_answering("files/list_folder/continue")  # the read answered, not the listing
    wait_for(lambda: cloud.log.count("x: changed on Dropbox") > told, what="the read's answer")
    # What the core does with that answer comes next in the log: the copy put off.
    wait_for(lambda: "remote a: cannot copy" in cloud.log, what="the copy put off")
    fake.answer_again()
    want = {"x": b"the last file"}
    wait_for(lambda: (cloud.mountpoint / "x").is_file() and shown(cloud) == want, 30,
             "the last file alone in the mount")
    cloud.wait_synced(60)
    assert on_dropbox_all(fake) == want
    assert top_of(cloud.remotes["a"]) == want
    cloud.umount()
    assert "changed both here and there" not in cloud.log
