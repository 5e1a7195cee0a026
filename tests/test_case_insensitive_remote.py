"""A remote on a disk that ignores case (exFAT, as most USB disks are), local or behind
an SSH server.

Such a disk answers to `a.txt` with the `A.txt` it holds and cannot hold both. A name it
takes for another's is stored on a local one under its escape (behind an SSH server it
stays off, saying so), and nothing of the other is moved aside, replaced or taken for
deleted; a rename in case only reaches it; nothing a notice names in another case comes
back into the mount. A name it refuses (`at 10:30`) is stored there under its escape and
reads back as itself, on it and on a copy of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from onitufs_local.disknames import Disk

from onitufs.plug import TEMP_SUFFIX
from onitufs.storednames import escape

from .conftest import Cloud, everywhere, run, snapshot, wait_for
from .exfat import exfat_disk
from .sshd import SshRemote

pytest_plugins = ["tests.sshd"]

CLASH = "which it takes for the same name (it ignores case)"


def two_remotes(request: pytest.FixtureRequest, **settings: str) -> Cloud:
    """A cloud of two remotes: a, a local folder, and b, kept by the driver request.param
    names: the local driver, or the SSH driver through a server on this machine."""
    if request.param == "local":
        cloud: Cloud = request.getfixturevalue("make_cloud")({"a": "rw", "b": "rw"},
                                                             **settings)
        return cloud
    server = request.getfixturevalue("sshd")
    cloud = request.getfixturevalue("make_ssh_cloud")({"a": "rw"}, {"b": SshRemote(server)},
                                                      **settings)
    return cloud


@pytest.fixture(params=["local", "ssh"])
def on_exfat(request: pytest.FixtureRequest) -> Iterator[Callable[..., Cloud]]:
    """Makes two_remotes(), b's folder on exFAT."""
    with contextlib.ExitStack() as stack:
        def make(size: int = 32 << 20, **settings: str) -> Cloud:
            cloud = two_remotes(request, **settings)
            stack.enter_context(exfat_disk(cloud, cloud.remotes["b"], size))
            return cloud

        yield make


@pytest.fixture(params=["local", "ssh"])
def on_ext4(request: pytest.FixtureRequest) -> Callable[..., Cloud]:
    """Makes two_remotes(), b's folder on a disk that refuses no name."""
    return lambda **settings: two_remotes(request, **settings)


@pytest.mark.parametrize("on_exfat", ["ssh"], indirect=True)
def test_names_the_server_takes_for_one_another_stay_off_it(
        on_exfat: Callable[..., Cloud]) -> None:
    """The SSH driver keeps the second of two such names off the server: finding the
    escape of any name there would cost a round trip per name."""
    cloud = on_exfat(stall="3s")
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "A.txt").write_bytes(b"upper")
    (mnt / "docs").mkdir()
    (mnt / "docs" / "one").write_bytes(b"lower folder")
    wait_for(lambda: everywhere(cloud, "A.txt", b"upper")
             and everywhere(cloud, "docs/one", b"lower folder"), what="the first names")
    (mnt / "a.txt").write_bytes(b"lower")
    (mnt / "Docs").mkdir()
    (mnt / "Docs" / "one").write_bytes(b"upper folder")
    wait_for(lambda: (cloud.remotes["a"] / "Docs" / "one").exists()
             and (cloud.remotes["a"] / "a.txt").exists(), what="remote a")
    wait_for(lambda: "'A.txt', " + CLASH in cloud.log and "'docs', " + CLASH in cloud.log,
             what="the clashes said")
    every = {"A.txt": ("file", b"upper"), "a.txt": ("file", b"lower"),
             "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
             "Docs": ("dir", b""), "Docs/one": ("file", b"upper folder")}
    first = {"A.txt": ("file", b"upper"), "docs": ("dir", b""),
             "docs/one": ("file", b"lower folder")}
    assert snapshot(usb) == first
    stopped = run("umount", mnt, check=False)
    assert stopped.returncode == 2 and CLASH in stopped.stderr, stopped

    # A whole listing of each remote, the disk's included, takes nothing for deleted.
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == every
    assert snapshot(cloud.remotes["a"]) == every
    assert snapshot(usb) == first

    # Once one of each pair is renamed, the disk takes it.
    (mnt / "a.txt").rename(mnt / "a2.txt")
    (mnt / "Docs").rename(mnt / "Docs2")
    cloud.umount()
    renamed = {"A.txt": ("file", b"upper"), "a2.txt": ("file", b"lower"),
               "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
               "Docs2": ("dir", b""), "Docs2/one": ("file", b"upper folder")}
    assert snapshot(usb) == renamed
    assert snapshot(cloud.remotes["a"]) == renamed


@pytest.mark.parametrize("on_exfat", ["local"], indirect=True)
def test_names_the_disk_takes_for_one_another_are_both_stored_there(
        on_exfat: Callable[..., Cloud]) -> None:
    """A local disk that ignores case gets the second of two such names under its escape
    (files, folders, a rename onto one): every one reaches it and reads back as itself,
    through a remount, a change made on the disk, a rename, a delete; nothing says it
    clashes, and nothing of the first is moved or taken for the second."""
    cloud = on_exfat()
    usb, other = cloud.remotes["b"], cloud.remotes["a"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "A.txt").write_bytes(b"upper")
    (mnt / "docs").mkdir()
    (mnt / "docs" / "one").write_bytes(b"lower folder")
    (mnt / "x").write_bytes(b"renamed onto a twin")
    cloud.wait_synced()
    (mnt / "a.txt").write_bytes(b"lower")
    (mnt / "Docs").mkdir()
    (mnt / "Docs" / "one").write_bytes(b"upper folder")
    (mnt / "x").rename(mnt / "DOCS")
    cloud.umount()
    every = {"A.txt": ("file", b"upper"), "a.txt": ("file", b"lower"),
             "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
             "Docs": ("dir", b""), "Docs/one": ("file", b"upper folder"),
             "DOCS": ("file", b"renamed onto a twin")}
    stored = {"A.txt": ("file", b"upper"), escape("a.txt"): ("file", b"lower"),
              "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
              escape("Docs"): ("dir", b""), f"{escape('Docs')}/one": ("file", b"upper folder"),
              escape("DOCS"): ("file", b"renamed onto a twin")}
    assert snapshot(usb) == stored
    assert snapshot(other) == every
    assert CLASH not in cloud.log

    # A whole listing of each remote, the disk's included, reads the same names back.
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == every
    (usb / escape("Docs") / "one").write_bytes(b"changed on the disk")
    wait_for(lambda: (other / "Docs" / "one").read_bytes() == b"changed on the disk",
             what="the disk's change on remote a")
    (mnt / "a.txt").write_bytes(b"lower, changed")
    (mnt / "a.txt").rename(mnt / "a.TXT")  # still the twin of A.txt
    shutil.rmtree(mnt / "Docs")
    cloud.umount()
    after = {"A.txt": ("file", b"upper"), "a.TXT": ("file", b"lower, changed"),
             "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
             "DOCS": ("file", b"renamed onto a twin")}
    assert snapshot(usb) == {
        "A.txt": ("file", b"upper"), escape("a.TXT"): ("file", b"lower, changed"),
        "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
        escape("DOCS"): ("file", b"renamed onto a twin")}
    assert snapshot(other) == after

    # With its twin gone, an escaped name stays where it is, and reads back.
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == after
    (mnt / "A.txt").unlink()
    (mnt / "a.TXT").write_bytes(b"alone")
    cloud.umount()
    assert snapshot(usb) == {
        escape("a.TXT"): ("file", b"alone"), "docs": ("dir", b""),
        "docs/one": ("file", b"lower folder"), escape("DOCS"): ("file", b"renamed onto a twin")}
    assert snapshot(other) == {k: v for k, v in after.items() if k != "A.txt"} | {
        "a.TXT": ("file", b"alone")}


def test_a_rename_in_case_only_reaches_the_disk(on_exfat: Callable[..., Cloud]) -> None:
    # A local disk is watched, and listed whole only at the start: what its notices say
    # counts.
    cloud = on_exfat(poll_interval="10m", upload_delay="0.5s")
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "Word.txt").write_bytes(b"word")
    (mnt / "Dir").mkdir()
    (mnt / "Dir" / "f").write_bytes(b"in the folder")
    # Not looked at on the disk by name: exfat-fuse answers the old name's lookup
    # after the rename only where the kernel keeps no entry of it.
    cloud.wait_synced()
    (mnt / "Word.txt").rename(mnt / "word.txt")
    (mnt / "Dir").rename(mnt / "dir")
    renamed = {"word.txt": ("file", b"word"), "dir": ("dir", b""),
               "dir/f": ("file", b"in the folder")}
    wait_for(lambda: snapshot(usb) == renamed, what="the disk to take the new names")
    # The disk's change notices name the old names too, which it still answers to: a
    # file written after the renames is on every remote once they are all taken in.
    (mnt / "later").write_bytes(b"later")
    wait_for(lambda: everywhere(cloud, "later", b"later"), what="a later file")
    renamed["later"] = ("file", b"later")
    assert snapshot(cloud.remotes["a"]) == renamed
    assert snapshot(mnt) == renamed
    cloud.umount()
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == renamed
    cloud.umount()
    assert snapshot(usb) == renamed
    assert snapshot(cloud.remotes["a"]) == renamed


def test_a_name_the_disk_refuses_is_stored_under_its_escape(
        on_exfat: Callable[..., Cloud], request: pytest.FixtureRequest) -> None:
    """exFAT refuses " * : < > ? \\ | in a name: such a file or folder is stored there
    under its escape, and reads back under its own name, through a remount, a rename, a
    change made on the disk, and a file made there under an escape. A name that reads as
    such an escape is escaped again, on every disk; one that reads as the escape of
    another name (`kept~onitufs`, of `kept`) on a local disk, which reads back every
    escape; any other name as it is."""
    kept = "kept~onitufs~onitufs" if request.node.callspec.params["on_exfat"] == "local" \
        else "kept~onitufs"
    cloud = on_exfat()
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "what?.txt").write_bytes(b"question")
    (mnt / "at 10:30").mkdir()
    (mnt / "at 10:30" / "a|b").write_bytes(b"notes")
    (mnt / "fine.txt").write_bytes(b"fine")
    (mnt / "odd%3A~onitufs").write_bytes(b"odd")
    (mnt / "kept~onitufs").write_bytes(b"kept")
    (mnt / "Other~onitufs").write_bytes(b"other")
    cloud.umount()
    every = {"what?.txt": ("file", b"question"), "at 10:30": ("dir", b""),
             "at 10:30/a|b": ("file", b"notes"), "fine.txt": ("file", b"fine"),
             "odd%3A~onitufs": ("file", b"odd"), "kept~onitufs": ("file", b"kept"),
             "Other~onitufs": ("file", b"other")}
    stored = {"what%3F.txt~onitufs": ("file", b"question"),
              "at 10%3A30~onitufs": ("dir", b""),
              "at 10%3A30~onitufs/a%7Cb~onitufs": ("file", b"notes"),
              "fine.txt": ("file", b"fine"), "odd%253%41~onitufs~onitufs": ("file", b"odd"),
              kept: ("file", b"kept"), "Other~onitufs": ("file", b"other")}
    assert snapshot(usb) == stored
    assert snapshot(cloud.remotes["a"]) == {
        **{name: got for name, got in every.items()
           if name not in ("odd%3A~onitufs", "kept~onitufs")},
        "odd%253%41~onitufs~onitufs": ("file", b"odd"),
        "kept~onitufs~onitufs": ("file", b"kept")}
    assert "the remote's disk refuses" not in cloud.log

    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == every
    # Changed on the disk, and made there, by a program that knows the escapes.
    (usb / "at 10%3A30~onitufs" / "a%7Cb~onitufs").write_bytes(b"notes, changed")
    (usb / "made%3A.txt~onitufs").write_bytes(b"made there")
    other = cloud.remotes["a"]
    wait_for(lambda: (other / "made:.txt").exists()
             and (other / "at 10:30" / "a|b").read_bytes() == b"notes, changed",
             what="the disk's changes on remote a")
    (mnt / "what?.txt").rename(mnt / "what.txt")
    (mnt / "at 10:30").rename(mnt / "at 10.30")
    (mnt / "fine.txt").rename(mnt / "fine<.txt")
    cloud.umount()
    renamed = {"what.txt": ("file", b"question"), "at 10.30": ("dir", b""),
               "at 10.30/a|b": ("file", b"notes, changed"),
               "fine<.txt": ("file", b"fine"), "odd%3A~onitufs": ("file", b"odd"),
               "kept~onitufs": ("file", b"kept"), "Other~onitufs": ("file", b"other"),
               "made:.txt": ("file", b"made there")}
    assert snapshot(usb) == {
        "what.txt": ("file", b"question"), "at 10.30": ("dir", b""),
        "at 10.30/a%7Cb~onitufs": ("file", b"notes, changed"),
        "fine%3C.txt~onitufs": ("file", b"fine"), "odd%253%41~onitufs~onitufs": ("file", b"odd"),
        kept: ("file", b"kept"), "Other~onitufs": ("file", b"other"),
        "made%3A.txt~onitufs": ("file", b"made there")}
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == renamed
    cloud.umount()


def test_an_upload_under_an_escape_cut_by_a_crash_resumes(
        on_exfat: Callable[..., Cloud]) -> None:
    """The escaped name's upload stops part way (the disk fills), the daemon is killed,
    and the next mount resumes it from the saved offset, into the same hidden file."""
    resumes_after_a_crash(on_exfat(size=64 << 20, block_size="256 KiB"), "big: one.bin")


@pytest.mark.parametrize("on_exfat", ["local"], indirect=True)
def test_an_upload_beside_its_twin_cut_by_a_crash_resumes(
        on_exfat: Callable[..., Cloud]) -> None:
    """The same for a name the disk takes for another's, which goes under its escape only
    once complete: its hidden file is named after the name itself."""
    resumes_after_a_crash(on_exfat(size=64 << 20, block_size="256 KiB"), "BIG.bin",
                          twin="big.bin")


def resumes_after_a_crash(cloud: Cloud, name: str, twin: str | None = None) -> None:
    usb = cloud.remotes["b"]
    (usb / f"pad{TEMP_SUFFIX}").write_bytes(bytes(40 << 20))  # hidden from onitufs
    cloud.mount()
    if twin is not None:
        (cloud.mountpoint / twin).write_bytes(b"the twin")
        wait_for(lambda: everywhere(cloud, twin, b"the twin"), what="the twin")
    # Larger than the room left (24 MiB) by more than what an upload may hold unwritten
    # (the ssh driver's 16 MiB): the full disk cuts it at an upload_chunk, whose offset is
    # saved, never at end_upload, whose failure drops what was sent.
    content = os.urandom(48 << 20)
    (cloud.mountpoint / name).write_bytes(content)
    hidden = f".{name if twin else escape(name)}."

    def part_way() -> bool:
        parts = [p for p in usb.iterdir() if p.name.startswith(hidden)]
        return bool(parts) and parts[0].stat().st_size > 8 << 20
    wait_for(part_way, timeout=60, what="the upload part way")
    wait_for(lambda: "No space left on device" in cloud.log, what="the disk to fill")
    cloud.kill9()
    (usb / f"pad{TEMP_SUFFIX}").unlink()
    cloud.mount()
    cloud.wait_synced(timeout=120)
    after = cloud.log.rpartition("INFO onitufs.daemon: mounted")[2]
    offsets = [int(m) for m in re.findall(rf"resuming {re.escape(name)} at byte (\d+)", after)]
    assert offsets and offsets[0] > 8 << 20, cloud.log
    assert (usb / escape(name)).read_bytes() == content
    if twin is not None:
        assert (usb / twin).read_bytes() == b"the twin"
    assert not [p for p in usb.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    cloud.umount()


def test_a_disk_plugged_in_where_another_was_is_asked_again(tmp_path: Path) -> None:
    """Whether the disk refuses such names is learnt once per disk: the empty folder under
    an unplugged USB disk takes them, the disk then plugged in there does not."""
    folder = tmp_path / "usb"
    folder.mkdir()
    disk = Disk(str(folder))
    assert disk.path("at 10:30") == "at 10:30" and not disk.refuses()
    with exfat_disk(None, folder):
        assert disk.path("at 10:30") == "at 10%3A30~onitufs" and disk.refuses()
        assert not list(folder.iterdir())  # the probe is gone
    assert disk.path("at 10:30") == "at 10:30" and not disk.refuses()


def test_a_copy_on_another_disk_finds_the_escape_of_any_name(tmp_path: Path) -> None:
    """On a disk that keeps case (a copy of a USB disk's folder), a name stored under its
    escape is found there and listed as itself; where the name itself is there too (made
    after the copy), that one is the mount's entry and the escape is left out."""
    disk = Disk(str(tmp_path))
    (tmp_path / escape("Docs")).mkdir()
    (tmp_path / escape("Docs") / escape("README")).write_bytes(b"escaped")
    assert disk.path("Docs/README") == f"{escape('Docs')}/{escape('README')}"
    assert disk.shown("", "", escape("Docs")) == "Docs"
    assert disk.path("Docs/other") == f"{escape('Docs')}/other"
    assert disk.path("docs") == "docs"
    (tmp_path / escape("Docs") / "README").write_bytes(b"plain")
    assert disk.path("Docs/README") == f"{escape('Docs')}/README"
    assert disk.shown("Docs", escape("Docs"), escape("README")) is None
    assert disk.shown("Docs", escape("Docs"), "README") == "Docs/README"


def test_a_copy_of_such_a_disk_on_another_reads_the_same(
        on_ext4: Callable[..., Cloud]) -> None:
    """A copy of the disk's folder on a disk that refuses no name (cp -a of a USB disk):
    its escapes read as the names they stand for, and what onitufs changes of them is
    changed where they are; a new name goes as it is. An escape beside the name it stands
    for (both copied there) is left alone: the plain one is the mount's file."""
    cloud = on_ext4()
    copy = cloud.remotes["b"]
    (copy / "at 10%3A30~onitufs").mkdir()
    (copy / "at 10%3A30~onitufs" / "a%7Cb~onitufs").write_bytes(b"notes")
    (copy / "what%3F.txt~onitufs").write_bytes(b"question")
    (copy / "twin:.txt").write_bytes(b"plain")
    (copy / "twin%3A.txt~onitufs").write_bytes(b"escaped")
    copied = snapshot(copy)
    cloud.mount()
    cloud.wait_listed()
    cloud.wait_synced()
    shown = {"at 10:30": ("dir", b""), "at 10:30/a|b": ("file", b"notes"),
             "what?.txt": ("file", b"question"), "twin:.txt": ("file", b"plain")}
    assert snapshot(cloud.mountpoint) == shown
    assert snapshot(cloud.remotes["a"]) == shown
    assert snapshot(copy) == copied
    (cloud.mountpoint / "what?.txt").write_bytes(b"answered")
    (cloud.mountpoint / "at 10:30" / "a|b").unlink()
    (cloud.mountpoint / "new?.txt").write_bytes(b"new")
    cloud.umount()
    assert snapshot(copy) == {
        "at 10%3A30~onitufs": ("dir", b""), "what%3F.txt~onitufs": ("file", b"answered"),
        "twin:.txt": ("file", b"plain"), "twin%3A.txt~onitufs": ("file", b"escaped"),
        "new?.txt": ("file", b"new")}


def test_links_stay_off_a_disk_that_holds_none(on_exfat: Callable[..., Cloud]) -> None:
    """exFAT holds no symbolic links: they stay in the mount and on the other remotes, said
    once, and the disk is up to date without them."""
    cloud = on_exfat()
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "f").write_bytes(b"file")
    (mnt / "link").symlink_to("f")
    (mnt / "d").mkdir()
    (mnt / "d" / "up").symlink_to("../f")
    cloud.wait_synced()
    assert "holds no symbolic links" in cloud.log
    cloud.umount()
    every = {"f": ("file", b"file"), "link": ("symlink", b"f"), "d": ("dir", b""),
             "d/up": ("symlink", b"../f")}
    assert snapshot(cloud.remotes["a"]) == every
    assert snapshot(usb) == {"f": ("file", b"file"), "d": ("dir", b"")}
    assert not list(usb.rglob("*probe*")), "a probe is left on the disk"
    cloud.mount()
    cloud.wait_listed()
    (mnt / "later").write_bytes(b"later")
    wait_for(lambda: everywhere(cloud, "later", b"later"), what="a later file")
    assert snapshot(mnt) == {**every, "later": ("file", b"later")}
    cloud.umount()


def test_the_modes_a_disk_keeps_of_its_own_do_not_spread(on_exfat: Callable[..., Cloud]) -> None:
    """exFAT shows every file and folder as 0777 and takes a chmod without keeping it: a
    mode found there is not taken for one made there, at first or after a chmod in the
    mount (where no change time tells a chmod there, a change of what listings find is
    one)."""
    cloud = on_exfat()
    usb, a, mnt = cloud.remotes["b"], cloud.remotes["a"], cloud.mountpoint
    cloud.mount()
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"file")
    cloud.wait_synced()
    wait_for(lambda: (usb / "d" / "f").exists(), what="the file on the disk")

    def modes_kept(expected: dict[str, int]) -> None:
        time.sleep(1.5)  # for the disk's listings to find them
        for place in (mnt, a):
            assert {path: stat.S_IMODE(os.lstat(place / path).st_mode)
                    for path in expected} == expected, place
        assert stat.S_IMODE(os.lstat(usb / "d" / "f").st_mode) == 0o777

    modes_kept({"d": 0o755, "d/f": 0o644})
    (mnt / "d").chmod(0o700)
    (mnt / "d" / "f").chmod(0o600)
    cloud.wait_synced()
    modes_kept({"d": 0o700, "d/f": 0o600})
    cloud.umount()
