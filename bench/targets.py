"""The filesystems under test: set up, torn down, and cleaned up after any failure.

A target's root is the folder the workloads run in. `stop` is the normal
end (for onitufs it is `onitufs umount`, timed, since that is when the
remotes receive what is still queued); `cleanup` is safe to call at any
time, more than once, and always leaves nothing mounted and nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .workloads import BIG_NAME, MIB, SMALL, SMALL_DIR

GIB = 1024 * MIB
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # so the memfs process finds `bench`
REMOTES = ("a", "b", "c")
UPLOAD_DELAY = "2s"  # onitufs's, in the bench's configs


class TargetError(Exception):
    """A filesystem could not be set up or taken down."""


def mounted(path: Path) -> bool:
    """Whether `path` is a mount point, from the kernel's table (no stat on the mount)."""
    target = str(path)
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4]
            if _unescape(point) == target:
                return True
    return False


def _unescape(field: str) -> str:
    """Undo the octal escapes (\\040 for a space) of /proc/self/mountinfo."""
    if "\\" not in field:
        return field
    raw = field.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("\\") and i + 3 < len(raw) and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def lazy_unmount(path: Path) -> None:
    """The last resort: detach the mount now, whatever still uses it."""
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` ended (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


class Target:
    """One filesystem under test."""

    name = "?"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir

    def start(self) -> None:
        pass

    def describe(self) -> str:
        return str(self.root)

    def stop(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class Tmpfs(Target):
    """A plain folder on a tmpfs: the kernel alone, no FUSE."""

    name = "tmpfs"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)

    @staticmethod
    def find(needed: int) -> Path | None:
        """A writable tmpfs with room for `needed` bytes, /dev/shm first."""
        with open("/proc/self/mountinfo") as table:
            points = [_unescape(line.split()[4]) for line in table
                      if line.split(" - ", 1)[1].split()[0] == "tmpfs"]
        for point in sorted(points, key=lambda p: (p != "/dev/shm", p)):
            try:
                disk = os.statvfs(point)
            except OSError:
                continue
            if disk.f_bavail * disk.f_frsize >= needed and os.access(point, os.W_OK):
                return Path(point)
        return None

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class MemFS(Target):
    """The in-memory pyfuse3 baseline (bench/memfs.py), in its own process. With `keeps`,
    what it holds is written out as it stops and read back as it starts again."""

    name = "memfs"

    def __init__(self, workdir: Path, keeps: bool = False) -> None:
        super().__init__(workdir)
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir()
        self.root = self.mountpoint
        self.log = workdir / "memfs.log"
        self.state = ["--state", str(workdir / "memfs.state")] if keeps else []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.memfs", str(self.mountpoint), *self.state],
                cwd=PACKAGE_PARENT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not mounted(self.mountpoint):
            if self.process.poll() is not None:
                raise TargetError(f"memfs exited ({self.process.returncode}) before mounting: "
                                  f"{self.log.read_text().strip()[-500:]}")
            if time.monotonic() > deadline:
                raise TargetError(f"memfs did not mount within {MOUNT_TIMEOUT:.0f}s")
            time.sleep(0.02)

    def stop(self) -> None:
        result = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise TargetError(f"memfs: cannot unmount: {result.stderr.strip()}")
        if self.process is not None:
            try:
                self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise TargetError(f"memfs did not exit within {EXIT_TIMEOUT:.0f}s of its unmount"
                                  ) from None

    def cleanup(self) -> None:
        lazy_unmount(self.mountpoint)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Onitufs(Target):
    """onitufs with three local-directory remotes, all under one folder on disk."""

    name = "onitufs"

    def __init__(self, workdir: Path, cache_size: int, upload_delay: str) -> None:
        super().__init__(workdir)
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir()
        self.root = self.mountpoint
        self.cache = workdir / "cache"
        self.remotes = [workdir / name for name in REMOTES]
        for remote in self.remotes:
            remote.mkdir()
        self.config = workdir / "onitufs.toml"
        lines = ["[cache]", 'path = "cache"', f"size = {cache_size}", "",
                 "[sync]", f'upload_delay = "{upload_delay}"', ""]
        for name in REMOTES:
            lines += [f"[remotes.{name}]", 'driver = "local"', f'path = "{name}"', ""]
        self.config.write_text("\n".join(lines))
        self.pid: int | None = None
        self.flush_seconds: float | None = None
        self.flush_status = 0
        self.flush_stderr = ""

    def command(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "onitufs", *map(str, args)]

    def start(self) -> None:
        result = subprocess.run(self.command("mount", self.mountpoint, self.config),
                                capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise TargetError(f"onitufs mount failed ({result.returncode}): "
                              f"{result.stderr.strip()}")
        self.pid = int(self.status()["pid"])

    def describe(self) -> str:
        return f"{self.root} (cache and remotes {', '.join(REMOTES)} in {self.workdir})"

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(os.getxattr(self.mountpoint, "user.onitufs.status"))
        return status

    def queue(self) -> tuple[int, int]:
        """Changes queued and uploads in flight, over every remote."""
        remotes = self.status()["remotes"]
        return sum(r["pending"] for r in remotes), sum(r["in_flight"] for r in remotes)

    def settle(self, timeout: float = 600.0) -> float:
        """Wait until every remote is up to date; seconds waited."""
        start = time.monotonic()
        while self.queue() != (0, 0):
            if time.monotonic() - start > timeout:
                raise TargetError(f"onitufs: uploads not done after {timeout:.0f}s")
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self) -> None:
        """`onitufs umount`, timed: uploads everything still queued, then unmounts."""
        start = time.perf_counter()
        result = subprocess.run(self.command("umount", self.mountpoint), capture_output=True,
                                text=True, check=False, timeout=3600)
        self.flush_seconds = time.perf_counter() - start
        self.flush_status = result.returncode
        self.flush_stderr = result.stderr.strip()
        if result.returncode not in (0, 2) or mounted(self.mountpoint):
            raise TargetError(f"onitufs umount failed ({result.returncode}): {self.flush_stderr}")
        if self.pid is not None and not wait_gone(self.pid, EXIT_TIMEOUT):
            raise TargetError(f"the onitufs daemon (pid {self.pid}) did not exit after umount")

    def remote_contents(self, size_mib: int, files: int) -> list[str]:
        """What each remote is missing after the umount; empty when all hold everything."""
        problems = []
        for remote in self.remotes:
            big = remote / BIG_NAME
            size = big.stat().st_size if big.exists() else None
            if size != size_mib * MIB:
                problems.append(f"{remote.name}: {BIG_NAME} has {size} bytes, not {size_mib * MIB}")
            small = remote / SMALL_DIR
            sizes = [entry.stat().st_size for entry in os.scandir(small)] if small.is_dir() else []
            complete = sum(1 for size in sizes if size == SMALL)
            if complete != files:
                problems.append(f"{remote.name}: {complete} of {files} small files")
        return problems

    def log_problems(self, limit: int = 5) -> list[str]:
        """The daemon's warnings and errors (the first few), from its log in the cache."""
        log = self.cache / "onitufs.log"
        if not log.exists():
            return []
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])

    def daemons(self) -> list[int]:
        """Processes whose command line names this config: our daemon, even one we lost track of."""
        found = []
        config = os.fsencode(self.config)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if config in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found

    def cleanup(self) -> None:
        lazy_unmount(self.mountpoint)
        for pid in self.daemons():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, EXIT_TIMEOUT)


def make_workdir(parent: Path | None, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def remove_workdir(path: Path, mountpoints: list[Path]) -> str | None:
    """Remove a temporary folder unless something is still mounted in it; why not, if not."""
    still = [point for point in mountpoints if mounted(point)]
    if still:
        return f"{path} kept: {', '.join(map(str, still))} still mounted"
    shutil.rmtree(path, ignore_errors=True)
    return None


def clean_up(targets: list[Target], workdirs: list[tuple[Path, list[Path]]]) -> bool:
    """Clean up every target, then remove the temporary folders (folder, mount points inside
    it) that nothing is mounted in; Ctrl-C waits meanwhile. Whether all went well."""
    well = True
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
    try:
        for target in targets:
            try:
                target.cleanup()
            except Exception as error:  # go on: the other targets need cleaning up too
                print(f"bench: cleaning up {target.name}: {type(error).__name__}: {error}",
                      file=sys.stderr, flush=True)
                well = False
        for folder, points in workdirs:
            kept = remove_workdir(folder, points)
            if kept:
                print(f"bench: {kept}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return well


def json_path(option: Path | None, suite: str) -> Path:
    """Where a suite writes its figures: the --json option, or a new temporary file."""
    if option is not None:
        return option
    fd, path = tempfile.mkstemp(prefix=f"onitufs-bench-{suite}-", suffix=".json")
    os.close(fd)
    return Path(path)
