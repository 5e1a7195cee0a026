"""A mount namespace of a test's own, for mount(8) and for a journal socket.

mount(8) clears PATH before it runs mount.fuse3, whose shell then finds `onitufs` only
in the standard folders, such as /usr/local/bin where `make install` puts it. In the
namespace /usr/local/bin holds this checkout's onitufs alone, and /run is an empty tmpfs
(for mount(8)'s own records, and for a journal socket a test listens on); the host's
folders stay as they are. The test reaches what is mounted in the namespace through
/proc/PID/root, and every process left in the namespace is killed at the end, which
takes its mounts away with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from .conftest import wait_for


class Namespace:
    def __init__(self, folder: Path) -> None:
        bin_dir = folder / "usr-local-bin"
        bin_dir.mkdir()
        (bin_dir / "onitufs").symlink_to(Path(sys.executable).parent / "onitufs")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                        "sleep", "infinity"])
        self.ns = ours = os.readlink("/proc/self/ns/mnt")
        try:
            # Until unshare has made the namespace, nsenter would enter the host's.
            wait_for(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != ours,
                     what="the mount namespace")
            self.ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            self.run("mount", "--bind", bin_dir, "/usr/local/bin")
            self.run("mount", "-t", "tmpfs", "tmpfs", "/run")
        except BaseException:
            self.close()
            raise

    def command(self, *args: str | Path) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *map(str, args)]

    def run(self, *args: str | Path, check: bool = True,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                timeout=120, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}): "
                                 f"{result.stderr}")
        return result

    def path(self, path: str | Path) -> Path:
        """`path` as processes in the namespace see it, mounts included."""
        return Path(f"/proc/{self.holder.pid}/root{path}")

    def mount_line(self, mountpoint: Path) -> list[str] | None:
        """The /proc/PID/mountinfo fields of what is mounted at `mountpoint`, if anything."""
        found = None
        with open(f"/proc/{self.holder.pid}/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                if fields[4] == str(mountpoint):
                    found = fields
        return found

    def processes(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):  # gone meanwhile, or no process
                if entry.name.isdigit() and os.readlink(entry / "ns/mnt") == self.ns:
                    found.append(int(entry.name))
        return found

    def close(self) -> None:
        """Kill every process in the namespace (never the host's: until it exists, only
        the holder); the namespace and its mounts go with the last."""
        made = self.ns != os.readlink("/proc/self/ns/mnt")
        for pid in self.processes() if made else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.holder.kill()
        self.holder.wait()
        if made:
            wait_for(lambda: not self.processes(), what="the namespace's processes to die")

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
