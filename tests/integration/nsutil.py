"""Helpers for namespace tests: target namespaces, slirpnet processes, commands inside.

Everything started here is ended by PID by the fixture that started it.
Traffic goes only to loopback or to namespaces the test made.
"""

from __future__ import annotations

import os
import pathlib
import select
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
SLIRPNET = [sys.executable, "-m", "slirp"]
READY_TIMEOUT_S = 20


class Netns:
    """A process in a new user + network namespace (``unshare -rn``): the target."""

    def __init__(self, extra: tuple[str, ...] = ()):
        self.proc = subprocess.Popen(
            ["unshare", "-rn", *extra, "sleep", "3600"], stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.pid = self.proc.pid
        # Wait until sleep runs inside the new namespaces.
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("unshare -rn did not start")
            time.sleep(0.01)

    def enter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]

    def run(self, *argv: str, timeout: float = 30, check: bool = False, input: bytes | None = None):
        return subprocess.run(self.enter(*argv), capture_output=True, timeout=timeout, check=check, input=input)

    def sh(self, script: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter("sh", "-c", script), capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        stop(self.proc)


class Slirpnet:
    """A slirpnet process; ``start()`` waits for its ready byte."""

    def __init__(self, args: list[str], tmp: pathlib.Path, pass_fds: tuple[int, ...] = (), ready: bool = True):
        self.out_path = tmp / f"slirpnet-{time.monotonic_ns()}.out"
        self.err_path = tmp / f"slirpnet-{time.monotonic_ns()}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.ready_fd = None
        fds = list(pass_fds)
        argv = list(args)
        if ready:
            r, w = os.pipe()
            self.ready_fd = r
            fds.append(w)
            argv = ["-r", str(w), *argv]
        self.proc = subprocess.Popen(
            [*SLIRPNET, *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            pass_fds=fds,
            env=ENV,
            start_new_session=True,
        )
        if ready:
            os.close(w)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bytes:
        """The bytes read from the ready fd up to EOF (b"1" when all is well)."""
        got = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ready byte; stderr: {self.stderr()}")
            r, _, _ = select.select([self.ready_fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.ready_fd, 16)
            if not chunk:
                os.close(self.ready_fd)
                self.ready_fd = None
                return got
            got += chunk

    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        stop(self.proc)
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        self._out.close()
        self._err.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End ``proc`` by PID (TERM, then KILL) and reap it."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        proc.wait(timeout=5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a /proc entry: treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
