"""Large transfers, run by `make slow` only: 100 MiB written through an annex remote
(`rclone gitannex`), then read back cold by a mount with a cache of its own."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .annex_programs import on_path
from .conftest import MakeCloud, wait_for
from .test_annex import rclone_table, with_remotes

SIZE = 100 * 2**20


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100_mib_through_rclone_and_back_cold(make_cloud: MakeCloud, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    on_path(tmp_path / "bin", monkeypatch)
    store = tmp_path / "store"
    content = os.urandom(SIZE)
    one = with_remotes(make_cloud({"a": "rw"}), rclone_table(store), local=False)
    one.mount()
    (one.mountpoint / "big.bin").write_bytes(content)
    one.wait_synced(600)
    one.umount()

    # a second machine, its cache empty: every byte comes from the annex remote
    two = with_remotes(make_cloud({"a": "rw"}), rclone_table(store), local=False)
    two.mount()
    big = two.mountpoint / "big.bin"
    wait_for(big.exists, 60, "the file from the remote's listing")
    assert two.status()["cache_bytes"] < SIZE
    digest = hashlib.sha256()
    with big.open("rb") as reader:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(content).digest()
    two.umount()
