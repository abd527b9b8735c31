"""What ``--version`` reports about this build."""

from __future__ import annotations

import pathlib
import subprocess

from .seccomp import library_version

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
    """The libseccomp that --enable-seccomp loads (slirp/seccomp.py), or ``none``."""
    return library_version()
