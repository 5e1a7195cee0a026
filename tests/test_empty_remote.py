"""A remote whose folder comes back empty (an unplugged disk) is an outage: nothing is deleted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType

import onitufs_local
import onitufs_ssh
import pytest
from onitufs_local import listing as local_listing

from onitufs.plug import MARKER, TEMP_SUFFIX, DriverError, Metadata, RemoteUnavailable
from onitufs.testing.backdoor import FolderBackdoor
from onitufs.testing.harness import started

from .bitrot import loop_disk
from .conftest import Cloud, MakeCloud, everywhere, fill, run, snapshot, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote
from .test_conformance import ssh_table
from .test_mount import RENAME_EXCHANGE, renameat2

pytest_plugins = ["tests.sshd"]
FILES = 21


@contextlib.contextmanager
def usb_disk(cloud: Cloud, name: str = "usb", size: str = "16m") -> Iterator[Path]:
    """The remote's folder on a disk_at cloud.root/disk."""
    with disk_at(cloud.root / "disk", cloud.remotes[name], size) as files:
        yield files


@contextlib.contextmanager
def disk_at(disk: Path, folder: Path, size: str = "16m") -> Iterator[Path]:
    """A small tmpfs at `disk` (the disk) whose folder `files` is bound onto `folder` (its
    mount point), as a disk mounted there; the disk's root stays free for what the folder
    must not show. Yields the folder `files`; unmounted, whatever the test does."""
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                   check=True)
    try:
        (disk / "files").mkdir()
        plug_in(disk / "files", folder)
        yield disk / "files"
    finally:
        for mounted in (folder, disk):
            while subprocess.run(["mountpoint", "-q", str(mounted)]).returncode == 0:
                subprocess.run(["umount", "-l", str(mounted)], check=True)


def plug_in(disk: Path, folder: Path) -> None:
    subprocess.run(["mount", "--bind", str(disk), str(folder)], check=True)


def unplug(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)
    assert list(folder.iterdir()) == []


def write_files(root: Path) -> dict[str, tuple[str, bytes]]:
    (root / "photos").mkdir()
    for number in range(FILES):
        folder = root / "photos" if number % 2 else root
        (folder / f"file{number}.txt").write_bytes(f"content {number}\n".encode())
    return snapshot(root)


def usb_state(cloud: Cloud) -> dict[str, object]:
    remote: dict[str, object] = next(r for r in cloud.status()["remotes"] if r["name"] == "usb")
    return remote


def outage_reason(cloud: Cloud) -> str:
    """The outage the check of the remote's folder sets (identity.py): a handler's call
    refused by the driver meanwhile (the local driver's pin: "RemoteUnavailable: ...")
    may take the remote offline first, with its own error."""
    def down() -> bool:
        state = usb_state(cloud)
        return not state["online"] and not str(state["last_error"]).startswith(
            "RemoteUnavailable: ")
    wait_for(down, what="the usb remote to be treated as unavailable")
    return str(usb_state(cloud)["last_error"])


def make(make_cloud: MakeCloud) -> Cloud:
    return make_cloud({"home": "rw", "backup": "rw", "usb": "rw"})


def make_with_usb(make_cloud: MakeCloud, request: pytest.FixtureRequest, kind: str) -> Cloud:
    """As make, its remote usb a local one or one on the test's sshd."""
    if kind == "local":
        return make(make_cloud)
    make_ssh_cloud: MakeSshCloud = request.getfixturevalue("make_ssh_cloud")
    return make_ssh_cloud({"home": "rw", "backup": "rw"},
                          {"usb": SshRemote(request.getfixturevalue("sshd"))})


def test_an_unplugged_disk_deletes_nothing(make_cloud: MakeCloud) -> None:
    cloud = make(make_cloud)
    with usb_disk(cloud) as disk:
        cloud.mount()
        expected = write_files(cloud.mountpoint)
        cloud.wait_synced()
        unplug(cloud.remotes["usb"])
        reason = outage_reason(cloud)
        assert reason == ("its folder is empty but held 21 files and 1 folder; treated as "
                          "unavailable (unmounted disk?)"), reason
        status = run("status", cloud.mountpoint).stdout
        assert "usb" in status and "its folder is empty but held 21 files" in status, status
        assert "remote usb: its folder is empty but held 21 files" in cloud.log
        # changes made meanwhile go to the others, and nothing lands in the empty folder
        (cloud.mountpoint / "new.txt").write_bytes(b"written while unplugged")
        (cloud.mountpoint / "file0.txt").unlink()
        expected["new.txt"] = ("file", b"written while unplugged")
        del expected["file0.txt"]
        wait_for(lambda: (cloud.remotes["home"] / "new.txt").exists()
                 and (cloud.remotes["backup"] / "new.txt").exists(), what="the others to catch up")
        assert snapshot(cloud.mountpoint) == expected
        for name in ("home", "backup"):
            assert snapshot(cloud.remotes[name]) == expected, name
        assert list(cloud.remotes["usb"].iterdir()) == []
        # the disk comes back: the remote catches up, and nothing was lost on it either
        plug_in(disk, cloud.remotes["usb"])
        wait_for(lambda: bool(usb_state(cloud)["online"]), what="usb back online")
        cloud.wait_synced()
        cloud.umount()
        for name, remote in cloud.remotes.items():
            assert snapshot(remote) == expected, name


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_what_a_disk_took_outlives_its_power_loss(make_cloud: MakeCloud,
                                                  request: pytest.FixtureRequest,
                                                  kind: str) -> None:
    """Once onitufs counts a change as made on a remote, a power loss of the remote's disk
    (unplugged, or the server's machine down) keeps it there: one lost would read as a
    change made there, a file or folder made in the mount as deleted there (and deleted
    everywhere), a version replaced as an edit made there, a rename as undone."""
    cloud = make_with_usb(make_cloud, request, kind)
    usb, mnt = cloud.remotes["usb"], cloud.mountpoint
    sshd: Sshd | None = request.getfixturevalue("sshd") if kind == "ssh" else None
    with loop_disk(usb) as disk:
        cloud.mount()
        for name in ("note.txt", "to-move.txt", "to-delete.txt", "to-chmod.txt"):
            (mnt / name).write_text(name)
        (mnt / "folder").mkdir()
        (mnt / "folder" / "inside.txt").write_text("inside")
        cloud.wait_synced()
        wait_for(lambda: everywhere(cloud, "folder/inside.txt", b"inside"), what="the tree")
        os.sync()  # the disk holds all of it so far (the marker, the tree)
        (mnt / "new.txt").write_text("made in the mount")
        (mnt / "note.txt").write_text("version 2")
        (mnt / "made").mkdir()
        (mnt / "link").symlink_to("note.txt")
        (mnt / "to-move.txt").rename(mnt / "moved.txt")
        (mnt / "folder").rename(mnt / "renamed")
        (mnt / "to-delete.txt").unlink()
        (mnt / "to-chmod.txt").chmod(0o600)
        cloud.wait_synced()
        before = snapshot(mnt)
        wait_for(lambda: snapshot(usb) == before, what="the disk to hold the changes")
        if sshd is not None:
            sshd.stop()  # the server's machine down with its disk
        disk.power_loss()
        if sshd is not None:
            sshd.start()
        (usb / "probe.txt").write_text("written after the power came back")
        wait_for(lambda: (mnt / "probe.txt").exists(), what="a listing of the disk")
        (usb / "probe.txt").unlink()
        wait_for(lambda: everywhere(cloud, "probe.txt", None), what="the probe's delete")
        cloud.wait_synced()
        for place in [mnt, *cloud.remotes.values()]:
            assert snapshot(place) == before, place
            assert stat.S_IMODE((place / "to-chmod.txt").stat().st_mode) == 0o600, place
        cloud.umount()


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_disk_back_from_a_power_loss_mid_upload_gets_the_whole_file(
        make_cloud: MakeCloud, request: pytest.FixtureRequest, kind: str) -> None:
    """The disk loses power during an upload and comes back in its place, while the upload
    goes on through the file it opened (the file system it opened lives on meanwhile, the
    daemon's or the SFTP server's): the temporary file at the upload's name is what the
    disk kept, not the one written. The upload starts again, and no copy cut short counts
    as the file (it would be taken for an edit made on the disk, and spread)."""
    cloud = make_with_usb(make_cloud, request, kind)
    usb = cloud.remotes["usb"]
    with loop_disk(usb, 256 << 20) as disk:
        cloud.mount()
        content = os.urandom(1 << 20) * 100
        (cloud.mountpoint / "big.bin").write_bytes(content)

        def under_way() -> list[Path]:
            return [p for p in usb.iterdir() if p.name.endswith(TEMP_SUFFIX)
                    and p.stat().st_size > 20 << 20]
        wait_for(lambda: bool(under_way()), what="the upload to be under way", timeout=60)
        assert cloud.pid is not None
        os.kill(cloud.pid, signal.SIGSTOP)
        try:
            os.sync()  # the disk holds the upload as far as it went
            kept = under_way()[0].stat().st_size
            disk.power_loss()
        finally:
            os.kill(cloud.pid, signal.SIGCONT)
        assert kept < len(content), "the upload ended before the power loss"
        cloud.wait_synced(timeout=120)
        (usb / "probe.txt").write_text("written after the power came back")
        wait_for(lambda: (cloud.mountpoint / "probe.txt").exists(), what="a listing of the disk")
        cloud.wait_synced(timeout=120)
        for place in [cloud.mountpoint, *cloud.remotes.values()]:
            assert (place / "big.bin").read_bytes() == content, place
        assert "is not the one written" in cloud.log
        cloud.umount()


def test_mounting_while_the_disk_is_absent_deletes_nothing(make_cloud: MakeCloud) -> None:
    cloud = make(make_cloud)
    with usb_disk(cloud) as disk:
        cloud.mount()
        expected = write_files(cloud.mountpoint)
        cloud.umount()
        unplug(cloud.remotes["usb"])
        cloud.mount()
        assert "its folder is empty but held" in outage_reason(cloud)
        (cloud.mountpoint / "later.txt").write_bytes(b"later")
        expected["later.txt"] = ("file", b"later")
        wait_for(lambda: (cloud.remotes["backup"] / "later.txt").exists(), what="backup")
        assert snapshot(cloud.mountpoint) == expected
        result = run("umount", cloud.mountpoint, check=False)  # no wait for a remote not there
        assert result.returncode == 2, result.stderr
        assert "usb: its folder is empty but held" in result.stderr, result.stderr
        cloud.wait_daemon_exit()
        assert list(cloud.remotes["usb"].iterdir()) == []
        for name in ("home", "backup"):
            assert snapshot(cloud.remotes[name]) == expected, name
        plug_in(disk, cloud.remotes["usb"])
        cloud.mount()
        cloud.wait_synced()
        cloud.umount()
        assert snapshot(cloud.remotes["usb"]) == expected


def test_a_disk_unplugged_before_it_held_anything_gets_nothing(make_cloud: MakeCloud) -> None:
    """Marked, but full before its first file: unplugged, it has nothing to be told from its
    empty mount point by. Were the marker written there, the uploads would follow it, and
    read as deleted once the disk is back."""
    cloud = make(make_cloud)
    with usb_disk(cloud) as files:
        cloud.mount()
        cloud.wait_listed()
        assert (files / MARKER).exists()
        filler = files.parent / "filler"  # beside the remote's folder, on its disk
        fill(filler)
        (cloud.mountpoint / "first.txt").write_bytes(b"first")
        wait_for(lambda: "No space left" in str(usb_state(cloud)["last_error"]),
                 what="the upload to the full disk to fail")
        unplug(cloud.remotes["usb"])
        assert outage_reason(cloud) == (f"its marker {MARKER} is gone, and it held nothing yet to "
                                        "know its folder by; treated as unavailable (unmounted "
                                        "disk?)")
        (cloud.mountpoint / "second.txt").write_bytes(b"second")
        expected = snapshot(cloud.mountpoint)
        wait_for(lambda: snapshot(cloud.remotes["home"]) == expected, what="home")
        time.sleep(1)  # a few listings of the empty folder, at 0.3 s
        assert list(cloud.remotes["usb"].iterdir()) == []
        filler.unlink()
        plug_in(files, cloud.remotes["usb"])
        cloud.wait_synced()
        cloud.umount()
        for name, remote in cloud.remotes.items():
            assert snapshot(remote) == expected, name


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_disk_never_marked_and_then_unplugged_gets_nothing(
        make_cloud: MakeCloud, request: pytest.FixtureRequest, kind: str) -> None:
    """Read-only at the mount, the disk could not be marked, and holds nothing: unplugged,
    its empty mount point looks to the core like a new remote's empty folder. The marker
    must not go there, nor the uploads after it (the disk, back, would then read as
    another folder, its files hidden under it). Back and writable, it is marked and
    catches up."""
    cloud = make_with_usb(make_cloud, request, kind)
    usb = cloud.remotes["usb"]
    with usb_disk(cloud) as files:
        subprocess.run(["mount", "-o", "remount,ro", str(files.parent)], check=True)
        cloud.mount()
        (cloud.mountpoint / "first.txt").write_bytes(b"first")
        wait_for(lambda: (cloud.remotes["home"] / "first.txt").exists(), what="home")
        reason = outage_reason(cloud)
        assert "cannot keep its marker" in reason, reason
        # (sftp-server answers a read-only disk with a plain "Failure")
        assert kind == "ssh" or "Read-only file system" in reason, reason
        unplug(usb)
        wait_for(lambda: "is no longer" in str(usb_state(cloud)["last_error"]),
                 what="the marker refused in the empty mount point")
        (cloud.mountpoint / "second.txt").write_bytes(b"second")
        expected = snapshot(cloud.mountpoint)
        wait_for(lambda: snapshot(cloud.remotes["home"]) == expected, what="home")
        assert list(usb.iterdir()) == []
        subprocess.run(["mount", "-o", "remount,rw", str(files.parent)], check=True)
        plug_in(files, usb)
        cloud.wait_synced(timeout=60)
        cloud.umount()
        for name, remote in cloud.remotes.items():
            assert snapshot(remote) == expected, name


def test_a_remote_folder_made_anew_deletes_nothing(make_cloud: MakeCloud) -> None:
    cloud = make(make_cloud)
    cloud.mount()
    expected = write_files(cloud.mountpoint)
    cloud.wait_synced()
    # An empty folder takes the remote's place in one step, and the old one is emptied after:
    # the kernel's events from the old folder must not travel as deletes. (rm -rf R; mkdir R
    # would race the rewrite of the marker, deleted among the first, and its deletes travel.)
    usb = cloud.remotes["usb"]
    old = usb.with_name("usb-old")
    old.mkdir()
    renameat2(old, usb, RENAME_EXCHANGE)
    shutil.rmtree(old)
    assert "its folder is empty but held" in outage_reason(cloud)
    assert snapshot(cloud.mountpoint) == expected
    assert snapshot(cloud.remotes["home"]) == expected
    # another folder holding other files is no better
    (cloud.remotes["usb"] / "stranger.txt").write_bytes(b"not ours")
    wait_for(lambda: "holds none of the" in str(usb_state(cloud)["last_error"]),
             what="the reason to follow the folder")
    assert not (cloud.mountpoint / "stranger.txt").exists()
    assert snapshot(cloud.mountpoint) == expected


def test_the_folder_of_another_onitufs_remote_is_not_taken_for_this_one(
        make_cloud: MakeCloud) -> None:
    cloud = make(make_cloud)
    cloud.mount()
    expected = write_files(cloud.mountpoint)
    cloud.wait_synced()
    # Another onitufs remote's disk, mounted where this one's folder was: in one step, as
    # the kernel does it (emptying the folder first would race the rewrite of its marker).
    other = cloud.root / "other-disk"
    other.mkdir()
    (other / MARKER).write_bytes(json.dumps({"onitufs-remote": "0123456789abcdef"}).encode())
    plug_in(other, cloud.remotes["usb"])
    try:
        reason = outage_reason(cloud)
        assert "belongs to another onitufs remote (marker 0123456789abcdef" in reason, reason
        assert snapshot(cloud.mountpoint) == expected
    finally:
        subprocess.run(["umount", "-l", str(cloud.remotes["usb"])], check=True)


@pytest.mark.parametrize("how", ["one file", "everything but the marker"])
def test_deletes_a_person_makes_on_a_remote_still_travel(make_cloud: MakeCloud, how: str) -> None:
    cloud = make(make_cloud)
    cloud.mount()
    expected = write_files(cloud.mountpoint)
    cloud.wait_synced()
    usb = cloud.remotes["usb"]
    if how == "one file":
        (usb / "file0.txt").unlink()
        del expected["file0.txt"]
    else:  # rm -rf usb/*: the shell's * leaves dotfiles, and so the marker
        for entry in usb.iterdir():
            if entry.name != MARKER:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        expected = {}
    def travelled() -> bool:
        try:
            return snapshot(cloud.mountpoint) == expected
        except FileNotFoundError:  # deleted while the snapshot was read
            return False
    wait_for(travelled, what="the deletes to travel")
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name
    assert "treated as unavailable" not in cloud.log


@pytest.mark.parametrize("when", ["while mounted", "while unmounted"])
@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_marker_a_person_deletes_is_written_again(
        make_cloud: MakeCloud, request: pytest.FixtureRequest, kind: str, when: str) -> None:
    """The folder still holds what the remote held: it is the remote's, and its marker is
    written again, the mount's changes reaching it as before. (Deleted while unmounted,
    the driver starts in a folder without the marker onitufs knows the remote by.)"""
    cloud = make_with_usb(make_cloud, request, kind)
    cloud.mount()
    expected = write_files(cloud.mountpoint)
    cloud.wait_synced()
    usb = cloud.remotes["usb"]
    marker = (usb / MARKER).read_bytes()
    if when == "while unmounted":
        cloud.umount()
        (usb / MARKER).unlink()
        cloud.mount()
    else:
        (usb / MARKER).unlink()
    wait_for(lambda: (usb / MARKER).exists(), what="the marker written again")
    assert (usb / MARKER).read_bytes() == marker
    (cloud.mountpoint / "after.txt").write_bytes(b"after")
    expected["after.txt"] = ("file", b"after")
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name
    assert f"remote usb: its marker {MARKER} is gone (its folder put back from a backup " \
        "without it?): writing it again" in cloud.log
    assert "treated as unavailable" not in cloud.log


def test_the_markers_name_is_not_a_name_in_the_mount(make_cloud: MakeCloud) -> None:
    cloud = make(make_cloud)
    cloud.mount()
    with pytest.raises(PermissionError):
        (cloud.mountpoint / MARKER).write_bytes(b"mine")
    (cloud.mountpoint / "sub").mkdir()
    (cloud.mountpoint / "sub" / MARKER).write_bytes(b"fine below the root")
    (cloud.mountpoint / "x").write_bytes(b"x")
    with pytest.raises(PermissionError):
        (cloud.mountpoint / "x").rename(cloud.mountpoint / MARKER)
    assert MARKER not in os.listdir(cloud.mountpoint)
    cloud.wait_synced()
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "sub" / MARKER).read_bytes() == b"fine below the root"


def on_the_pins_looks(monkeypatch: pytest.MonkeyPatch,
                      *actions: tuple[Callable[[], object], Callable[[], object]]) -> list[int]:
    """Around each of the local driver's pin's next looks at its root, in turn, one of
    `actions` (what comes before it, what comes after it): the others' looks (the
    watcher's) are left alone. The list given back fills with the looks made."""
    real = local_listing.folder_id
    looked: list[int] = []

    def look(path: str) -> local_listing.FolderId:
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and not frame.f_code.co_filename.endswith(
                os.path.join("onitufs_local", "pin.py")):
            frame = frame.f_back
        action = actions[len(looked)] if frame is not None and len(looked) < len(actions) \
            else None
        if action is None:
            return real(path)
        looked.append(len(looked))
        action[0]()
        found = real(path)
        action[1]()
        return found

    monkeypatch.setattr(local_listing, "folder_id", look)
    return looked


def nothing() -> None:
    pass


@pytest.mark.parametrize("when", ["unplugged before the pin's look",
                                  "unplugged and plugged in again during the change"])
def test_the_local_driver_s_delete_passes_for_made_only_on_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A delete that finds nothing where the path leads (the empty mount point) must not
    pass for made while the disk keeps the file: the disk plugged in just after the pin
    looked at the mount point (the marker read then must be the mount point's, none; read
    by path, it was the disk's, and the mount point was pinned as the remote's folder,
    taking every later change made there too), or unplugged and plugged in again between
    the pin's look before the delete and its look after (the disk back as another mount,
    with the same marker)."""
    folder = tmp_path / "usb"
    folder.mkdir()
    table = {"driver": "local", "path": str(folder), "poll_interval": "1h"}
    with disk_at(tmp_path / "disk", folder) as files, \
            started(onitufs_local, table, FolderBackdoor(folder, tmp_path / "ballast"),
                    base_dir=tmp_path) as harness:
        (folder / MARKER).write_bytes(b'{"onitufs-remote": "usb"}')
        kept = harness.upload("kept", b"on the disk")

        def plug() -> None:
            plug_in(files, folder)

        def away() -> None:
            unplug(folder)

        if when == "unplugged before the pin's look":
            unplug(folder)
            looked = on_the_pins_looks(monkeypatch, (nothing, plug))
        else:
            looked = on_the_pins_looks(monkeypatch, (nothing, away), (plug, nothing))
        with pytest.raises(RemoteUnavailable):
            harness.call("delete_file", kept.copy())
        assert looked
        assert (files / "kept").read_bytes() == b"on the disk"
        monkeypatch.undo()
        unplug(folder)
        with pytest.raises(RemoteUnavailable):
            harness.transfer("new", b"new").start()
        assert list(folder.iterdir()) == [], "an upload landed in the mount point"


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_driver_started_while_the_disk_was_away_takes_nothing_there(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """Started while the disk was away (a remount), the driver pinned the empty mount point:
    it had no other folder. Once onitufs knows the remote's marker (Plug.marked), a change
    made where the path still leads there is the disk being away: a delete that finds
    nothing there must not pass for made while the disk keeps the file, and the marker's
    own upload must not go there either (the empty mount point would then read as the
    remote, emptied). The disk back, the delete goes there."""
    folder = tmp_path / "usb"
    folder.mkdir()
    driver, table = driver_at(request, kind, folder)
    with disk_at(tmp_path / "disk", folder) as files, \
            started(driver, table, FolderBackdoor(folder, tmp_path / "ballast"),
                    base_dir=tmp_path) as harness:
        (files / MARKER).write_bytes(b'{"onitufs-remote": "usb"}')
        kept = harness.upload("kept", b"on the disk")
        unplug(folder)
        harness.restart()
        harness.plug.marked = True  # as onitufs sets it, knowing the marker
        with pytest.raises(RemoteUnavailable, match="holds no marker"):
            harness.call("delete_file", kept)
        with pytest.raises(RemoteUnavailable):
            harness.transfer("new", b"new").start()
        with pytest.raises(RemoteUnavailable, match="holds no marker"):
            harness.transfer(MARKER, b'{"onitufs-remote": "usb"}').start()
        assert list(folder.iterdir()) == []
        plug_in(files, folder)
        harness.call("delete_file", kept)
        assert sorted(os.listdir(files)) == [MARKER]


def driver_at(request: pytest.FixtureRequest, kind: str,
              folder: Path) -> tuple[ModuleType, dict[str, object]]:
    """The local driver, or the ssh driver through the test's sshd, for `folder`."""
    if kind == "local":
        return onitufs_local, {"driver": "local", "path": str(folder), "poll_interval": "1h"}
    return onitufs_ssh, {**ssh_table(request.getfixturevalue("sshd"), folder),
                         "poll_interval": "1h"}


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_driver_makes_nothing_in_the_folder_an_unplugged_disk_leaves(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """The core reads the marker again before a change only when its last look is a second
    old: a change asked of the driver just after the disk went must not land in the empty
    mount point left behind (it would read as deleted once the disk is back), nor be taken
    for made. The disk plugged in again takes changes again; another disk does not. For the
    ssh driver, the disk is mounted on the server (here too)."""
    folder = tmp_path / "usb"
    folder.mkdir()
    driver, table = driver_at(request, kind, folder)
    # A move or a chmod finds nothing to change where the path leads.
    not_there = FileNotFoundError if kind == "local" else DriverError
    with disk_at(tmp_path / "disk", folder) as files, \
            started(driver, table, FolderBackdoor(folder, tmp_path / "ballast"),
                    base_dir=tmp_path) as harness:
        (folder / MARKER).write_bytes(b'{"onitufs-remote": "usb"}')
        kept = harness.upload("kept", b"on the disk")
        harness.call("make_dir", Metadata(path="photos", kind="dir", mode=0o755))
        cut_short = harness.transfer("half", b"half")
        cut_short.start()
        unplug(folder)
        # What makes an entry, a delete and an abort (which find nothing there) are the
        # remote being away.
        changes: list[tuple[str, Callable[[], object], type[Exception]]] = [
            ("an upload", lambda: harness.transfer("new", b"new").start(), RemoteUnavailable),
            ("a folder", lambda: harness.call("make_dir", Metadata(path="music", kind="dir",
                                                                   mode=0o755)),
             RemoteUnavailable),
            ("a link", lambda: harness.call("make_symlink", Metadata(path="link",
                                                                     kind="symlink", target="x")),
             RemoteUnavailable),
            ("a delete", lambda: harness.call("delete_file", kept.copy()), RemoteUnavailable),
            ("an abort", cut_short.abort, RemoteUnavailable),
            ("a move", lambda: harness.call("move_file", kept.copy(), kept.copy(path="moved")),
             not_there),
            ("a chmod", lambda: harness.call("set_attrs", kept.copy(mode=0o600)), not_there),
        ]
        for what, change, failure in changes:
            with pytest.raises(failure):
                change()
            assert list(folder.iterdir()) == [], f"{what} left something in the mount point"
        plug_in(files, folder)
        harness.upload("new", b"after the disk came back")
        cut_short.abort()
        assert sorted(os.listdir(files)) == [MARKER, "kept", "new", "photos"]
        assert (files / "new").read_bytes() == b"after the disk came back"
        assert (files / "kept").read_bytes() == b"on the disk"
        unplug(folder)
        other = tmp_path / "other"
        other.mkdir()
        (other / MARKER).write_bytes(b'{"onitufs-remote": "another"}')
        plug_in(other, folder)
        with pytest.raises(RemoteUnavailable, match="no longer"):
            harness.transfer("third", b"not here").start()
        assert sorted(os.listdir(other)) == [MARKER]
        unplug(folder)
