"""The annex driver's three-way merge of two machines' trees: no side is ever dropped."""

from __future__ import annotations

from onitufs_annex.manifest import Entry, Manifest, Tree, merge


def file(key: str, mtime: int, id: str = "f") -> Entry:
    return Entry(kind="file", id=id, mode=0o644, mtime_ns=mtime, key=key, size=1)


def folder(id: str = "d") -> Entry:
    return Entry(kind="dir", id=id, mode=0o755)


def test_changes_on_either_side_are_both_kept() -> None:
    base: Tree = {"a": file("A", 1), "b": file("B", 1)}
    ours = {"a": file("A2", 2), "b": file("B", 1), "new-here": file("N", 2, "n")}
    theirs = {"a": file("A", 1), "new-there": file("T", 2, "t")}  # b deleted there
    assert merge(base, ours, theirs, "here", "there") == {
        "a": file("A2", 2), "new-here": file("N", 2, "n"), "new-there": file("T", 2, "t")}


def test_an_edit_wins_over_a_delete() -> None:
    base: Tree = {"a": file("A", 1)}
    assert merge(base, {}, {"a": file("A2", 2)}, "here", "there") == {"a": file("A2", 2)}
    assert merge(base, {"a": file("A2", 2)}, {}, "here", "there") == {"a": file("A2", 2)}


def test_two_edits_keep_the_later_under_the_name_and_the_other_beside_it() -> None:
    base: Tree = {"d": folder(), "d/x.txt": file("X", 1)}
    ours = {"d": folder(), "d/x.txt": file("OURS", 5)}
    theirs = {"d": folder(), "d/x.txt": file("THEIRS", 9)}
    merged = merge(base, ours, theirs, "laptop", "desk")
    assert merged["d/x.txt"] == file("THEIRS", 9)
    aside = [path for path in merged if path.startswith("d/x (conflict from laptop ")]
    assert len(aside) == 1 and aside[0].endswith(").txt")
    assert merged[aside[0]].key == "OURS" and merged[aside[0]].id != "f"
    assert len(merged) == 3


def test_the_same_content_written_on_both_sides_is_one_file() -> None:
    merged = merge({}, {"x": file("SAME", 3, "1")}, {"x": file("SAME", 4, "2")}, "a", "b")
    assert merged == {"x": file("SAME", 4, "2")}


def test_a_file_added_in_a_folder_deleted_on_the_other_side_keeps_its_folder() -> None:
    base: Tree = {"d": folder()}
    merged = merge(base, {"d": folder(), "d/new": file("N", 1)}, {}, "a", "b")
    assert merged == {"d": folder(), "d/new": file("N", 1)}
    merged = merge({}, {"e/f/new": file("N", 1)}, {}, "a", "b")
    assert merged["e"].kind == merged["e/f"].kind == "dir"


def test_a_rename_there_and_an_edit_here_keep_both() -> None:
    base: Tree = {"old": file("A", 1)}
    merged = merge(base, {"old": file("A2", 2)}, {"new": file("A", 1)}, "a", "b")
    assert merged == {"old": file("A2", 2), "new": file("A", 1)}


def test_manifests_round_trip_any_name() -> None:
    entries: Tree = {"caf\udce9 two  spaces": file("K", 7),
                     "link": Entry(kind="symlink", id="l", mode=0o777, target="../\udcff"),
                     "d": Entry(kind="dir", id="d", mode=0, xattrs={"user.x": b"\0\xff"})}
    manifest = Manifest(entries, ["m1", "m0"], "host")
    assert Manifest.decode(manifest.encode()) == manifest
