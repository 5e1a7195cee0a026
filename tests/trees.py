"""Where a test's other machine works, and what each copy holds: a folder changed in
place (the mount's, or a remote's), a folder a sync tool writes in, or a Dropbox account
through the fake's own side."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from onitufs.plug import MARKER, TEMP_SUFFIX
from onitufs.testing.dropbox_api import ApiFailure, FakeDropbox

from .conftest import snapshot


class Tree:
    """A folder changed in place: the mount's, or a remote's."""

    keeps_modes = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, content: bytes) -> None:
        (self.root / name).parent.mkdir(exist_ok=True)
        (self.root / name).write_bytes(content)

    def append(self, name: str, extra: bytes) -> None:
        with open(self.root / name, "ab") as file:
            file.write(extra)

    def delete(self, name: str) -> None:
        """A file (FileNotFoundError if there is none)."""
        (self.root / name).unlink()

    def rename(self, old: str, new: str) -> None:
        """A file, over whatever file is at `new` (FileNotFoundError if `old` is gone)."""
        (self.root / new).parent.mkdir(exist_ok=True)
        os.rename(self.root / old, self.root / new)

    def make_folder(self, name: str) -> None:
        (self.root / name).mkdir(parents=True)

    def remove_folder(self, name: str) -> None:
        shutil.rmtree(self.root / name)

    def chmod(self, name: str, mode: int) -> None:
        os.chmod(self.root / name, mode)

    def snapshot(self, errors: bool = False) -> dict[str, tuple[str, bytes]]:
        return snapshot(self.root, errors)

    def modes(self) -> dict[str, int]:
        """The permission bits of every file and folder (onitufs's own left out)."""
        return {str(path.relative_to(self.root)): stat.S_IMODE(path.lstat().st_mode)
                for path in self.root.rglob("*") if not path.is_symlink()
                and not path.name.endswith(TEMP_SUFFIX) and path.name != MARKER}


class SyncedFolder(Tree):
    """A folder a sync tool writes in: each file to a temporary one renamed over the name."""

    def write(self, name: str, content: bytes) -> None:
        temp = self.root / f"{name}.part"
        temp.parent.mkdir(exist_ok=True)
        temp.write_bytes(content)
        os.rename(temp, self.root / name)


class DropboxAccount(Tree):
    """The Dropbox folder /Cloud as another client sees it: uploads that replace whole files,
    moves that refuse to land on a file, deletes that take a folder with what it holds."""

    keeps_modes = False

    def __init__(self, fake: FakeDropbox) -> None:
        super().__init__(Path("/Cloud"))
        self.fake = fake

    def at(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, content: bytes) -> None:
        self.fake.write(self.at(name), content)

    def append(self, name: str, extra: bytes) -> None:
        self.write(name, self.fake.read(self.at(name)) + extra)

    def delete(self, name: str) -> None:
        self.fake.delete(self.at(name))

    def rename(self, old: str, new: str) -> None:
        self.fake.metadata(self.at(old))  # FileNotFoundError before `new` goes
        while True:
            with contextlib.suppress(FileNotFoundError):
                self.fake.delete(self.at(new))
            try:
                self.fake.move(self.at(old), self.at(new))
                return
            except ApiFailure:
                continue  # the mount's upload put a file at `new` again meanwhile

    def make_folder(self, name: str) -> None:
        self.fake.mkdir(self.at(name))

    def remove_folder(self, name: str) -> None:
        self.fake.delete(self.at(name))

    def chmod(self, name: str, mode: int) -> None:
        raise AssertionError("Dropbox keeps no permission bits")

    def snapshot(self, errors: bool = False) -> dict[str, tuple[str, bytes]]:
        prefix = f"{self.root}/"
        return {path[len(prefix):]: ("dir", b"") if data is None else ("file", data)
                for path, data in self.fake.tree().items()
                if path.startswith(prefix) and not path.endswith(TEMP_SUFFIX)
                and path != prefix + MARKER}

    def modes(self) -> dict[str, int]:
        return {}
