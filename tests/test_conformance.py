"""The driver conformance suite (onitufs/testing/conformance.py), run for every driver here.

A driver joins with one fixture that starts it against a fresh, empty remote
and yields its Harness (see `local_driver`), and its fixture's name in
DRIVERS: every test of the suite then runs for it too. Each remote lives in a
folder on a small tmpfs of its own, so that its backdoor can fill the disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onitufs_annex
import onitufs_dropbox
import onitufs_local
import onitufs_ssh
import pytest
from onitufs_dropbox.auth import save_token
from onitufs_local.listing import file_id
from onitufs_ssh.asides import Asides
from onitufs_ssh.connect import Connection
from onitufs_ssh.sftp import EXTENDED, REMOVE, RENAME, ConnectionLost, Reader, Session, SftpError

from onitufs import renames
from onitufs.plug import (
    ASIDE,
    ASIDE_OWNER,
    TEMP_SUFFIX,
    Changed,
    Conflict,
    DriverError,
    Metadata,
)
from onitufs.testing.backdoor import Backdoor, FolderBackdoor
from onitufs.testing.conformance import *  # noqa: F403
from onitufs.testing.conformance import folder, payload
from onitufs.testing.harness import BLOCK, Harness, Transfer, started

from .annex_backdoor import AnnexBackdoor
from .annex_programs import on_path, rclone_config
from .conftest import wait_for
from .dropbox_backdoor import DropboxBackdoor
from .exfat import exfat_disk
from .sshd import Sshd

# The drivers the suite runs for: the name of each one's fixture (below).
DRIVERS = ["local_driver", "ssh_driver", "annex_driver", "dropbox_driver"]


@pytest.fixture(params=DRIVERS, ids=lambda name: name.removesuffix("_driver"))
def driver(request: pytest.FixtureRequest) -> Harness:
    harness: Harness = request.getfixturevalue(request.param)
    return harness


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, unmounted after the test (lazily: a driver may keep a file open)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


class LocalBackdoor(FolderBackdoor):
    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """The folder gone, as a disk unmounted with its mount point."""
        away = self.root.with_name(self.root.name + ".away")
        self.root.rename(away)
        try:
            yield
        finally:
            away.rename(self.root)


@pytest.fixture
def local_driver(small_disk: Path) -> Iterator[Harness]:
    root = small_disk / "remote"
    root.mkdir()
    table = {"driver": "local", "path": str(root), "poll_interval": "0.05s"}
    with started(onitufs_local, table, LocalBackdoor(root, small_disk / "ballast"),
                 base_dir=small_disk) as harness:
        yield harness


class SshBackdoor(FolderBackdoor):
    """The folder the server serves, reached on this machine."""

    def __init__(self, root: Path, ballast: Path, server: Sshd) -> None:
        super().__init__(root, ballast)
        self.server = server

    def xattrs(self, path: str) -> dict[str, bytes]:
        self.lacks("read extended attributes: SFTP (version 3) has none")

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """The server stopped, its sessions killed."""
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()


@pytest.fixture(scope="module")
def conformance_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One sshd for every test of the module (a test that stops it starts it again)."""
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# What onitufs-drivers(7) promises that SFTP cannot let the ssh driver keep: its test is
# marked to fail for it (strictly).
SSH_DEVIATIONS = {
    "test_a_file_rewritten_in_place_with_its_time_put_back": (
        "SFTP (version 3) gives no change time, and its modification times are whole "
        "seconds: same-size content written in place with its time put back keeps the token"),
}


@pytest.fixture
def ssh_driver(request: pytest.FixtureRequest, small_disk: Path,
               conformance_sshd: Sshd) -> Iterator[Harness]:
    deviation = SSH_DEVIATIONS.get(request.function.__name__)
    if deviation is not None:
        request.applymarker(pytest.mark.xfail(reason=deviation, strict=True))
    server = conformance_sshd
    root = small_disk / "remote"
    root.mkdir()
    # (a deviation waits for a report that cannot come: not for long, as it polls often)
    with started(onitufs_ssh, ssh_table(server, root),
                 SshBackdoor(root, small_disk / "ballast", server),
                 base_dir=small_disk, report_timeout=3.0 if deviation else 20.0) as harness:
        yield harness


def test_ssh_changes_reach_the_core_as_parts_of_the_listing(ssh_driver: Harness) -> None:
    """What a poll finds different, and what onitufs changed since the poll before (files
    uploaded and removed on the server before a poll saw them among it), goes to the core
    as a part of the listing."""
    changes_reach_the_core_as_parts(ssh_driver, undone_there=True)


def changes_reach_the_core_as_parts(harness: Harness, theirs_first: bool = False,
                                    undone_there: bool = False) -> None:
    """Changes made on the remote and by onitufs go to the core as parts of the listing: no
    whole listing, which has the core compare every entry of the tree at each change. One
    comes when the core asks. `theirs_first`: the remote's changes are reported before
    onitufs makes its own; `undone_there`: files onitufs uploads are removed there at once."""
    backdoor, sink = harness.backdoor, harness.sink
    wholes = len(sink.listings)
    backdoor.mkdir("big")
    backdoor.write("big/a.txt", b"one")
    if theirs_first:
        sink.wait(lambda: "big/a.txt" in sink.view, harness.report_timeout, "big/a.txt")
    note = harness.upload("note.txt", b"first")
    harness.call("delete_file", harness.upload("gone.txt", b"soon gone"))
    harness.call("move_file", note, note.copy(path="big/note.txt"))
    sink.wait(lambda: {"big/a.txt", "big/note.txt"} <= set(sink.view)
              and "note.txt" not in sink.view and "gone.txt" not in sink.view,
              harness.report_timeout, "the changes reported")
    if undone_there:
        for round in range(5):
            harness.upload(f"brief{round}.txt", b"short-lived")
            backdoor.remove(f"brief{round}.txt")
        sink.wait(lambda: not any(path.startswith("brief") for path in sink.view),
                  harness.report_timeout, "what onitufs uploaded and the remote lost")
    backdoor.rename("big", "moved")
    sink.wait(lambda: {"moved/a.txt", "moved/note.txt"} <= set(sink.view) and "big" not in sink.view,
              harness.report_timeout, "the folder renamed, with what it holds")
    with sink.cond:
        assert len(sink.listings) == wholes, "a whole listing after a change"
        assert any("big" in scope and "moved" in scope for scope in sink.parts), sink.parts
    assert set(harness.next_listing()) == {"moved", "moved/a.txt", "moved/note.txt"}


def ssh_table(server: Sshd, root: Path) -> dict[str, Any]:
    """The config table of an SSH remote of the folder `root` on `server`."""
    return {"driver": "ssh", "host": "127.0.0.1", "port": server.port, "user": server.user,
            "path": str(root), "identity": str(server.user_key),
            "known_hosts": str(server.known_hosts), "poll_interval": "0.1s"}


# What onitufs-drivers(7) promises that the annex driver does otherwise, on purpose: its test
# is marked to fail for it (strictly).
_KEYS_STAY = ("a version's content is a key that never changes: get_chunk gives the version "
              "asked for while the remote holds it, and another machine's change or delete "
              "shows at the next poll, rather than reading the remote's manifest again for "
              "every block")
ANNEX_DEVIATIONS = {
    "test_get_chunk_of_a_file_changed_since_it_was_listed_raises_changed": _KEYS_STAY,
    "test_get_chunk_of_a_file_deleted_since_it_was_listed_fails": _KEYS_STAY,
}


@pytest.fixture
def annex_driver(request: pytest.FixtureRequest, small_disk: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """rclone's special remote program on a local rclone backend in the small disk; the
    backdoor is another machine sharing it."""
    deviation = ANNEX_DEVIATIONS.get(request.function.__name__)
    if deviation is not None:
        request.applymarker(pytest.mark.xfail(reason=deviation, strict=True))
    store = small_disk / "remote"
    store.mkdir()
    on_path(tmp_path / "bin", monkeypatch)
    # A deviation shows only if no poll comes between the backdoor's change and get_chunk:
    # one that did would rightly see it, and the strict mark fail the run by chance.
    table = {"driver": "annex", "program": "git-annex-remote-rclone-builtin",
             "config": rclone_config(store), "poll_interval": "1h" if deviation else "0.05s",
             "timeout": "10s"}
    with started(onitufs_annex, table, AnnexBackdoor(store, small_disk / "ballast"),
                 base_dir=tmp_path) as harness:
        yield harness


def test_annex_changes_reach_the_core_as_parts_of_the_listing(annex_driver: Harness) -> None:
    """What changed in the tree the driver keeps (another machine's manifest, onitufs's
    own changes) goes to the core as a part of the listing, not as the whole tree at each
    poll. (A handler that takes in another machine's changes asks for a whole listing:
    here the other machine's come first, through a poll.)"""
    changes_reach_the_core_as_parts(annex_driver, theirs_first=True)


# -- dropbox (begin) -------------------------------------------------------------------------
# What onitufs-drivers(7) promises that Dropbox cannot keep: its test is marked to fail for it
# (strictly).
DROPBOX_DEVIATIONS = {
    "test_end_upload_sets_the_modification_time": (
        "Dropbox keeps client_modified in whole seconds, and the driver leaves "
        "plug.mtime_granularity at 0 on purpose: its token is the rev, which every change of "
        "content changes, so the core need not read back each fresh file to find a change a "
        "shared second could hide"),
}


@pytest.fixture
def dropbox_driver(request: pytest.FixtureRequest, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """The driver against a FakeDropbox on loopback, in a folder /Cloud of its own."""
    import dropbox

    from onitufs.testing.dropbox_api import FakeDropbox

    deviation = DROPBOX_DEVIATIONS.get(request.function.__name__)
    if deviation is not None:
        request.applymarker(pytest.mark.xfail(reason=deviation, strict=True))
    with FakeDropbox() as fake:
        # The SDK reads its hosts once, when it is imported, and this process imported it
        # before the fake had a port: point the imported SDK at the fake.
        host = fake.env["DROPBOX_API_HOST"]
        for name in ("API_HOST", "API_CONTENT_HOST", "API_NOTIFICATION_HOST"):
            monkeypatch.setattr(dropbox.dropbox_client, name, host)
        monkeypatch.setattr(dropbox.Dropbox.refresh_access_token, "__defaults__", (host, None))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.env["REQUESTS_CA_BUNDLE"])
        fake.mkdir("/Cloud")
        token_file = tmp_path / "dropbox.token"
        save_token(token_file, fake.refresh_token())
        table = {"driver": "dropbox", "app_key": fake.app_key, "token_file": str(token_file),
                 "path": "/Cloud"}
        with started(onitufs_dropbox, table, DropboxBackdoor(fake, "/Cloud"),
                     base_dir=tmp_path) as harness:
            yield harness
# -- dropbox (end) ---------------------------------------------------------------------------


def test_dropbox_changes_reach_the_core_as_parts_of_the_listing(dropbox_driver: Harness) -> None:
    """What Dropbox says changed, onitufs's own changes among it, goes to the core as
    parts (the paths before and after): no whole listing, which has the core compare every
    entry of the folder at each change. One comes when the core asks."""
    harness, backdoor = dropbox_driver, dropbox_driver.backdoor
    sink = harness.sink
    wholes = len(sink.listings)
    backdoor.write("big/report.txt", b"one")
    backdoor.write("big/Report.txt", b"two")  # stored under its escape (the same name there)
    note = harness.upload("note.txt", b"first")
    harness.call("delete_file", harness.upload("gone.txt", b"soon gone"))
    harness.call("move_file", note, note.copy(path="big/note.txt"))
    sink.wait(lambda: {"big/report.txt", "big/Report.txt", "big/note.txt"} <= set(sink.view)
              and "note.txt" not in sink.view and "gone.txt" not in sink.view, harness.report_timeout,
              "the changes on Dropbox reported")
    backdoor.rename("big", "Moved")
    sink.wait(lambda: {"Moved/Report.txt", "Moved/note.txt"} <= set(sink.view)
              and not any(path.startswith("big") for path in sink.view), harness.report_timeout,
              "the folder renamed, with what it holds")
    backdoor.rename("Moved", "moved")  # in case only: the same folder to Dropbox
    sink.wait(lambda: "moved/report.txt" in sink.view and "Moved" not in sink.view, harness.report_timeout,
              "the folder renamed in case")
    with sink.cond:
        assert len(sink.listings) == wholes, "a whole listing after a change"
        assert any("big" in scope and "Moved" in scope for scope in sink.parts), sink.parts
        assert sink.view["moved/Report.txt"].size == 3
    listed = harness.next_listing()
    assert set(listed) == {"moved", "moved/report.txt", "moved/Report.txt", "moved/note.txt"}


def test_a_dropbox_read_that_finds_a_file_gone_asks_for_a_whole_listing(
        dropbox_driver: Harness) -> None:
    """The core may hold a file the list of changes already said was gone (it learnt of it
    from a conflict's answer, after that): the list will not say it again, so a read that
    finds it gone has the whole listing sent, which tells the core."""
    harness, backdoor, sink = dropbox_driver, dropbox_driver.backdoor, dropbox_driver.sink
    md = harness.upload("gone.txt", b"soon gone")
    harness.listed("gone.txt")
    backdoor.remove("gone.txt")
    harness.unlisted("gone.txt")
    with sink.cond:
        wholes = len(sink.listings)
    assert isinstance(harness.failure("get_chunk", md, 0, 9), DriverError)
    sink.wait(lambda: len(sink.listings) > wholes, harness.report_timeout,
              "a whole listing after the read")
    with sink.cond:
        assert "gone.txt" not in sink.listings[-1].entries


def test_dropbox_reports_again_the_paths_onitufs_wrote_or_learnt_of(
        dropbox_driver: Harness) -> None:
    """A version onitufs learnt of from a handler's answer (Remote.taken_in, through
    plug.wrote) may be older than what the list of changes already told, which it never
    tells again: the path goes in the next part, as the tree the list keeps has it."""
    harness, sink = dropbox_driver, dropbox_driver.sink
    harness.backdoor.write("here.txt", b"x")
    harness.listed("here.txt")
    with sink.cond:
        before = len(sink.parts)
    harness.plug.wrote(["never there.txt"])
    sink.wait(lambda: any("never there.txt" in scope for scope in sink.parts[before:]),
              harness.report_timeout, "a part that looks at the path")


def test_dropbox_goes_on_when_it_cannot_save_its_cursor(
        dropbox_driver: Harness, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Saving where Dropbox's list of changes stopped is for the next mount only: where
    it fails (its folder gone, a full disk), the changes go on reaching the core, and the
    save comes once it can."""
    from onitufs_dropbox import changes

    harness, sink = dropbox_driver, dropbox_driver.sink
    monkeypatch.setattr(changes, "SAVE_EVERY", 0.0)
    saved = harness.folder / "listing.json"
    harness.backdoor.write("before.txt", b"1")
    sink.wait(lambda: "before.txt" in sink.view, harness.report_timeout, "before.txt")
    harness.folder.rename(harness.folder.with_name("gone"))  # the driver may be writing in it
    harness.folder.write_bytes(b"in the way")  # a file where the folder was: ENOTDIR
    harness.backdoor.write("while.txt", b"2")
    sink.wait(lambda: "while.txt" in sink.view, harness.report_timeout, "while.txt")
    harness.backdoor.write("still.txt", b"3")
    sink.wait(lambda: "still.txt" in sink.view, harness.report_timeout, "still.txt")
    said = [record.getMessage() for record in caplog.records
            if "cannot save where Dropbox's list of changes stopped" in record.getMessage()]
    assert said and len(said) == len(set(said)), said  # each reason once, though tried often
    harness.folder.unlink()
    harness.folder.mkdir()
    harness.backdoor.write("after.txt", b"4")
    sink.wait(lambda: "after.txt" in sink.view, harness.report_timeout, "after.txt")
    wait_for(lambda: saved.exists() and "after.txt" in saved.read_text(), 10,
             "the save once it can be made")


def test_the_local_driver_does_not_wait_on_a_named_pipe(local_driver: Harness) -> None:
    """A file the remote's user replaced by a named pipe: its read fails at once (opening
    a pipe waits for a writer, and the driver's thread would wait with it)."""
    md = local_driver.upload("file", b"content")
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    backdoor.remove("file")
    os.mkfifo(backdoor.at("file"))
    local_driver.failure("get_chunk", md, 0, len(b"content"))


@pytest.mark.parametrize("handler", ["delete_file", "move_file"])
def test_the_local_driver_keeps_a_version_saved_between_its_check_and_its_rename(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch, handler: str) -> None:
    """Another program saves the file right after delete_file or move_file checked it:
    the rename (delete_file's moves the file aside first) took that version, so it goes
    back to its name, and Changed describes it."""
    md = local_driver.upload("notes.txt", b"listed")
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    # (the driver runs in this process) delete_file renames aside with os.rename, and
    # move_file with a rename that never replaces
    where, name = (os, "rename") if handler == "delete_file" \
        else (onitufs_local, "rename_noreplace")
    rename = getattr(where, name)

    def saved_first(source: str, target: str) -> None:
        if source.endswith("/notes.txt"):
            backdoor.write("notes.txt", b"saved meanwhile")
        rename(source, target)
    monkeypatch.setattr(where, name, saved_first)
    args = (md,) if handler == "delete_file" else (md, md.copy(path="moved.txt"))
    error = local_driver.failure(handler, *args)
    assert isinstance(error, Changed), f"{type(error).__name__}: {error}"
    assert error.current.size == len(b"saved meanwhile")
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    assert os.listdir(backdoor.at("")) == ["notes.txt"]


def after_first_look(monkeypatch: pytest.MonkeyPatch, ending: str,
                     action: Callable[[], None]) -> list[str]:
    """Wrap os.lstat (the local driver runs in this process): right after its first look
    at a path ending in `ending`, `action` runs, once. The list returned holds that path
    once it has."""
    lstat = os.lstat
    looked: list[str] = []

    def look(path: Any, **kwargs: Any) -> os.stat_result:
        try:
            return lstat(path, **kwargs)
        finally:
            if str(path).endswith(ending) and not looked:
                looked.append(str(path))
                action()
    monkeypatch.setattr(os, "lstat", look)
    return looked


@pytest.mark.parametrize("work", ["upload of a new file", "upload over a file", "move"])
def test_the_local_driver_keeps_a_file_saved_between_its_look_and_its_rename(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch, work: str) -> None:
    """Another program saves a file at the name a file is uploaded or moved to, right
    after the driver looked there: the rename leaves it (a rename after a look would
    replace it), and the upload is a Conflict, the move a DriverError."""
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    args: tuple[Metadata, ...]
    if work == "move":
        md = local_driver.upload("old.txt", b"ours")
        looked_at, args = "/old.txt", (md, md.copy(path="notes.txt"))
    else:
        revision = local_driver.upload("notes.txt", b"listed").revision \
            if work == "upload over a file" else None
        transfer = local_driver.transfer("notes.txt", b"ours", revision=revision)
        transfer.start()
        transfer.send()
        looked_at, args = "/notes.txt", (transfer.md,)
    saved = after_first_look(monkeypatch, looked_at,
                             lambda: backdoor.write("notes.txt", b"saved meanwhile"))
    error = local_driver.failure("move_file" if work == "move" else "end_upload", *args)
    assert saved, "the driver never looked"
    if work == "move":
        assert isinstance(error, DriverError) and not isinstance(error, Changed), error
        assert backdoor.read("old.txt") == b"ours"
    else:
        assert isinstance(error, Conflict), f"{type(error).__name__}: {error}"
        assert error.current.size == len(b"saved meanwhile")
        transfer.abort()
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    assert sorted(os.listdir(backdoor.at(""))) == (["notes.txt", "old.txt"] if work == "move"
                                                   else ["notes.txt"])


def test_the_local_driver_sets_attributes_only_on_the_version_it_checked(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program saves the file by rename right after set_attrs checked it: its
    version keeps its own mode and time, and is not recorded as onitufs's."""
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    md = local_driver.upload("notes.txt", b"listed", mode=0o644)
    fstat, lstat = os.fstat, os.lstat
    saved: list[os.stat_result] = []

    def save() -> None:
        if not saved:
            backdoor.write("theirs.tmp", b"saved meanwhile")
            os.chmod(backdoor.at("theirs.tmp"), 0o600)
            os.replace(backdoor.at("theirs.tmp"), backdoor.at("notes.txt"))
            saved.append(lstat(backdoor.at("notes.txt")))

    def saved_after_fstat(fd: int) -> os.stat_result:
        try:
            return fstat(fd)
        finally:
            save()
    # whichever way the driver looks at the file
    monkeypatch.setattr(os, "fstat", saved_after_fstat)
    after_first_look(monkeypatch, "/notes.txt", save)
    wanted = md.copy(mode=0o640, mtime_ns=md.mtime_ns + 10**9)
    local_driver.call("set_attrs", wanted)
    monkeypatch.undo()
    assert saved, "the driver never looked"
    now = os.lstat(backdoor.at("notes.txt"))
    assert (now.st_mode & 0o7777, now.st_mtime_ns) == \
        (saved[0].st_mode & 0o7777, saved[0].st_mtime_ns), "their version's attributes changed"
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    assert wanted.file_id == md.file_id != file_id(now), "their version was recorded as ours"


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_set_attrs_leaves_a_link_that_took_a_folders_name(
        kind: str, request: pytest.FixtureRequest) -> None:
    """set_attrs of a folder that a symbolic link replaced on the remote: the link and
    what it points to are left as they are (chmod through the link would reach the link
    itself, or its target)."""
    driver: Harness = request.getfixturevalue(f"{kind}_driver")
    backdoor = driver.backdoor
    target = driver.upload("target.txt", b"pointed at", mode=0o644)
    folder(driver, "gone")
    md = driver.listed("gone")
    backdoor.remove("gone")
    backdoor.symlink("target.txt", "gone")
    error = driver.failure("set_attrs", md.copy(mode=0o700))
    assert isinstance(error, DriverError), f"{type(error).__name__}: {error}"
    assert backdoor.kind("gone") == "symlink"
    assert driver.listed("target.txt").mode & 0o7777 == target.mode & 0o7777


def test_the_local_driver_puts_back_a_file_deleted_between_its_look_and_its_rename(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """As where it was deleted before the look: the upload puts the file back."""
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    listed = local_driver.upload("notes.txt", b"listed")
    transfer = local_driver.transfer("notes.txt", b"ours", revision=listed.revision,
                                     file_id=listed.file_id)
    transfer.start()
    transfer.send()
    deleted = after_first_look(monkeypatch, "/notes.txt", lambda: backdoor.remove("notes.txt"))
    transfer.end()
    assert deleted, "the driver never looked"
    assert backdoor.read("notes.txt") == b"ours"
    assert os.listdir(backdoor.at("")) == ["notes.txt"]


def test_the_local_driver_after_a_crash_inside_end_upload(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash came between end_upload's exchange and its delete of the version replaced,
    which is then under the upload's name: the upload resumed from its saved offset
    writes into that file, and is never put in place over the new version already
    there (a Conflict describes that one, which the core then takes as held)."""
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    first = local_driver.upload("notes.txt", payload(5 * BLOCK, 1))  # longer: resumable
    data = payload(3 * BLOCK + 10, 2)
    transfer = local_driver.transfer("notes.txt", data, revision=first.revision,
                                     file_id=first.file_id)
    transfer.start()
    transfer.send()

    def crash(path: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the crash")
    monkeypatch.setattr(os, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        local_driver.call("end_upload", transfer.md)
    monkeypatch.undo()
    local_driver.restart()
    assert transfer.resume() > 0
    transfer.send()
    error = local_driver.failure("end_upload", transfer.md)
    assert isinstance(error, Conflict), f"{type(error).__name__}: {error}"
    assert (error.current.size, error.current.mtime_ns) == (len(data), transfer.md.mtime_ns)
    assert backdoor.read("notes.txt") == data
    transfer.abort()
    assert os.listdir(backdoor.at("")) == ["notes.txt"]


def test_the_local_driver_on_a_disk_without_renameat2(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network disks lack renameat2's flags: uploads and moves still go, and a move
    still leaves a name that is taken."""
    monkeypatch.setattr(renames, "_renameat2", None)
    backdoor = local_driver.backdoor
    first = local_driver.upload("notes.txt", b"first")
    second = local_driver.upload("notes.txt", b"second", revision=first.revision,
                                 file_id=first.file_id)
    assert backdoor.read("notes.txt") == b"second"
    local_driver.upload("taken.txt", b"theirs")
    assert isinstance(local_driver.failure("move_file", second, second.copy(path="taken.txt")),
                      DriverError)
    local_driver.call("move_file", second, second.copy(path="moved.txt"))
    assert (backdoor.read("moved.txt"), backdoor.read("taken.txt")) == (b"second", b"theirs")
    assert backdoor.kind("notes.txt") is None


def test_the_ssh_driver_keeps_a_file_made_between_its_look_and_its_rename(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local driver does: a new file's upload leaves a file another machine made
    at its name after the driver looked there, and is a Conflict."""
    backdoor = ssh_driver.backdoor
    transfer = ssh_driver.transfer("notes.txt", b"ours", revision=None)
    transfer.start()
    transfer.send()
    lstat = Session.lstat
    made: list[bytes] = []

    def made_after(session: Session, path: bytes) -> Any:
        try:
            return lstat(session, path)
        finally:
            if path.endswith(b"/notes.txt") and not made:
                made.append(path)
                backdoor.write("notes.txt", b"made meanwhile")
    monkeypatch.setattr(Session, "lstat", made_after)  # (the driver runs in this process)
    error = ssh_driver.failure("end_upload", transfer.md)
    assert made, "the driver never looked"
    assert isinstance(error, Conflict), f"{type(error).__name__}: {error}"
    assert error.current.size == len(b"made meanwhile")
    transfer.abort()
    assert backdoor.read("notes.txt") == b"made meanwhile"


@pytest.fixture
def ssh_driver_on_fuse(tmp_path: Path, conformance_sshd: Sshd) -> Iterator[Harness]:
    """The ssh driver, its folder served on the server by a libfuse file system
    (exfat-fuse): such a disk keeps a file removed while open under a hidden name
    (.fuse_hidden*) until its last close, as NFS does (.nfs*)."""
    root = tmp_path / "remote"
    root.mkdir()
    with exfat_disk(None, root), \
            started(onitufs_ssh, ssh_table(conformance_sshd, root),
                    SshBackdoor(root, tmp_path / "ballast", conformance_sshd),
                    base_dir=tmp_path) as harness:
        yield harness


def test_the_ssh_driver_closes_a_file_before_it_removes_it(ssh_driver_on_fuse: Harness,
                                                           tmp_path: Path) -> None:
    """A file read then deleted, one read then replaced, and an upload aborted after its
    end met a conflict, leave no other name in the folder: a listing would report it."""
    driver, root = ssh_driver_on_fuse, tmp_path / "remote"

    def hidden_after(step: str) -> list[str]:
        return [f"{step}: {name}" for name in os.listdir(root) if name.startswith(".fuse_hidden")]

    left: list[str] = []
    step = "abort"
    done = threading.Event()

    def watch() -> None:  # the name lasts from the remove to the close
        while not done.is_set():
            left.extend(hidden_after(step))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(20):
            clash = driver.transfer(f"clash{round_}.txt", b"ours", revision=None)
            clash.start()
            clash.send()
            driver.backdoor.write(f"clash{round_}.txt", b"theirs")
            assert isinstance(driver.failure("end_upload", clash.md), Conflict)
            clash.abort()
        step = "delete"  # (a read leaves its read-ahead waiting for more, its file open)
        for round_ in range(10):
            deleted = driver.upload(f"deleted{round_}.txt", b"read, then deleted",
                                    revision=None)
            assert driver.read(deleted) == b"read, then deleted"
            driver.call("delete_file", deleted)
        step = "replace"
        for round_ in range(10):
            replaced = driver.upload(f"replaced{round_}.txt", b"read, then replaced",
                                     revision=None)
            assert driver.read(replaced) == b"read, then replaced"
            driver.upload(f"replaced{round_}.txt", b"the new version",
                          revision=replaced.revision)
    finally:
        done.set()
        watcher.join()
    assert left == []
    assert all(driver.backdoor.read(f"replaced{round_}.txt") == b"the new version"
               for round_ in range(10))
    assert not any((root / f"deleted{round_}.txt").exists() for round_ in range(10))


def test_the_ssh_driver_closes_a_file_before_it_removes_it_while_idle_files_are_tidied(
        ssh_driver_on_fuse: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walks' tidy of idle files takes the connections that keep files open out of
    the pool while it looks at them (here slowly): a delete meanwhile still closes the
    file it removes, kept open by the read before, on whichever connection holds it."""
    driver, root = ssh_driver_on_fuse, tmp_path / "remote"
    tidy = onitufs_ssh.reading.close_idle_handles

    def slow_tidy(conn: Connection) -> None:
        time.sleep(0.2)
        tidy(conn)
    monkeypatch.setattr(onitufs_ssh.reading, "close_idle_handles", slow_tidy)
    left = []
    for round_ in range(5):
        deleted = driver.upload(f"deleted{round_}.txt", b"read, then deleted", revision=None)
        assert driver.read(deleted) == b"read, then deleted"
        time.sleep(0.1)  # (into a tidy's pass)
        driver.call("delete_file", deleted)
        left += [name for name in os.listdir(root) if name.startswith(".fuse_hidden")]
    assert left == []


def test_the_ssh_driver_finishes_what_no_handler_comes_back_for_after_a_move_aside(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A delete whose connection is lost between the move aside and the remove, and a
    replace cut there too and then by a crash, leave the version at its aside name, and
    the listing tells the core the file is gone or replaced: no handler comes back for
    it. The driver's walks remove it; another version a move took (saved between a look
    and the move) goes back to its name instead, or stays where that name was taken
    since (said once, not at every walk)."""
    driver, backdoor = ssh_driver, ssh_driver.backdoor
    deleted = driver.upload("deleted.txt", b"deleted in the mount", revision=None)
    replaced = driver.upload("replaced.txt", b"replaced in the mount", revision=None)
    cut: list[bytes] = []

    def sending(kind: int, payload: bytes) -> bool:
        if kind == REMOVE and ASIDE.encode() in payload and cutting.is_set():
            cutting.clear()  # the handler's remove only, not a sweep's after it
            cut.append(Reader(payload).string().rpartition(b"/")[2])
            raise ConnectionLost("cut by the test")  # the driver drops the connection
        return False
    cutting = threading.Event()
    on_requests(monkeypatch, sending, lambda: None)

    def asides() -> set[str]:
        return asides_on(backdoor)

    cutting.set()
    driver.failure("delete_file", deleted)
    assert len(cut) == 1, "the delete did not remove from an aside name"
    driver.unlisted("deleted.txt")
    wait_for(lambda: not asides(), 10, f"the walks to remove {cut[0]!r}")

    with monkeypatch.context() as crashing:
        crashing.setattr(Asides, "_finish", lambda *_: None)  # the crash comes first
        transfer = driver.transfer("replaced.txt", b"the next version",
                                   revision=replaced.revision)
        transfer.start()
        transfer.send()
        cutting.set()
        driver.failure("end_upload", transfer.md)
        assert len(cut) == 2 and asides() == {cut[1].decode()}, f"{cut}, {asides()}"
        driver.stop()  # the crash: what the driver kept in memory is gone
    stays = other_versions_aside(driver, replaced)
    with caplog.at_level(logging.WARNING, logger="onitufs_ssh.asides"):
        driver.restart()
        wait_for(lambda: asides() == {stays}, 10, "the walks after the restart to finish two")
        time.sleep(1)  # ten walks more
    assert backdoor.read("replaced.txt") == b"the next version"
    finished_but_one(driver, stays, caplog, "ten walks")


def other_versions_aside(driver: Harness, version: Metadata) -> str:
    """As a crash leaves them: another machine's version of other.txt at the aside name
    made for `version` there (its name free: it goes back), and one of taken.txt (its
    name taken since: it stays, said once), whose aside name this returns."""
    other = version.copy(path="other.txt", revision="1:1")
    driver.backdoor.write(driver.plug.aside_path(other), b"another machine's version")
    taken = version.copy(path="taken.txt", revision="1:1")
    stays = driver.plug.aside_path(taken)
    driver.backdoor.write(stays, b"a version whose name was taken since")
    driver.backdoor.write("taken.txt", b"the one that took the name")
    return stays


def finished_but_one(driver: Harness, stays: str, caplog: pytest.LogCaptureFixture,
                     walks: str) -> None:
    """After other_versions_aside and a delete of deleted.txt cut short, and `walks`."""
    backdoor = driver.backdoor
    assert backdoor.read("other.txt") == b"another machine's version"
    assert backdoor.kind("deleted.txt") is None
    assert backdoor.read(stays) == b"a version whose name was taken since"
    assert backdoor.read("taken.txt") == b"the one that took the name"
    said = [record for record in caplog.records if "its name is taken" in record.getMessage()]
    assert len(said) == 1, f"said {len(said)} times in {walks}"


def asides_on(backdoor: Backdoor) -> set[str]:
    return {name for name in backdoor.names() if ASIDE in name}


@pytest.mark.parametrize("how", ["watched", "polled"])
def test_the_local_driver_finishes_a_delete_a_crash_cut_after_its_move_aside(
        local_driver: Harness, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A kill -9 or a power loss between delete_file's rename aside and its unlink leaves
    the version at its aside name, and the listing tells the core the file is gone: no
    handler comes back for it. The next start's walk removes it; another version a rename
    took (saved between the check and the rename) goes back to its name instead, or stays
    where that name was taken since (said once, not at every full walk). The same where
    the folder is polled (out of inotify watches)."""
    driver, backdoor = local_driver, local_driver.backdoor
    if how == "polled":
        def out_of_watches(*_: object) -> None:
            raise onitufs_local.watch.OutOfWatches("no inotify instance (the test)")
        monkeypatch.setattr(onitufs_local, "follow", out_of_watches)
    deleted = driver.upload("deleted.txt", b"deleted in the mount", revision=None)
    backdoor.rename("deleted.txt", driver.plug.aside_path(deleted))  # then the crash
    stays = other_versions_aside(driver, deleted)
    with caplog.at_level(logging.WARNING, logger="onitufs_local.asides"):
        driver.restart()
        wait_for(lambda: asides_on(backdoor) == {stays}, 10,
                 "the walk after the restart to finish two")
        driver.next_listing()  # a full walk more
    finished_but_one(driver, stays, caplog, "two full walks")


def test_the_local_driver_gives_no_byte_of_a_version_written_while_it_reads(
        local_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program writes over the file in place after get_chunk found it the version
    asked for and before it read it (made to happen there, at the step between): the bytes
    read are the other version's, so the read fails with Changed, as an SSH read does
    (proven by the FSTAT sent after its reads), and they never pass for the version asked
    for. The write keeps the file's size and puts its time back: its change time tells."""
    driver, backdoor = local_driver, local_driver.backdoor
    old, new = payload(3 * BLOCK, 1), payload(3 * BLOCK, 2)
    md = driver.upload("f.bin", old)
    looked = onitufs_local.in_hole
    written: list[bool] = []

    def written_between(fd: int, offset: int, size: int, file_size: int) -> bool:
        if not written:
            backdoor.rewrite_in_place("f.bin", new)
            written.append(True)
        return looked(fd, offset, size, file_size)

    monkeypatch.setattr(onitufs_local, "in_hole", written_between)
    error = driver.failure("get_chunk", md, BLOCK, BLOCK)
    assert written and isinstance(error, Changed), f"{type(error).__name__}: {error}"
    assert driver.read(error.current) == new


def renamed_paths(kind: int, payload: bytes) -> list[bytes]:
    """The two paths of an SFTP request if it is a rename (plain or posix-rename)."""
    reader = Reader(payload)
    if kind == EXTENDED and reader.string() != b"posix-rename@openssh.com":
        return []
    return [reader.string(), reader.string()] if kind in (RENAME, EXTENDED) else []


def on_requests(monkeypatch: pytest.MonkeyPatch, sending: Callable[[int, bytes], bool],
                answered: Callable[[], None]) -> None:
    """Hook the driver's SFTP requests (it runs in this process, alone or in a pipeline):
    sending(kind, payload) as each is about to go, and answered() once the answer came to
    each for which sending returned True."""
    request, response = Session.request, Session.response
    awaited: set[int] = set()

    def requesting(session: Session, kind: int, payload: bytes, data: bytes = b"",
                   later: bool = False) -> int:
        watched = sending(kind, payload)
        request_id: int = request(session, kind, payload, data, later)
        if watched:
            awaited.add(request_id)
        return request_id

    def responding(session: Session, request_id: int) -> Any:
        answer = response(session, request_id)
        if request_id in awaited:
            awaited.discard(request_id)
            answered()
        return answer
    monkeypatch.setattr(Session, "request", requesting)
    monkeypatch.setattr(Session, "response", responding)


def at_first_rename_of(name: bytes, monkeypatch: pytest.MonkeyPatch, *,
                       before: Callable[[], None] = lambda: None,
                       after: Callable[[], None] = lambda: None) -> list[bytes]:
    """Call `before` as the driver sends its first rename from or onto `name`, and
    `after` once its answer came; the list returned gets the rename's paths then."""
    seen: list[bytes] = []

    def sending(kind: int, payload: bytes) -> bool:
        renamed = renamed_paths(kind, payload)
        first = not seen and any(path.rpartition(b"/")[2] == name for path in renamed)
        if first:
            seen.extend(renamed)
            before()
        return first
    on_requests(monkeypatch, sending, after)
    return seen


def next_version_sent(driver: Harness) -> tuple[Transfer, set[str]]:
    """notes.txt uploaded, then its next version sent but not ended; the remote's names
    between the two."""
    first = driver.upload("notes.txt", b"listed")
    names = driver.backdoor.names()
    transfer = driver.transfer("notes.txt", b"ours, next", revision=first.revision)
    transfer.start()
    transfer.send()
    return transfer, names


def saving_by_rename(backdoor: Backdoor) -> Callable[[], None]:
    """Another machine's save of notes.txt, by rename as sync tools save."""
    def save() -> None:
        backdoor.write("theirs.tmp", b"saved meanwhile")
        backdoor.rename("theirs.tmp", "notes.txt")
    return save


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_the_ssh_driver_never_replaces_a_version_saved_during_its_replace(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch, before: bool) -> None:
    """Another machine saves the file by rename as the upload of onitufs's next version
    replaces the one it listed: right before the driver's first rename at that name (which
    posix-rename would have replaced), or right after it (the name free). Theirs stays,
    the upload is a Conflict describing it, and nothing is left under a hidden name."""
    backdoor = ssh_driver.backdoor
    transfer, names = next_version_sent(ssh_driver)
    save = saving_by_rename(backdoor)
    seen = at_first_rename_of(b"notes.txt", monkeypatch, **{"before" if before else "after": save})
    error = ssh_driver.failure("end_upload", transfer.md)
    monkeypatch.undo()
    assert seen, "the driver renamed nothing"
    assert isinstance(error, Conflict), f"{type(error).__name__}: {error}"
    assert error.current.size == len(b"saved meanwhile"), f"Conflict.current: {error.current}"
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    transfer.abort()
    assert backdoor.names() == names


def test_two_mounts_replacing_one_version_at_once_keep_both(
        ssh_driver: Harness, small_disk: Path, conformance_sshd: Sshd,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two mounts (two Plugs, each with its own folder) replace the version of notes.txt
    both listed, on one server. Mount b looks, then mount a replaces the file and is
    about to remove the listed version it moved aside when b moves what is at the name
    (a's version) aside: a's removal comes between b's move and b's look at what it
    moved. The aside names are each mount's own, so a removes only the listed version,
    and b puts a's back and fails with a Conflict."""
    backdoor = ssh_driver.backdoor
    listed = ssh_driver.upload("notes.txt", b"listed")
    names = backdoor.names()
    with started(onitufs_ssh, ssh_table(conformance_sshd, small_disk / "remote"), backdoor,
                 base_dir=small_disk, folder=small_disk / "drivers" / "other mount") as other:
        theirs = other.transfer("notes.txt", b"b's version", revision=listed.revision)
        theirs.start()
        theirs.send()
        ours = ssh_driver.transfer("notes.txt", b"a's version", revision=listed.revision)
        ours.start()
        ours.send()
        a_aside = ssh_driver.plug.aside_path(listed)
        b_renaming, a_removing, b_moved = (threading.Event() for _ in range(3))

        def sending(kind: int, payload: bytes) -> bool:
            b_moves = not b_renaming.is_set() and any(
                path.endswith(b"/notes.txt") for path in renamed_paths(kind, payload))
            if b_moves:  # (b's end_upload runs first: its first rename is its move aside)
                b_renaming.set()
                a_removing.wait(20)
            elif kind == REMOVE and Reader(payload).string().endswith(a_aside.encode()):
                a_removing.set()
                b_moved.wait(20)
            return b_moves

        def answered() -> None:
            b_moved.set()
            wait_for(lambda: backdoor.kind(a_aside) is None, 10,
                     "a's removal of what it moved aside")
        on_requests(monkeypatch, sending, answered)
        failed: list[BaseException] = []
        b_thread = threading.Thread(
            target=lambda: failed.append(other.failure("end_upload", theirs.md)))
        b_thread.start()
        assert b_renaming.wait(20), "mount b did not rename"
        ours.end()
        b_thread.join(30)
        monkeypatch.undo()
        assert a_removing.is_set() and b_moved.is_set(), "not in the order the test sets"
        assert backdoor.read("notes.txt") == b"a's version"
        assert failed and isinstance(failed[0], Conflict), f"mount b: {failed}"
        assert failed[0].current.size == len(b"a's version"), f"Conflict: {failed[0].current}"
        theirs.abort()
    assert backdoor.names() == names


@pytest.mark.parametrize("crash", [False, True], ids=["connection lost", "then a crash"])
def test_the_ssh_driver_finishes_a_replace_cut_short_after_its_move_aside(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch, crash: bool) -> None:
    """The connection is lost right after the listed version was moved aside (the name
    empty on the server), and the mount may crash then too: the resumed upload puts
    onitufs's version in place and removes the one aside (the aside name is the same
    after a restart)."""
    backdoor = ssh_driver.backdoor
    transfer, names = next_version_sent(ssh_driver)

    def cut() -> None:
        raise ConnectionLost("cut by the test")  # the driver drops the connection
    seen = at_first_rename_of(b"notes.txt", monkeypatch, after=cut)
    error = ssh_driver.failure("end_upload", transfer.md)
    monkeypatch.undo()
    assert seen and seen[0].endswith(b"/notes.txt"), f"not moved aside first: {seen} ({error})"
    assert backdoor.kind("notes.txt") is None, f"not moved aside first ({error})"
    if crash:
        ssh_driver.restart()
    transfer.resume()
    transfer.send()
    transfer.end()
    assert backdoor.read("notes.txt") == b"ours, next"
    assert backdoor.names() == names


def test_the_ssh_driver_records_the_version_it_put_in_place(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine saves the file by rename right after end_upload put the upload in
    place: what end_upload records is the upload, not that save, which the listing then
    reports as a change."""
    seen = at_first_rename_of(b"notes.txt", monkeypatch,
                              after=saving_by_rename(ssh_driver.backdoor))
    md = ssh_driver.upload("notes.txt", b"ours")
    monkeypatch.undo()
    assert seen, "the driver renamed nothing"
    theirs = ssh_driver.listed("notes.txt", lambda listed: listed.size == len(b"saved meanwhile"))
    assert md.size == len(b"ours") and md.revision != theirs.revision, \
        "the save made after the rename was recorded as the upload"


def test_the_ssh_driver_sets_attributes_only_on_the_version_it_checked(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local driver does: a version saved by rename right before set_attrs changes
    the file keeps its own mode and time, and is not recorded as onitufs's."""
    backdoor = ssh_driver.backdoor
    md = ssh_driver.upload("notes.txt", b"listed", mode=0o644)
    saved: list[bool] = []

    def save() -> None:
        if not saved:
            saved.append(True)
            saving_by_rename(backdoor)()

    def saved_first(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            save()
            return method(*args)
        return call
    # (the driver runs in this process) right before the change, whichever way it is sent
    for name in ("setstat", "fsetstat_then_fstat"):
        if hasattr(Session, name):
            monkeypatch.setattr(Session, name, saved_first(getattr(Session, name)))
    wanted = md.copy(mode=0o600, mtime_ns=md.mtime_ns + 10**9)
    ssh_driver.call("set_attrs", wanted)
    monkeypatch.undo()
    assert saved, "the driver changed nothing"
    theirs = ssh_driver.listed("notes.txt", lambda listed: listed.size == len(b"saved meanwhile"))
    assert theirs.mode & 0o7777 == 0o644 and theirs.mtime_ns != wanted.mtime_ns, \
        "their version took onitufs's attributes"
    assert wanted.revision != theirs.revision, "their version was recorded as onitufs's"


def test_the_ssh_driver_sets_attributes_of_a_file_it_cannot_read(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the server's user may not read cannot be opened to change it through a
    handle: it is changed by path, after the check."""
    md = ssh_driver.upload("locked.txt", b"listed", mode=0o644)

    def refused(session: Session, path: bytes, flags: int, attrs: Any = None) -> bytes:
        raise SftpError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Session, "open", refused)  # (the server runs as root here)
    wanted = md.copy(mode=0o200)
    ssh_driver.call("set_attrs", wanted)
    monkeypatch.undo()
    listed = ssh_driver.listed("locked.txt", lambda listed: listed.mode & 0o7777 == 0o200)
    assert wanted.revision == listed.revision


def test_the_ssh_driver_keeps_a_version_saved_during_its_delete(
        ssh_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local driver does: the version saved between the check and the rename that
    moves the file aside goes back to its name."""
    md = ssh_driver.upload("notes.txt", b"listed")
    backdoor = ssh_driver.backdoor
    seen = at_first_rename_of(b"notes.txt", monkeypatch,
                              before=lambda: backdoor.write("notes.txt", b"saved meanwhile"))
    error = ssh_driver.failure("delete_file", md)
    assert seen and seen[0].endswith(b"/notes.txt"), f"not moved aside: {seen}"
    assert isinstance(error, Changed), f"{type(error).__name__}: {error}"
    assert error.current.size == len(b"saved meanwhile")
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    assert backdoor.kind(ssh_driver.plug.aside_path(md)) is None


def test_the_dropbox_driver_keeps_a_version_saved_between_its_check_and_its_move(
        dropbox_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropbox moves on no condition: a version saved right after move_file checked the
    file is moved with the name, is found by its content_hash, and goes back."""
    import dropbox

    md = dropbox_driver.upload("notes.txt", b"listed")
    backdoor = dropbox_driver.backdoor
    move = dropbox.Dropbox.files_move_v2
    saved: list[str] = []

    def saved_first(client: dropbox.Dropbox, from_path: str, to_path: str,
                    **kwargs: Any) -> Any:
        if not saved:
            saved.append(from_path)
            backdoor.write("notes.txt", b"saved meanwhile")
        return move(client, from_path, to_path, **kwargs)
    monkeypatch.setattr(dropbox.Dropbox, "files_move_v2", saved_first)
    error = dropbox_driver.failure("move_file", md, md.copy(path="moved.txt"))
    assert saved, "the driver never moved"
    assert isinstance(error, Changed), f"{type(error).__name__}: {error}"
    assert error.current.size == len(b"saved meanwhile")
    assert backdoor.read("notes.txt") == b"saved meanwhile"
    assert backdoor.kind("moved.txt") is None


def test_the_dropbox_driver_keeps_what_is_saved_into_a_folder_it_deletes(
        dropbox_driver: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropbox deletes a folder with everything in it: a file saved into it right before
    the delete (after the driver found it empty) stays, and no hidden name of the
    driver's is ever reported."""
    import dropbox

    folder(dropbox_driver, "gone")
    md = dropbox_driver.listed("gone")
    backdoor = dropbox_driver.backdoor
    delete = dropbox.Dropbox.files_delete_v2

    def saved_first(client: dropbox.Dropbox, path: str, parent_rev: str | None = None) -> Any:
        backdoor.write("gone/theirs.txt", b"saved meanwhile")
        return delete(client, path, parent_rev)
    monkeypatch.setattr(dropbox.Dropbox, "files_delete_v2", saved_first)
    with contextlib.suppress(DriverError):  # (the folder deleted, or found not empty)
        dropbox_driver.call("delete_file", md)
    assert backdoor.read("gone/theirs.txt") == b"saved meanwhile"
    dropbox_driver.listed("gone/theirs.txt")
    assert not [path for path in dropbox_driver.sink.view if TEMP_SUFFIX in path]


@pytest.mark.parametrize("inside", [False, True], ids=["empty", "not empty"])
def test_the_dropbox_driver_finishes_a_folder_delete_cut_short(dropbox_driver: Harness,
                                                               inside: bool) -> None:
    """A crash came after delete_file moved the folder aside: the delete tried again
    deletes it if it is empty, and otherwise puts it back."""
    folder(dropbox_driver, "gone")
    md = dropbox_driver.listed("gone")
    backdoor = dropbox_driver.backdoor
    if inside:
        backdoor.write("gone/theirs.txt", b"saved meanwhile")
    backdoor.rename("gone", dropbox_driver.plug.aside_path(md))
    dropbox_driver.unlisted("gone")
    if inside:
        dropbox_driver.failure("delete_file", md)
        assert backdoor.read("gone/theirs.txt") == b"saved meanwhile"
    else:
        dropbox_driver.call("delete_file", md)
        assert backdoor.kind("gone") is None
    assert backdoor.kind(dropbox_driver.plug.aside_path(md)) is None


@pytest.mark.parametrize("aside", ["listed", "saved meanwhile"])
def test_the_local_driver_finishes_a_delete_cut_short(local_driver: Harness,
                                                      aside: str) -> None:
    """A crash came after delete_file moved the file aside: the delete tried again
    deletes it if it is the version onitufs deletes, and otherwise puts it back."""
    md = local_driver.upload("notes.txt", b"listed")
    backdoor = local_driver.backdoor
    assert isinstance(backdoor, FolderBackdoor)
    hidden = backdoor.at(local_driver.plug.aside_path(md))
    os.rename(backdoor.at("notes.txt"), hidden)
    if aside != "listed":
        Path(hidden).write_bytes(b"saved meanwhile")
        error = local_driver.failure("delete_file", md)
        assert isinstance(error, Changed), f"{type(error).__name__}: {error}"
        assert backdoor.read("notes.txt") == b"saved meanwhile"
        assert sorted(os.listdir(backdoor.at(""))) == ["notes.txt"]
    else:
        local_driver.call("delete_file", md)
        assert os.listdir(backdoor.at("")) == []


@pytest.mark.parametrize("kind", ["local", "ssh"])
@pytest.mark.parametrize("aside", ["listed", "saved meanwhile", "saved, name taken"])
def test_a_folder_delete_keeps_a_version_another_machine_left_aside(
        kind: str, aside: str, request: pytest.FixtureRequest) -> None:
    """A folder onitufs deletes holds only what a delete cut short after its move left
    aside (another machine's crash, whose retry never comes here): the version that was
    set aside goes with the folder; one saved in between, which the move took instead,
    is not onitufs's to delete: it comes back under its name, or stays aside where
    something took that name, and the folder stays."""
    driver: Harness = request.getfixturevalue(f"{kind}_driver")
    backdoor = driver.backdoor
    folder(driver, "box")
    md = driver.upload("box/notes.txt", b"listed")
    aside_at = driver.plug.aside_path(md)
    backdoor.rename("box/notes.txt", aside_at)
    hidden = aside_at.rpartition("/")[2]
    if aside == "listed":
        driver.call("delete_file", driver.listed("box"))
        assert backdoor.kind("box") is None
        return
    backdoor.write(aside_at, b"saved meanwhile")
    if aside == "saved, name taken":
        backdoor.write("box/notes.txt", b"saved after")
    driver.failure("delete_file", driver.listed("box"))
    if aside == "saved, name taken":
        assert backdoor.names("box") == {"notes.txt", hidden}
        assert backdoor.read(aside_at) == b"saved meanwhile"
        assert backdoor.read("box/notes.txt") == b"saved after"
    else:
        assert backdoor.names("box") == {"notes.txt"}
        assert backdoor.read("box/notes.txt") == b"saved meanwhile"


def test_a_delete_goes_where_the_aside_name_could_not_be_kept(
        local_driver: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """The file holding a mount's part of its aside names is made as the driver starts:
    on a disk full by then, the driver says it cannot keep it (a delete cut short by a
    crash would leave its aside behind), and its deletes still go."""
    md = local_driver.upload("notes.txt", b"listed")
    (local_driver.folder / ASIDE_OWNER).unlink()
    with local_driver.backdoor.disk_full():
        local_driver.restart()
        local_driver.call("delete_file", md)
    assert local_driver.backdoor.kind("notes.txt") is None
    assert not (local_driver.folder / ASIDE_OWNER).exists()
    assert f"{ASIDE_OWNER} cannot be kept (" in caplog.text, caplog.text


def test_the_dropbox_driver_holds_no_bytes_while_a_conflict_waits(
        dropbox_driver: Harness) -> None:
    """An upload whose end met a conflict stays open to a resume (the core settles the
    conflict first, which may take minutes): a file up to 8 MiB goes to Dropbox in one
    request at the end, so its bytes are not kept in memory meanwhile, and the resume
    starts from the first byte."""
    driver = dropbox_driver
    old = driver.upload("w.txt", b"ours, first")
    driver.backdoor.write("w.txt", b"theirs, written on Dropbox meanwhile")
    data = payload(3 * BLOCK)
    transfer = driver.transfer("w.txt", data, revision=old.revision)
    transfer.start()
    transfer.send()
    assert isinstance(driver.failure("end_upload", transfer.md), Conflict)
    assert transfer.saved[0] == 2 * BLOCK
    assert transfer.resume() == 0
    transfer.send()
    assert isinstance(driver.failure("end_upload", transfer.md), Conflict)
