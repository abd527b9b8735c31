"""What ``--version`` reports about this build."""

from __future__ import annotations

import ctypes
import ctypes.util
import pathlib
import subprocess

_HERE = pathlib.Path(__file__).resolve().parent


def commit() -> str:
    """The git commit this code came from: recorded at build time, or read
    from the checkout when running from one."""
    try:
        from ._commit import COMMIT  # written by setup.py at build time

        return COMMIT
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["git", "-C", str(_HERE), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def libseccomp_version() -> str:
    name = ctypes.util.find_library("seccomp")
    if not name:
        return "none"
    try:
        lib = ctypes.CDLL(name)
        lib.seccomp_version.restype = ctypes.c_void_p
        ver = ctypes.cast(lib.seccomp_version(), ctypes.POINTER(ctypes.c_uint * 3)).contents
    except (OSError, AttributeError):
        return "none"
    return f"{ver[0]}.{ver[1]}.{ver[2]}"
