"""Files that live briefly on a remote leave nothing behind on the others.

An upload that cannot finish (its source vanished, its file or folder was
deleted meanwhile) removes its temp file, and a folder that holds nothing but
onitufs's own temp files is deleted all the same, but for a version another
machine left at an aside name, which comes back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import onitufs_local
import pytest
import trio
import trio.testing

from onitufs.config import Options, RemoteConfig
from onitufs.plug import ASIDE, ASIDE_OWNER, TEMP_SUFFIX, Metadata, Plug, upload_path
from onitufs.remotes import Remote

from .conftest import Cloud, MakeCloud, everywhere, snapshot, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]


def leftovers(root: Path) -> list[str]:
    """The temp files of uploads left anywhere below root."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.name.endswith(TEMP_SUFFIX))


def all_agree(cloud: Cloud) -> bool:
    try:  # a file the mount still lists may be gone from the remote that had it
        want = snapshot(cloud.mountpoint)
        return all(snapshot(remote) == want for remote in cloud.remotes.values())
    except OSError:
        return False


def churn(folder: Path, seconds: float) -> None:
    """Create small files and folders (with files inside) in a remote's folder and delete
    each a tenth of a second later, for `seconds`."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        (folder / f"brief-{n}.txt").write_bytes(os.urandom(100 + n))
        (folder / f"dir-{n}" / "sub").mkdir(parents=True)
        (folder / f"dir-{n}" / "inside.txt").write_bytes(os.urandom(200 + n))
        (folder / f"dir-{n}" / "sub" / "deeper.bin").write_bytes(os.urandom(300 + n))
        time.sleep(0.1)
        (folder / f"brief-{n}.txt").unlink()
        shutil.rmtree(folder / f"dir-{n}")


def test_files_that_live_briefly_on_a_remote_leave_nothing_behind(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(poll_interval="0.05s", upload_delay="0s")
    cloud.mount()
    (cloud.mountpoint / "kept.txt").write_bytes(b"stays")
    worker = threading.Thread(target=churn, args=(cloud.remotes["a"], 6.0))
    worker.start()
    worker.join()
    try:
        wait_for(lambda: all_agree(cloud), 30, "the remotes and the mount to agree")
    except AssertionError:
        places = {"mount": cloud.mountpoint, **cloud.remotes}
        raise AssertionError({name: sorted(snapshot(place)) + leftovers(place)
                              for name, place in places.items()}) from None
    cloud.wait_synced(30)
    with contextlib.suppress(AssertionError):  # a moment more for late reports of a
        wait_for(lambda: not any(leftovers(r) for r in cloud.remotes.values()), 3)
    result = cloud.umount()
    assert result.returncode == 0
    for name, remote in cloud.remotes.items():
        assert leftovers(remote) == [], f"temp files left on {name}"
        assert snapshot(remote) == {"kept.txt": ("file", b"stays")}, name
    cloud.mount()
    assert snapshot(cloud.mountpoint) == {"kept.txt": ("file", b"stays")}
    assert cloud.umount().returncode == 0


def mounted_with_folder_x(make_cloud: MakeCloud) -> Cloud:
    """A mounted cloud whose remotes all hold folder/x."""
    cloud = make_cloud()
    cloud.mount()
    (cloud.mountpoint / "folder").mkdir()
    (cloud.mountpoint / "folder" / "x").write_bytes(b"data")
    cloud.wait_synced()
    wait_for(lambda: all((r / "folder" / "x").exists() for r in cloud.remotes.values()),
             what="the folder on every remote")
    return cloud


def test_a_folder_holding_only_a_leftover_temp_file_is_deleted(make_cloud: MakeCloud) -> None:
    cloud = mounted_with_folder_x(make_cloud)
    stray = cloud.remotes["b"] / "folder" / f".x.something{TEMP_SUFFIX}"
    stray.write_bytes(b"half an upload")
    (cloud.mountpoint / "folder" / "x").unlink()
    (cloud.mountpoint / "folder").rmdir()
    cloud.wait_synced()
    wait_for(lambda: not any((r / "folder").exists() for r in cloud.remotes.values()),
             what="the folder gone from every remote")
    assert cloud.umount().returncode == 0



def test_a_folder_delete_brings_back_a_version_another_machine_left_aside(
        make_cloud: MakeCloud) -> None:
    """On remote b, another machine's delete of folder/x was cut short right after its
    move aside, and what it moved was a version saved there in between: x is gone from
    b's listing (a delete, taken in), that version hidden at the other machine's aside
    name. The folder deleted in the mount then is not removed from b with that file: the
    version comes back as folder/x, into the mount and onto every remote."""
    cloud = mounted_with_folder_x(make_cloud)
    folder_b = cloud.remotes["b"] / "folder"
    (folder_b / f".x.deleting-0123456789ab-0badc0de{TEMP_SUFFIX}").write_bytes(b"theirs")
    (folder_b / "x").unlink()
    wait_for(lambda: not (cloud.mountpoint / "folder" / "x").exists(),
             what="b's delete of x taken in")
    (cloud.mountpoint / "folder").rmdir()
    wait_for(lambda: all((r / "folder" / "x").exists() for r in cloud.remotes.values())
             and (cloud.mountpoint / "folder" / "x").exists(),
             what="the version left aside back everywhere")
    cloud.wait_synced()
    assert (cloud.mountpoint / "folder" / "x").read_bytes() == b"theirs"
    for remote in cloud.remotes.values():
        assert (remote / "folder" / "x").read_bytes() == b"theirs", remote
    assert [leftovers(remote) for remote in cloud.remotes.values()] == [[], [], []]
    assert cloud.umount().returncode == 0

def local_driver(root: Path) -> Plug:
    """The local driver's handlers for a folder, without a mount (its poll never runs)."""
    plug = Plug("a", Options({"path": str(root)}, "remotes.a", root), None,  # type: ignore[arg-type]
                None)  # type: ignore[arg-type]
    plug.stop()
    onitufs_local.start(plug)
    return plug


def test_a_change_done_on_a_remote_but_not_yet_returned_counts_as_touched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing taken while a change onitufs sent is under way may show it done before
    onitufs has noted it: then it must not read as the remote's own new file (it was taken
    into the mount, and the next listing that showed onitufs's delete left a ghost there)."""
    remote = Remote(RemoteConfig("a", "local", "rw", Options({}, "remotes.a", tmp_path)),
                    1, onitufs_local)
    plug = local_driver(tmp_path)
    remote.plug = plug
    remote.ready.set()
    remote.trusted.set()
    made = tmp_path / "made"
    # The handler waits on its thread until this thread blocks: a quick make_dir must not
    # return (and be noted) before the listing below begins.
    go = threading.Event()
    call = plug.call

    def held(handler: str, *args: Any) -> Any:
        go.wait()
        return call(handler, *args)

    monkeypatch.setattr(plug, "call", held)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote.call, "make_dir", Metadata(path="made", kind="dir"))
            await trio.testing.wait_all_tasks_blocked()  # the call is on its worker thread
            go.set()
            while not made.is_dir():  # blocking: the call cannot return meanwhile
                time.sleep(0.001)
            listed = time.monotonic()  # a listing begun now shows the folder
            assert remote.touched_since("made", listed)
            assert remote.touched_since("made/inside", listed)
            assert not remote.touched_since("other", listed)
        assert not remote.touched_since("made", time.monotonic())  # returned: the caller notes it

    trio.run(main)


def test_the_local_driver_deletes_a_folder_with_only_temp_files_and_nothing_else(
        tmp_path: Path) -> None:
    plug = local_driver(tmp_path)
    (tmp_path / "only-ours").mkdir()
    (tmp_path / "only-ours" / f".x.something{TEMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "only-ours" / f".y.other{TEMP_SUFFIX}").write_bytes(b"")
    plug.call("delete_file", Metadata(path="only-ours", kind="dir"))
    assert not (tmp_path / "only-ours").exists()

    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / f".x.something{TEMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "mixed" / "theirs.txt").write_bytes(b"a file of the user")
    with pytest.raises(OSError) as failed:
        plug.call("delete_file", Metadata(path="mixed", kind="dir"))
    assert failed.value.errno == errno.ENOTEMPTY
    assert (tmp_path / "mixed" / "theirs.txt").read_bytes() == b"a file of the user"

    # a folder named like a temp file is not one of ours
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / f"sub{TEMP_SUFFIX}").mkdir()
    with pytest.raises(OSError):
        plug.call("delete_file", Metadata(path="nested", kind="dir"))
    assert (tmp_path / "nested" / f"sub{TEMP_SUFFIX}").is_dir()


def test_the_local_driver_aborts_an_upload_whose_folder_was_renamed(tmp_path: Path) -> None:
    """The temp file went with its folder: abort finds it there, and closes the upload."""
    plug = local_driver(tmp_path)
    (tmp_path / "before").mkdir()
    md = Metadata(path="before/f.txt", size=4, extra={"upload": "cache-1-1"})
    plug.call("start_upload", md)
    plug.call("upload_chunk", md, 0, b"half")
    (tmp_path / "before").rename(tmp_path / "after")
    plug.call("abort_upload", md)
    assert leftovers(tmp_path) == []
    assert list((tmp_path / "after").iterdir()) == []
    # after a crash no upload is open: the temp file is found by its name
    crashed = Metadata(path="g.txt", extra={"upload": "cache-2-1"})
    (tmp_path / upload_path(crashed)).write_bytes(b"half")
    plug.call("abort_upload", crashed)
    assert leftovers(tmp_path) == []


def test_the_ssh_driver_deletes_a_folder_with_only_temp_files_and_nothing_else(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    # the server is listed once, at the mount: the files put there below stay unknown
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)}, poll_interval="1h")
    cloud.mount()
    mnt, server = cloud.mountpoint, cloud.remotes["s"]
    for name in ("only-ours", "mixed"):
        (mnt / name).mkdir()
        (mnt / name / "x").write_bytes(b"data")
    cloud.wait_synced()
    wait_for(lambda: (server / "mixed" / "x").exists(), what="the folders on the server")
    (server / "only-ours" / f".x.something{TEMP_SUFFIX}").write_bytes(b"half an upload")
    (server / "only-ours" / f".y.other{TEMP_SUFFIX}").write_bytes(b"")
    (server / "mixed" / f".x.something{TEMP_SUFFIX}").write_bytes(b"half an upload")
    (server / "mixed" / "theirs.txt").write_bytes(b"made on the server")
    for name in ("only-ours", "mixed"):
        (mnt / name / "x").unlink()
        (mnt / name).rmdir()
    wait_for(lambda: not (server / "only-ours").exists(), what="only-ours gone from the server")
    wait_for(lambda: not (server / "mixed" / "x").exists(), what="mixed/x gone from the server")
    # a file the folder holds that is not onitufs's keeps it, and the temp file, there
    wait_for(lambda: "remote s: delete_file mixed\n" in cloud.log, what="the delete of mixed")
    wait_for(lambda: "remote s: delete_file mixed: DriverError" in cloud.log,
             what="the delete to fail")
    assert (server / "mixed" / "theirs.txt").read_bytes() == b"made on the server"
    assert (server / "mixed" / f".x.something{TEMP_SUFFIX}").exists()
    (server / "mixed" / "theirs.txt").unlink()
    wait_for(lambda: not (server / "mixed").exists(), what="mixed gone once only ours is left")
    cloud.wait_synced()
    assert cloud.umount().returncode == 0


def test_a_remote_made_read_only_keeps_what_a_cut_delete_left_there(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """A version left at this mount's aside name on the server (a delete cut short after
    its move aside) stays there once the config makes the remote read-only: onitufs
    writes nothing on such a remote, its own leftovers included; rw again, it goes."""
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)}, poll_interval="0.2s")
    cloud.mount()
    cloud.umount()
    owner = (cloud.root / "cache" / "drivers" / "s" / ASIDE_OWNER).read_text().strip()
    server = cloud.remotes["s"]
    aside = server / f".x.txt.{ASIDE}0123456789ab-{owner}{TEMP_SUFFIX}"
    aside.write_bytes(b"a version moved aside")
    cloud.ssh["s"].mode = "r"
    cloud.write_config()
    cloud.mount()
    for walk in ("first", "second"):  # (the sweep follows each walk)
        (server / f"{walk}.txt").write_bytes(walk.encode())
        wait_for(lambda: (cloud.mountpoint / f"{walk}.txt").exists(),  # noqa: B023
                 what=f"the {walk} walk")
    assert aside.read_bytes() == b"a version moved aside"
    assert not (server / "x.txt").exists()
    cloud.umount()
    cloud.ssh["s"].mode = "rw"
    cloud.write_config()
    cloud.mount()
    wait_for(lambda: not aside.exists(), what="the leftover swept")
    # (a version whose tag is not the file's there goes back to its name, and from there to
    # the mount and the other remote: an unmount before the next walk leaves it queued)
    assert (server / "x.txt").read_bytes() == b"a version moved aside"
    wait_for(lambda: everywhere(cloud, "x.txt", b"a version moved aside"),
             what="the version back at its name everywhere")
    cloud.umount()
