"""Real clients start slirpnet as they would slirp4netns: RootlessKit and rootless Podman.

Issue 5 item 5, compat spec §11.  The clients are Debian's (tests/run installs
them): RootlessKit 1.1.0 with ``--net=slirp4netns --port-driver=slirp4netns``
and Podman 4.3.1 with ``network_cmd_path`` and ``--network slirp4netns``.
Each starts slirpnet through :func:`slirpnet_wrapper`, a script that records
its PID and argv, then ``exec``s ``python -m slirp`` — so the PID a client
holds (and kills) is slirpnet's, and the tests know which process to inspect.

Traffic goes only to servers these tests start on the host's loopback and to
servers inside the clients' namespaces; the containers run nothing else.
Every client run is bounded by a timeout (clients wait forever for the ready
byte), and every container, namespace and process a test starts is ended by
name or PID.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import pytest

from .nsutil import ENV, ROOT, SLIRPNET, pid_alive, spawn, stop
from .hostpeers import free_ports
from .test_api import can_bind

pytestmark = pytest.mark.clients

ROOTLESSKIT = shutil.which("rootlesskit")
ROOTLESSCTL = shutil.which("rootlessctl")
PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")
CLIENT_TIMEOUT_S = 60  # any one client command; they wait forever for a ready byte
CAP_NET_BIND_SERVICE = 1 << 10

needs_rootlesskit = pytest.mark.skipif(
    not (ROOTLESSKIT and ROOTLESSCTL and BUSYBOX), reason="rootlesskit or busybox is not installed (tests/run installs them)"
)
needs_podman = pytest.mark.skipif(
    not (PODMAN and BUSYBOX), reason="podman or busybox is not installed (tests/run installs them)"
)


# -- slirpnet as the clients start it ----------------------------------------------------------


class Wrapper:
    """An executable that clients take for slirp4netns.

    It appends ``PID ARGV`` to a log, then execs slirpnet: the venv's
    ``slirpnet`` console script when installed (what the README tells users
    to configure; tests/run installs it), else ``python -m slirp``.  Either
    way the PID is the slirpnet process itself.  ``started()`` lists the real
    starts (not the ``--help``/``--version`` probes) logged since ``mark()``."""

    def __init__(self, directory: pathlib.Path):
        self.path = directory / "slirpnet"
        self.log = directory / "starts.log"
        self.log.write_text("")
        script = pathlib.Path(sys.executable).parent / "slirpnet"
        target = f'"{script}"' if os.access(script, os.X_OK) else f"{sys.executable} -m slirp"
        self.path.write_text(
            "#!/bin/sh\n"
            "# slirpnet for clients that start slirp4netns: exec, so the PID they hold is slirpnet's.\n"
            f'printf "%s %s\\n" "$$" "$*" >> {self.log}\n'
            f"PYTHONPATH={ROOT}; export PYTHONPATH\n"
            f'exec {target} "$@"\n'
        )
        self.path.chmod(0o755)
        self._mark = 0

    def mark(self) -> None:
        self._mark = len(self.log.read_text().splitlines())

    def started(self) -> list[tuple[int, list[str]]]:
        out = []
        for line in self.log.read_text().splitlines()[self._mark :]:
            pid, _, args = line.partition(" ")
            argv = args.split()
            if argv not in (["--help"], ["--version"]):
                out.append((int(pid), argv))
        return out

    def the_one_started(self) -> tuple[int, list[str]]:
        started = self.started()
        assert len(started) == 1, started
        return started[0]


@pytest.fixture(scope="session")
def wrapper():
    d = pathlib.Path(tempfile.mkdtemp(prefix="snclients-"))
    yield Wrapper(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def slirpnet_wrapper(wrapper):
    """The session's wrapper; ``started()`` lists what this test's clients started."""
    wrapper.mark()
    return wrapper


def assert_confined(pid: int) -> None:
    """--enable-sandbox and --enable-seccomp took effect in ``pid`` (compat spec §7, §8)."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2", status["Seccomp"]
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"], 16) & ~CAP_NET_BIND_SERVICE == 0, status["CapEff"]
    root = f"/proc/{pid}/root"
    assert os.path.isdir(f"{root}/etc") and os.path.isdir(f"{root}/run")
    assert not os.path.exists(f"{root}/home") and not os.path.exists(f"{root}/usr")


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ctl_list(api_socket: str) -> list[dict]:
    """The forwards slirpnet itself holds (``slirpnet ctl --json list``)."""
    res = subprocess.run(
        [*SLIRPNET, "ctl", "--api-socket", api_socket, "--json", "list"],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["return"]["entries"]


# -- host-side helpers ---------------------------------------------------------------------------


class TokenServer:
    """An HTTP server on the host's 127.0.0.1 answering every GET with a token; counts requests."""

    def __init__(self):
        self.token = f"host-token-{secrets.token_hex(8)}\n".encode()
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.token)))
                self.end_headers()
                self.wfile.write(server.token)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_server():
    s = TokenServer()
    yield s
    s.close()


def http_get(port: int, timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), f"http://127.0.0.1:{port}/"], capture_output=True, timeout=timeout + 10
    )


def http_get_eventually(port: int, timeout: float = 20) -> bytes:
    """The page at 127.0.0.1:port once the server in the namespace is up (it races the client's start)."""
    deadline = time.monotonic() + timeout
    while True:
        res = http_get(port)
        if res.returncode == 0:
            return res.stdout
        assert time.monotonic() < deadline, res.stderr
        time.sleep(0.2)


# -- RootlessKit ----------------------------------------------------------------------------------


def rootlessctl(state: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ROOTLESSCTL, "--socket", f"{state}/api.sock", *args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )


@needs_rootlesskit
@pytest.mark.parametrize("hardened", [False, True], ids=["defaults", "no-loopback-sandbox-seccomp"])
def test_rootlesskit(slirpnet_wrapper, token_server, hardened):
    """``rootlesskit --net=slirp4netns --port-driver=slirp4netns``: the namespace comes up
    through slirpnet, outbound to the host's loopback works (or is refused with
    --disable-host-loopback), and ``rootlessctl add-ports`` / ``remove-ports`` go
    through slirpnet's API socket and carry traffic."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="snrk-"))  # short: the API socket path must fit sun_path
    state = str(work / "state")
    www = work / "www"
    www.mkdir()
    page = f"inside-rootlesskit-{secrets.token_hex(8)}\n"
    (www / "index.html").write_text(page)
    inner = work / "inner.sh"
    inner.write_text(
        f"ip -4 -o addr show tap0 > {work}/addr; cat /sys/class/net/tap0/mtu >> {work}/addr\n"
        f"curl -sS --max-time 10 -o {work}/outbound http://10.0.2.2:{token_server.port}/ 2> {work}/outbound.err\n"
        f"echo $? > {work}/outbound.rc\n"
        f"exec {BUSYBOX} httpd -f -v -p 80 -h {www}\n"
    )
    flags = ["--disable-host-loopback", "--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"] if hardened else []
    argv = [
        ROOTLESSKIT, f"--state-dir={state}", "--net=slirp4netns", f"--slirp4netns-binary={slirpnet_wrapper.path}",
        "--port-driver=slirp4netns", "--pidns", *flags, "--", "sh", str(inner),
    ]  # fmt: skip
    log = open(work / "rootlesskit.log", "wb")
    kit = spawn(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    slirpnet_pid = None
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not (work / "outbound.rc").exists() or not (work / "outbound.rc").read_text():
            assert kit.poll() is None, (work / "rootlesskit.log").read_text()
            assert time.monotonic() < deadline, "the namespace never came up: " + (work / "rootlesskit.log").read_text()
            time.sleep(0.1)
        slirpnet_pid, args = slirpnet_wrapper.the_one_started()
        # What RootlessKit asked for (compat spec §11): no -c (it made tap0 itself), ready fd 3, the API socket.
        assert args[:4] == ["--mtu", "65520", "-r", "3"], args
        assert args[-1] == "tap0" and "-c" not in args
        assert args[args.index("--api-socket") + 1] == f"{state}/.s4nn.sock"
        addr = (work / "addr").read_text()
        assert "inet 10.0.2.100/24" in addr and addr.split()[-1] == "65520", addr

        rc = int((work / "outbound.rc").read_text())
        if hardened:
            assert {"--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"} <= set(args), args
            assert_confined(slirpnet_pid)
            assert rc == 7, (work / "outbound.err").read_text()  # curl: could not connect
            assert token_server.requests == 0
        else:
            assert "--disable-host-loopback" not in args and "--enable-sandbox" not in args
            assert rc == 0, (work / "outbound.err").read_text()
            assert (work / "outbound").read_bytes() == token_server.token

        (hp,) = free_ports(1)
        res = rootlessctl(state, "add-ports", f"127.0.0.1:{hp}:80/tcp")
        assert res.returncode == 0, res.stderr
        port_id = res.stdout.strip()
        assert port_id.isdigit(), res.stdout
        # RootlessKit's port driver really went through slirpnet's API socket.
        (entry,) = ctl_list(f"{state}/.s4nn.sock")
        assert (entry["proto"], entry["host_addr"], entry["host_port"], entry["guest_port"]) == ("tcp", "127.0.0.1", hp, 80)
        assert http_get_eventually(hp).decode() == page
        # The server in the namespace saw the connection come from the gateway (spec §4.6).
        assert "10.0.2.2]:" in (work / "rootlesskit.log").read_text()

        assert str(hp) in rootlessctl(state, "list-ports").stdout.split()
        res = rootlessctl(state, "remove-ports", port_id)
        assert res.returncode == 0, res.stderr
        assert ctl_list(f"{state}/.s4nn.sock") == []
        assert str(hp) not in rootlessctl(state, "list-ports").stdout.split()
        assert http_get(hp).returncode == 7  # refused: the listener is gone
        assert can_bind("tcp", "127.0.0.1", hp)

        # RootlessKit ends everything on SIGTERM, slirpnet included (it SIGKILLs it).
        os.kill(kit.pid, signal.SIGTERM)
        kit.wait(timeout=20)
        assert wait_gone(slirpnet_pid), "slirpnet outlived RootlessKit"
    finally:
        stop(kit)
        if slirpnet_pid is not None and pid_alive(slirpnet_pid):
            os.kill(slirpnet_pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


# -- rootless Podman -----------------------------------------------------------------------------

IMAGE = "localhost/slirpnet-test-busybox:1"


class Podman:
    """Rootless Podman with a private configuration: every file lives under ``base``.

    containers.conf: network_cmd_path = the wrapper, cgroupfs, file events,
    no cgroups (no systemd here; notes/rootless-podman-here.md); storage.conf:
    vfs under ``base``; XDG_RUNTIME_DIR = ``base/run`` (short: Podman puts the
    API socket at $XDG_RUNTIME_DIR/libpod/tmp/<64 hex>.net, and sun_path holds
    107 bytes)."""

    def __init__(self, base: pathlib.Path, slirpnet: pathlib.Path):
        self.base = base
        home = base / "home"
        conf = home / ".config" / "containers"
        conf.mkdir(parents=True)
        run = base / "run"
        run.mkdir(mode=0o700)
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_RUNTIME_DIR": str(run),
        }
        (conf / "containers.conf").write_text(
            "[containers]\n"
            'cgroups = "disabled"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'network_cmd_path = "{slirpnet}"\n'
        )
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/storage"\nrunroot = "{base}/runroot"\n'
        )
        self.page = f"inside-podman-{secrets.token_hex(8)}\n"
        self.names: list[str] = []  # containers of the current test (container_name())

    def __call__(self, *args: str, timeout: float = CLIENT_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([PODMAN, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert res.returncode == 0, f"podman {' '.join(args)}: {res.stderr}"
        return res

    def import_busybox(self) -> None:
        """The test image: busybox-static and its applets in /bin, a page in /www (no registry here)."""
        tar_path = self.base / "busybox.tar"
        page = self.page.encode()
        with tarfile.open(tar_path, "w") as tar:

            def add(name, kind, mode, **kw):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, 0, 0, 0
                for k, v in kw.items():
                    setattr(info, k, v)
                return info

            for d in ("bin", "www", "tmp", "etc"):
                tar.addfile(add(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
            with open(BUSYBOX, "rb") as f:
                tar.addfile(add("bin/busybox", tarfile.REGTYPE, 0o755, size=os.fstat(f.fileno()).st_size), f)
            applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
            for applet in applets:
                if applet != "busybox":
                    tar.addfile(add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
            tar.addfile(add("www/index.html", tarfile.REGTYPE, 0o644, size=len(page)), io.BytesIO(page))
        self("import", str(tar_path), IMAGE, timeout=120)

    def close(self) -> None:
        """Remove every container and all storage, then end the rootless pause process."""
        self("rm", "--all", "--force", "--time", "0", check=False)
        # vfs layers hold files owned by subordinate ids: remove them from inside the user namespace.
        self("unshare", "rm", "-rf", str(self.base / "storage"), str(self.base / "runroot"), check=False)
        pause = self.base / "run" / "libpod" / "tmp" / "pause.pid"
        if pause.exists():
            try:
                os.kill(int(pause.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture(scope="session")
def podman_env(wrapper):
    """One Podman configuration and image per session (importing the image takes seconds)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="snpm-"))
    p = Podman(base, wrapper.path)
    try:
        p.import_busybox()
        yield p
    finally:
        p.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def podman(podman_env, slirpnet_wrapper):
    """The session's Podman; the containers named by container_name() are removed afterwards."""
    podman_env.names = []
    yield podman_env
    for name in podman_env.names:
        podman_env("rm", "--force", "--time", "0", name, check=False)


def container_name(podman: Podman) -> str:
    name = f"slirpnet-test-{secrets.token_hex(4)}"
    podman.names.append(name)
    return name


@needs_podman
def test_podman_info_names_slirpnet(podman, slirpnet_wrapper):
    info = json.loads(podman("info", "--format", "json").stdout)
    slirp = info["host"]["slirp4netns"]
    assert slirp["executable"] == str(slirpnet_wrapper.path)
    assert slirp["version"].startswith("slirpnet version ") and "SLIRP_CONFIG_VERSION_MAX: 4" in slirp["version"]


@needs_podman
@pytest.mark.parametrize("port_handler", ["slirp4netns", "rootlessport"])
def test_podman_publish(podman, slirpnet_wrapper, port_handler):
    """``podman run -p 127.0.0.1:HOSTPORT:80 --network slirp4netns[:port_handler=slirp4netns]``
    to a busybox httpd; curl from the host gets its page."""
    name = container_name(podman)
    (hp,) = free_ports(1)
    network = "slirp4netns:port_handler=slirp4netns" if port_handler == "slirp4netns" else "slirp4netns"
    podman("run", "-d", "--name", name, "--network", network, "-p", f"127.0.0.1:{hp}:80",
           IMAGE, "httpd", "-f", "-v", "-p", "80", "-h", "/www")  # fmt: skip
    slirpnet_pid, args = slirpnet_wrapper.the_one_started()
    assert http_get_eventually(hp).decode() == podman.page

    # Podman's defaults (compat spec §11), confinement included.
    assert {"--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp", "-c"} <= set(args), args
    assert args[args.index("-e") + 1] == "3" and args[args.index("-r") + 1] == "4"
    assert "--netns-type=path" in args and args[-1] == "tap0"
    assert_confined(slirpnet_pid)
    logs = podman("logs", name)
    log = logs.stdout + logs.stderr
    if port_handler == "slirp4netns":
        # Podman added the forward through slirpnet's API; the connection came through
        # slirpnet, so httpd saw it from the gateway (a loopback client, spec §4.6).
        api_socket = args[args.index("--api-socket") + 1]
        (entry,) = ctl_list(api_socket)
        assert (entry["proto"], entry["host_addr"], entry["host_port"]) == ("tcp", "127.0.0.1", hp)
        assert (entry["guest_addr"], entry["guest_port"]) == ("10.0.2.100", 80)
        assert "10.0.2.2]:" in log, log
    else:
        # rootlessport listens on the host itself and its child connects from inside the
        # namespace, to the container's own address.
        assert "--api-socket" not in args
        assert "10.0.2.100]:" in log, log

    podman("rm", "--force", "--time", "0", name)
    assert wait_gone(slirpnet_pid), "slirpnet outlived its container (exit fd)"
    assert can_bind("tcp", "127.0.0.1", hp)


@needs_podman
def test_podman_outbound_to_host_loopback(podman, slirpnet_wrapper, token_server):
    """allow_host_loopback=true (with a custom mtu and cidr, no IPv6): the container
    reaches the host's 127.0.0.1 through the gateway; by default it cannot.
    (busybox 1.35's static ``wget -T`` dies of SIGSEGV: ``timeout`` bounds it instead.)"""
    opts = "allow_host_loopback=true,mtu=1500,cidr=10.41.0.0/24,enable_ipv6=false"
    res = podman(
        "run", "--rm", "--name", container_name(podman), "--network", f"slirp4netns:{opts}", IMAGE,
        "sh", "-c", "ip -4 -o addr show tap0; cat /sys/class/net/tap0/mtu; "
                    f"timeout 10 wget -q -O - http://10.41.0.2:{token_server.port}/",
    )  # fmt: skip
    pid, args = slirpnet_wrapper.the_one_started()
    assert "--disable-host-loopback" not in args and "--enable-ipv6" not in args, args
    assert {"--mtu=1500", "--cidr=10.41.0.0/24"} <= set(args), args
    lines = res.stdout.splitlines(keepends=True)
    assert "inet 10.41.0.100/24" in lines[0] and lines[1] == "1500\n", res.stdout
    assert "".join(lines[2:]).encode() == token_server.token
    assert token_server.requests == 1
    assert wait_gone(pid)

    slirpnet_wrapper.mark()
    res = podman(
        "run", "--rm", "--name", container_name(podman), "--network", "slirp4netns", IMAGE,
        "timeout", "10", "wget", "-q", "-O", "-", f"http://10.0.2.2:{token_server.port}/",
        check=False,
    )  # fmt: skip
    _, args = slirpnet_wrapper.the_one_started()
    assert "--disable-host-loopback" in args and "--enable-ipv6" in args
    assert res.returncode != 0 and "Network is unreachable" in res.stderr, (res.stdout, res.stderr)
    assert token_server.requests == 1
