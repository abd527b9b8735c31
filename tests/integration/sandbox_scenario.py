"""Sandbox scenarios that need the caller to be root of its own user + mount namespace.

Run by tests/integration/test_sandbox.py as
``unshare -rm --propagation shared python -m tests.integration.sandbox_scenario NAME TMPDIR``:
the unprivileged test user becomes root of a new user namespace with a new
mount namespace, where it may mount tmpfs and bind mounts that nobody else
sees.  Prints one JSON object of observations on stdout; the test asserts.
Everything started here is ended here, by PID.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from .nsutil import Slirpnet, stop


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=30)


def mount_points(pid: str = "self") -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split(" ")[4] for line in f]


def start_target() -> subprocess.Popen:
    """A process in a new network namespace owned by our user namespace."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "600"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("unshare -n did not start")
        time.sleep(0.01)
    return proc


def propagation(tmp: pathlib.Path) -> dict:
    """A tmpfs at /run/foo under an rshared /run (compat spec §7,
    test-slirp4netns-sandbox-no-unmount) must survive slirpnet's sandbox, and
    mounts made afterwards must not leak into the sandbox either."""
    sh("mount", "-t", "tmpfs", "runlike", "/run")
    sh("mount", "--make-rshared", "/run")
    os.mkdir("/run/foo")
    sh("mount", "-t", "tmpfs", "foo", "/run/foo")
    pathlib.Path("/run/foo/marker").write_text("still here\n")
    seen: dict = {"propagation_of_run": _propagation("/run")}
    target = start_target()
    slirp = Slirpnet(["--enable-sandbox", "-c", str(target.pid), "tap0"], tmp)
    try:
        seen["ready"] = slirp.wait_ready().decode()
        seen["foo_mounted_while_running"] = "/run/foo" in mount_points()
        seen["sandbox_sees_marker"] = _read(f"/proc/{slirp.pid}/root/run/foo/marker")
        os.mkdir("/run/bar")
        sh("mount", "-t", "tmpfs", "bar", "/run/bar")
        time.sleep(0.2)
        seen["bar_in_sandbox"] = "/run/bar" in mount_points(str(slirp.pid))
        stop(slirp.proc)
        seen["slirpnet_status"] = slirp.proc.returncode
        seen["foo_mounted_after_exit"] = "/run/foo" in mount_points()
        seen["marker_after_exit"] = _read("/run/foo/marker")
        seen["stderr"] = slirp.stderr()
    finally:
        slirp.close()
        stop(target)
    return seen


def etc_resolv_symlink(tmp: pathlib.Path) -> dict:
    """/etc/resolv.conf as a symlink to a file outside /etc and /run (here
    under /tmp, which the sandbox's own tmpfs covers before pivot_root)."""
    orig, new, dns = tmp / "etc-orig", tmp / "etc-new", tmp / "dns"
    for d in (orig, new, dns):
        d.mkdir()
    sh("mount", "--bind", "/etc", str(orig))
    for name in os.listdir(orig):
        if name != "resolv.conf":
            os.symlink(orig / name, new / name)
    (dns / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (dns / "other").write_text("not for the sandbox\n")
    os.symlink(dns / "resolv.conf", new / "resolv.conf")
    sh("mount", "--bind", str(new), "/etc")
    seen: dict = {"resolv_link": os.readlink("/etc/resolv.conf"), "dns_dir": str(dns)}
    target = start_target()
    slirp = Slirpnet(["--enable-sandbox", "--enable-seccomp", "-c", str(target.pid), "tap0"], tmp)
    try:
        seen["ready"] = slirp.wait_ready().decode()
        root = f"/proc/{slirp.pid}/root"
        seen["link_in_sandbox"] = os.readlink(f"{root}/etc/resolv.conf")
        # The real path, read through the sandbox's root (not through the link,
        # whose absolute target would be resolved against our own root).
        seen["content_in_sandbox"] = _read(f"{root}{dns}/resolv.conf")
        seen["dns_dir_in_sandbox"] = sorted(os.listdir(f"{root}{dns}"))
        seen["orig_in_sandbox"] = os.path.exists(f"{root}{orig}")
        seen["top_in_sandbox"] = sorted(os.listdir(root))
        seen["file_mount_in_sandbox"] = f"{dns}/resolv.conf" in mount_points(str(slirp.pid))
        seen["stderr"] = slirp.stderr()
    finally:
        slirp.close()
        stop(target)
    return seen


def _propagation(point: str) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == point:
                return " ".join(fields[6 : fields.index("-")])
    return ""


def _read(path: str) -> str | None:
    try:
        return pathlib.Path(path).read_text()
    except OSError as err:
        return f"error: {err.strerror}"


SCENARIOS = {"propagation": propagation, "etc_resolv_symlink": etc_resolv_symlink}

if __name__ == "__main__":
    name, tmpdir = sys.argv[1], pathlib.Path(sys.argv[2])
    print(json.dumps(SCENARIOS[name](tmpdir)))
