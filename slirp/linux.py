"""Thin ctypes wrappers for the Linux calls Python 3.11's ``os`` lacks.

setns(2), unshare(2), prctl(2), mount(2), umount2(2), pivot_root(2),
mount_setattr(2) and capget(2)/capset(2) (os.setns/os.unshare arrived in
3.12; the others are not in ``os`` at all).  Each raises OSError with errno
set, like the ``os`` functions do.  libc is loaded at import time so that
nothing needs to be opened after a sandbox has pivoted the root away.
"""

from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# mount(2) flags (<linux/mount.h>)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

# mount_setattr(2) (Linux 5.12)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
# Syscalls numbered from 424 on have the same number on every architecture
# but alpha; mount_setattr is one of them.
SYS_MOUNT_SETATTR = 442

# capget/capset (<linux/capability.h>)
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_NET_BIND_SERVICE = 10

# The C library the interpreter itself runs on (no ldconfig subprocess, any libc).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.pivot_root.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
_libc.syscall.restype = ctypes.c_long


class CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


class MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


_libc.capget.argtypes = (ctypes.POINTER(CapHeader), ctypes.POINTER(CapData * 2))
_libc.capset.argtypes = (ctypes.POINTER(CapHeader), ctypes.POINTER(CapData * 2))


def _check(rc: int, filename: str | None = None) -> int:
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), filename)
    return rc


def _path(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


def die_with_parent(sig: int) -> None:
    """PR_SET_PDEATHSIG: the kernel sends ``sig`` to us when our parent dies."""
    prctl(PR_SET_PDEATHSIG, sig)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_path(source), _path(target), _path(fstype), flags, _path(data)), target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_path(target), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.pivot_root(_path(new_root), _path(put_old)), new_root)


def mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int = 0, propagation: int = 0) -> None:
    """mount_setattr(2) on ``path`` (relative to the cwd); ENOSYS before Linux 5.12."""
    if platform.machine() == "alpha":  # pragma: no cover - its numbers are offset
        raise OSError(38, os.strerror(38))
    attr = MountAttr(attr_set, attr_clr, propagation, 0)
    rc = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(_path(path)),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(rc, path)


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability masks."""
    hdr = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), ctypes.byref(data)))
    return tuple(d0 | d1 << 32 for d0, d1 in zip(_fields(data[0]), _fields(data[1])))  # type: ignore[return-value]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability masks (64-bit masks, version 3 ABI)."""
    hdr = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)))


def _fields(d: CapData) -> tuple[int, int, int]:
    return (d.effective, d.permitted, d.inheritable)
