"""What the remotes hold is what the mount holds: modes travel exactly, zero included.

The daemon runs under the usual umask 022, which must change no mode a
remote receives: not a folder's (mkdir applies the umask, and on Linux
leaves out setgid), not a file's.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

FOLDER_MODES = (0o775, 0o777, 0o1777, 0o700, 0o2755, 0o750)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The daemon inherits the umask of whoever mounts: the usual one, 022."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode_of(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def modes_everywhere(cloud: Cloud, relative: str, mode: int) -> bool:
    return all(mode_of(place / relative) == mode
               for place in [cloud.mountpoint, *cloud.remotes.values()])


def describe(cloud: Cloud, relative: str) -> dict[str, str]:
    places = {"mount": cloud.mountpoint, **cloud.remotes}
    return {name: oct(mode) if (mode := mode_of(place / relative)) is not None else "missing"
            for name, place in places.items()}


def wait_mode(cloud: Cloud, relative: str, mode: int) -> None:
    try:
        wait_for(lambda: modes_everywhere(cloud, relative, mode), what=f"{relative} as {mode:o}")
    except AssertionError:
        raise AssertionError(f"{relative}: want {mode:o}, have {describe(cloud, relative)}") \
            from None


def test_folder_and_file_modes_reach_every_remote_exactly(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()
    mnt = cloud.mountpoint
    for mode in FOLDER_MODES:
        subprocess.run(["mkdir", "-m", f"{mode:04o}", mnt / f"d{mode:04o}"], check=True)
    for mode in (0o600, 0o755, 0o640):
        (mnt / f"f{mode:04o}").write_bytes(b"content")
        (mnt / f"f{mode:04o}").chmod(mode)
    cloud.wait_synced()
    for mode in FOLDER_MODES:
        wait_mode(cloud, f"d{mode:04o}", mode)
    for mode in (0o600, 0o755, 0o640):
        wait_mode(cloud, f"f{mode:04o}", mode)

    # later changes of mode travel too, without an upload
    (mnt / "d0775").chmod(0o1750)
    (mnt / "d0700").chmod(0o755)
    (mnt / "f0600").chmod(0o604)
    cloud.wait_synced()
    wait_mode(cloud, "d0775", 0o1750)
    wait_mode(cloud, "d0700", 0o755)
    wait_mode(cloud, "f0600", 0o604)
    cloud.umount()


def test_a_mode_of_zero_made_on_a_remote_stays_zero(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()
    a = cloud.remotes["a"]
    (a / "locked").mkdir()
    (a / "locked").chmod(0)
    (a / "secret.txt").write_bytes(b"nobody reads this")
    (a / "secret.txt").chmod(0)
    wait_mode(cloud, "locked", 0)
    wait_mode(cloud, "secret.txt", 0)
    cloud.wait_synced()
    assert (cloud.remotes["b"] / "secret.txt").read_bytes() == b"nobody reads this"
    cloud.umount()
    cloud.mount()  # and so it stays
    assert mode_of(cloud.mountpoint / "locked") == 0
    assert mode_of(cloud.mountpoint / "secret.txt") == 0
    cloud.umount()


def test_folder_modes_reach_an_ssh_server_exactly(make_ssh_cloud: MakeSshCloud,
                                                  sshd: Sshd) -> None:
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)})
    cloud.mount()
    mnt = cloud.mountpoint
    for mode in (0o777, 0o1777, 0o700, 0o775):
        subprocess.run(["mkdir", "-m", f"{mode:04o}", mnt / f"d{mode:04o}"], check=True)
    (mnt / "locked").mkdir()
    (mnt / "locked").chmod(0)
    cloud.wait_synced()
    for mode in (0o777, 0o1777, 0o700, 0o775):
        wait_mode(cloud, f"d{mode:04o}", mode)
    wait_mode(cloud, "locked", 0)
    cloud.umount()


def test_a_chmod_made_where_no_change_time_tells_it_travels(make_ssh_cloud: MakeSshCloud,
                                                            sshd: Sshd) -> None:
    """A folder's chmod on a local remote (its change time moves with every name made in
    it), with a rename too, a file's and a folder's on an SSH server (SFTP gives no change
    time): the mount and the other remotes follow, and nothing is uploaded again. A later
    chmod in the mount goes back there, and one made there right after it travels again."""
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)})
    a, s = cloud.remotes["a"], cloud.remotes["s"]
    (a / "da").mkdir()
    (s / "ds").mkdir()
    (s / "ds" / "inside").write_bytes(b"in a folder")
    (s / "fs").write_bytes(b"on the server")
    cloud.mount()
    wait_mode(cloud, "da", 0o755)
    wait_mode(cloud, "ds/inside", 0o644)
    wait_mode(cloud, "fs", 0o644)
    (a / "da").chmod(0o700)
    (s / "ds").chmod(0o750)
    (s / "fs").chmod(0o600)
    wait_mode(cloud, "da", 0o700)
    wait_mode(cloud, "ds", 0o750)
    wait_mode(cloud, "fs", 0o600)
    cloud.umount()  # (so that the next listing finds both at once)
    (a / "da").chmod(0o750)  # and with a rename, which travels as one
    (a / "da").rename(a / "moved")
    cloud.mount()
    wait_mode(cloud, "moved", 0o750)
    (cloud.mountpoint / "ds").chmod(0o755)
    (cloud.mountpoint / "fs").chmod(0o640)
    (cloud.mountpoint / "moved").chmod(0o700)
    wait_mode(cloud, "ds", 0o755)
    wait_mode(cloud, "fs", 0o640)
    wait_mode(cloud, "moved", 0o700)
    # Made there right after onitufs set theirs, before a listing found those: another
    # machine's chmod all the same (set_attrs read back what it left).
    (s / "ds").chmod(0o711)
    (s / "fs").chmod(0o400)
    (a / "moved").chmod(0o751)
    wait_mode(cloud, "ds", 0o711)
    wait_mode(cloud, "fs", 0o400)
    wait_mode(cloud, "moved", 0o751)
    cloud.umount()
    assert cloud.log.count("remote a: start_upload fs") == 1, "uploaded again"
    assert (a / "fs").read_bytes() == b"on the server"


def test_a_chmod_there_right_after_onitufs_set_one_travels(make_cloud: MakeCloud) -> None:
    """Another machine's chmod on a remote, made right after onitufs set the mount's there
    and before a listing found that (on a watched folder: in the same burst of events), is
    one made there: the mount and the other remote follow. (A folder's: no change time
    tells it; a file's: its change time does.)"""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    a, mnt = cloud.remotes["a"], cloud.mountpoint
    cloud.mount()
    (mnt / "d").mkdir()
    (mnt / "f").write_bytes(b"a file")
    wait_mode(cloud, "d", 0o755)
    wait_mode(cloud, "f", 0o644)
    for name, here, there in (("d", 0o700, 0o751), ("d", 0o750, 0o711), ("f", 0o600, 0o640)):
        (mnt / name).chmod(here)
        wait_for(lambda: mode_of(a / name) == here, what=f"{name} set on a",  # noqa: B023
                 interval=0.002)
        cloud.wait_synced()  # (set and recorded: a chmod within the setting is not told)
        (a / name).chmod(there)
        wait_mode(cloud, name, there)
    cloud.umount()
    assert cloud.log.count("remote a: start_upload f") == 1, "uploaded again"


def test_a_chmod_there_right_after_onitufs_put_a_copy_there_travels(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """The same right after onitufs made a folder or uploaded a file there (what it left
    was read back): on a watched local folder, and on an SSH server (no change times)."""
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)})
    a, s, mnt = cloud.remotes["a"], cloud.remotes["s"], cloud.mountpoint
    cloud.mount()
    (mnt / "d").mkdir(mode=0o750)
    (mnt / "f").write_bytes(b"a file")
    wait_for(lambda: (a / "d").is_dir() and (s / "d").is_dir() and (s / "f").exists(),
             what="the copies", interval=0.002)
    cloud.wait_synced()  # (made and recorded)
    (a / "d").chmod(0o711)
    (s / "f").chmod(0o600)
    wait_mode(cloud, "d", 0o711)
    wait_mode(cloud, "f", 0o600)
    cloud.umount()


def test_a_chmod_in_the_mount_waiting_to_go_wins_over_one_there(make_cloud: MakeCloud) -> None:
    """Where no change time orders them, the mount's chmod made since the remote's
    listing last found the folder is the one kept: it is set there again."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")  # (an unmount sends all)
    for remote in cloud.remotes.values():
        (remote / "d").mkdir()
    cloud.mount()
    wait_for(lambda: (cloud.mountpoint / "d").is_dir(), what="the folder in the mount")
    (cloud.mountpoint / "d").chmod(0o700)
    (cloud.remotes["a"] / "d").chmod(0o750)
    time.sleep(1.5)  # for a's listing of it (a watched folder's: at once)
    assert mode_of(cloud.mountpoint / "d") == 0o700
    cloud.umount()
    for place in cloud.remotes.values():
        assert mode_of(place / "d") == 0o700, describe(cloud, "d")
