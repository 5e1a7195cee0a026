"""A rename that never replaces what is at the new name.

A check that a name is free, then os.rename, replaces a file another program made
there in between. Linux's renameat2(RENAME_NOREPLACE) checks and renames in one step;
Python's os does not offer it, so it is called from the C library. Where the disk or the
kernel lacks it (some network disks), a file is linked at the new name (a link never
replaces either) and unlinked at the old; a folder is renamed after a check, since a
rename replaces a folder only where that folder is empty.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

AT_FDCWD = -100
RENAME_NOREPLACE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28 and later
if _renameat2 is not None:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint)
    _renameat2.restype = ctypes.c_int


def rename_noreplace(source: str, target: str) -> None:
    """Rename source to target; FileExistsError if target is taken, whatever took it."""
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target),
                      RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), source, None, target)
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
