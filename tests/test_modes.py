"""What the remotes hold is what the mount holds: modes travel exactly, zero included.

The daemon runs under the usual umask 022, which must change no mode a
remote receives: not a folder's (mkdir applies the umask, and on Linux
leaves out setgid), not a file's.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.sshd")

from .conftest import Cloud, MakeCloud, wait_for  # noqa: E402  (after the rewrite hook)
from .sshd import MakeSshCloud, Sshd, SshRemote  # noqa: E402

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
