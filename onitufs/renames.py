"""Renames that never lose what another program put at the new name meanwhile.

A look at a name, then os.rename, replaces whatever another program put there in
between. Linux's renameat2 does the two in one step: RENAME_NOREPLACE fails where the
name is taken, and RENAME_EXCHANGE swaps two names, so what was replaced is still there
to check. Python's os does not offer it, so it is called from the C library. Where the
disk or the kernel lacks it (some network disks), a file is linked at a new name (a link
never replaces either) and unlinked at the old; a folder is renamed after a look, since
a rename replaces a folder only where that folder is empty; and nothing is exchanged.

Used by the local driver on its folders and by git-annex-remote-onitufs in the mount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UNSUPPORTED = (errno.EINVAL, errno.ENOSYS)

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28 and later
if _renameat2 is not None:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint)
    _renameat2.restype = ctypes.c_int


def renameat2(source: str, target: str, flags: int) -> bool:
    """renameat2 with flags; False where the disk or the kernel does not support them."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), source, None, target)


def rename_noreplace(source: str, target: str) -> None:
    """Rename source to target; FileExistsError if target is taken, whatever took it."""
    if renameat2(source, target, RENAME_NOREPLACE):
        return
    if not stat.S_ISDIR(os.lstat(source).st_mode):
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as error:  # FileExistsError goes up; a disk without hard links (FAT)
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        else:
            os.unlink(source)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), source, None, target)
    os.rename(source, target)


def exchange(source: str, target: str) -> bool:
    """Swap the two names in one step; False where the disk or the kernel cannot (then
    nothing happened)."""
    return renameat2(source, target, RENAME_EXCHANGE)
