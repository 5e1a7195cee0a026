"""Renames that never lose a file (onitufs.renames), with renameat2 and without it (the
way they go on a disk or kernel that lacks it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onitufs import renames
from onitufs.renames import exchange, rename_noreplace


def make(path: Path, kind: str) -> None:
    if kind == "file":
        path.write_bytes(b"source")
    elif kind == "symlink":
        path.symlink_to("nowhere")
    else:
        path.mkdir()
        (path / "inside").write_bytes(b"source")


def describe(path: Path) -> tuple[str, ...]:
    """What a path is and holds, to tell whether a rename touched it."""
    if path.is_symlink():
        return ("symlink", os.readlink(path))
    if path.is_dir():
        return ("folder", *sorted(item.name for item in path.iterdir()))
    return ("file", path.read_bytes().decode())


@pytest.fixture(params=["renameat2", "link or check"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "renameat2":
        monkeypatch.setattr(renames, "_renameat2", None)
    return str(request.param)


@pytest.mark.parametrize("kind", ["file", "symlink", "folder"])
def test_a_free_name_is_taken(tmp_path: Path, way: str, kind: str) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    make(source, kind)
    before = describe(source)
    rename_noreplace(str(source), str(target))
    assert not os.path.lexists(source)
    assert describe(target) == before


@pytest.mark.parametrize("taken_by", ["file", "empty folder"])
@pytest.mark.parametrize("kind", ["file", "symlink", "folder"])
def test_a_taken_name_is_left_as_it_is(tmp_path: Path, way: str, kind: str,
                                       taken_by: str) -> None:
    """os.rename would replace a file with a file and a folder with an empty folder."""
    source, target = tmp_path / "source", tmp_path / "target"
    make(source, kind)
    if taken_by == "file":
        target.write_bytes(b"theirs")
    else:
        target.mkdir()
    before = describe(source), describe(target)
    with pytest.raises(FileExistsError):
        rename_noreplace(str(source), str(target))
    assert (describe(source), describe(target)) == before


def test_other_errors_name_the_paths(tmp_path: Path, way: str) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        rename_noreplace(str(tmp_path / "missing"), str(tmp_path / "target"))
    assert "missing" in str(caught.value)


def test_exchange_swaps_two_names(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make(first, "file")
    make(second, "folder")
    assert exchange(str(first), str(second))
    assert (describe(first), describe(second)) == (("folder", "inside"), ("file", "source"))


def test_exchange_says_where_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renames, "_renameat2", None)
    first, second = tmp_path / "first", tmp_path / "second"
    make(first, "file")
    make(second, "symlink")
    assert not exchange(str(first), str(second))
    assert (describe(first), describe(second)) == (("file", "source"), ("symlink", "nowhere"))
