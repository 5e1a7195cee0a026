"""A FUSE daemon that hangs on purpose: mounted as an onitufs mount of a config, it takes
every request for a file's attributes, its xattrs or the file system's and never answers
(a daemon deadlocked).

    python -m tests.hung_daemon MOUNTPOINT CONFIG
"""

from __future__ import annotations

import sys

import pyfuse3
import trio


class Hung(pyfuse3.Operations):
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        await trio.sleep_forever()
        raise AssertionError("never answered")

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("never answered")

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        await trio.sleep_forever()
        raise AssertionError("never answered")


def main() -> None:
    mountpoint, config = sys.argv[1:]
    pyfuse3.init(Hung(), mountpoint, {f"fsname={config}", "subtype=onitufs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
