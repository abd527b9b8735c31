"""Thin ctypes wrappers for the Linux calls Python 3.11's ``os`` lacks.

setns(2), unshare(2) and prctl(2) (os.setns/os.unshare arrived in 3.12).
Each raises OSError with errno set, like the ``os`` functions do.  libc is
loaded at import time so that nothing needs to be opened after a sandbox
has pivoted the root away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(rc: int) -> int:
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


def die_with_parent(sig: int) -> None:
    """PR_SET_PDEATHSIG: the kernel sends ``sig`` to us when our parent dies."""
    prctl(PR_SET_PDEATHSIG, sig)
