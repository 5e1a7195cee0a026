"""The SHA-256 of a whole file, learnt while the file is written from its first byte on.

cp, rsync, tar and editors write a file in order. Feeding each full block to
a running hash as the block cache stores it gives the file's checksum by the
time the file is closed, so its uploads need not hash the content again. Any
other order of writing leaves the checksum unknown, and the first upload
computes it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field


@dataclass
class _Stream:
    next_block: int = 0  # every block below this was fed, in order, as it is stored now
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)


class InOrderHashes:
    """Running hashes per inode. The block cache's worker thread feeds them while the
    event loop cuts and finishes them: `lock` orders the two."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}

    def stored(self, ino: int, blockno: int, block: bytes | bytearray, full: bool) -> None:
        """A block is being stored (hold `lock`). The next full one in order goes on the
        hash; one already on it, or one past the next, means the content is not written
        in order."""
        stream = self._streams.get(ino)
        if stream is None and blockno == 0 and full:
            stream = self._streams[ino] = _Stream()
        if stream is None or (blockno >= stream.next_block and not full):
            return  # a piece past the hashed blocks: the end of the file, or a block to come
        if blockno == stream.next_block:
            stream.hasher.update(block)
            stream.next_block += 1
        else:
            del self._streams[ino]

    def cut(self, ino: int, kept_whole: int) -> None:
        """The content was cut: only its first `kept_whole` blocks are unchanged."""
        with self.lock:
            stream = self._streams.get(ino)
            if stream is not None and stream.next_block > kept_whole:
                del self._streams[ino]

    def finish(self, ino: int, size: int, block_size: int, tail: bytes) -> bytes | None:
        """The SHA-256 of content of `size` bytes whose full blocks were fed in order and
        whose last, partial block is `tail`; None if it was not written so. Either way
        the inode's stream ends here."""
        with self.lock:
            stream = self._streams.pop(ino, None)
        if stream is None or stream.next_block != size // block_size:
            return None
        stream.hasher.update(tail)
        return stream.hasher.digest()
