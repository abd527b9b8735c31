"""--enable-sandbox and --enable-seccomp on a running slirpnet (compat spec §7, §8, §11).

Run as the unprivileged test user.  Each test makes its own namespaces
(``unshare -rn`` targets; ``unshare -rm`` where the caller must be root of
its own user + mount namespace) and talks only to the stack's addresses.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from slirp.seccomp import BLOCKED_SYSCALLS

from .nsutil import ENV, ROOT, SLIRPNET, read_until_eof, stop

NET_BIND_SERVICE_MASK = 1 << 10
SIGSYS_STATUS = -signal.SIGSYS


def status_fields(pid: int, task: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def mountinfo(pid: int) -> list[tuple[str, set[str], str]]:
    """(mount point, per-mount options, propagation fields) for each mount of ``pid``."""
    rows = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            sep = fields.index("-")
            rows.append((fields[4], set(fields[5].split(",")), " ".join(fields[6:sep])))
    return rows


def ping(netns, addr: str) -> subprocess.CompletedProcess:
    return netns.run("ping", "-c", "1", "-W", "2", addr, timeout=15)


def assert_confined(pid: int) -> None:
    """Capabilities, no_new_privs and root of the process ``pid`` (every thread)."""
    caps = subprocess.run(["getpcaps", str(pid)], capture_output=True, text=True, timeout=10)
    text = caps.stdout + caps.stderr
    assert caps.returncode == 0, text
    assert "cap_net_bind_service=eip" in text and "cap_sys_admin" not in text, text
    for task in os.listdir(f"/proc/{pid}/task"):
        st = status_fields(pid, int(task))
        for key in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
            assert int(st[key], 16) == NET_BIND_SERVICE_MASK, (task, key, st[key])
        assert int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        assert sorted(os.listdir(f"/proc/{pid}/task/{task}/root")) == ["etc", "run"]
    root = pathlib.Path(f"/proc/{pid}/root")
    assert (root / "etc").is_dir() and (root / "run").is_dir()
    for gone in ("home", "root", "var", "usr", "tmp", "proc", "dev"):
        assert not (root / gone).exists(), gone
    assert (root / "etc" / "passwd").read_text() == pathlib.Path("/etc/passwd").read_text()


def assert_read_only_binds(pid: int) -> None:
    rows = mountinfo(pid)
    points = [p for p, _, _ in rows]
    assert "/" in points and "/etc" in points
    for point, opts, propagation in rows:
        if point == "/":
            assert "ro" in opts, (point, opts)
        if point in ("/etc", "/run") or point.startswith(("/etc/", "/run/")):
            assert {"ro", "nosuid", "nodev", "noexec"} <= opts, (point, opts)
        # Private: no peer group shared with anyone, no master.
        assert "shared:" not in propagation and "master:" not in propagation, (point, propagation)


def test_sandbox_drops_everything_but_net_bind_service(netns, start_slirpnet):
    s = start_slirpnet(["--enable-sandbox", "-c", str(netns.pid), "tap0"])
    assert_confined(s.pid)
    assert_read_only_binds(s.pid)
    st = status_fields(s.pid)
    assert st["Seccomp"] == "0"  # no filter without --enable-seccomp
    assert ping(netns, "10.0.2.2").returncode == 0


def test_sandbox_joins_the_target_user_namespace(netns, start_slirpnet):
    s = start_slirpnet(["--enable-sandbox", str(netns.pid), "tap0"])
    assert os.readlink(f"/proc/{s.pid}/ns/user") == os.readlink(f"/proc/{netns.pid}/ns/user")
    assert os.readlink(f"/proc/{s.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # Effective ids 0 in the target's namespace = our own ids outside (unshare -r maps them).
    assert status_fields(s.pid)["Uid"].split() == [str(os.getuid())] * 4
    inside = netns.run("cat", f"/proc/{s.pid}/status", check=True).stdout.decode()
    uid_line = [line for line in inside.splitlines() if line.startswith("Uid:")]
    assert uid_line[0].split()[1:] == ["0"] * 4, "uid 0 as seen in the target's user namespace"


def test_pre_5_12_remount_path_gives_the_same_result(netns, start_slirpnet, monkeypatch):
    monkeypatch.setitem(ENV, "SLIRPNET_TEST_SANDBOX_NO_MOUNT_SETATTR", "1")
    s = start_slirpnet(["--enable-sandbox", "-c", str(netns.pid), "tap0"])
    assert_confined(s.pid)
    assert_read_only_binds(s.pid)
    assert ping(netns, "10.0.2.2").returncode == 0


def test_both_flags_ping_and_the_exact_seccomp_line(netns, start_slirpnet):
    s = start_slirpnet(["--enable-sandbox", "--enable-seccomp", "-c", str(netns.pid), "tap0"])
    assert_confined(s.pid)
    tasks = os.listdir(f"/proc/{s.pid}/task")
    assert len(tasks) > 1, "libuv's worker threads are started before the filter"
    for task in tasks:
        st = status_fields(s.pid, int(task))
        assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1", task
    for _ in range(3):
        assert ping(netns, "10.0.2.2").returncode == 0
        assert ping(netns, "10.0.2.3").returncode == 0
    out = s.stdout().splitlines()
    assert out[0] == "WARNING: Support for seccomp is experimental"
    line = "seccomp: The following syscalls are blocked: " + " ".join(BLOCKED_SYSCALLS)
    assert out.count(line) == 1
    assert out.index(line) > out.index("Starting slirp")
    assert s.proc.poll() is None


def test_seccomp_alone(netns, start_slirpnet):
    s = start_slirpnet(["--enable-seccomp", "-c", str(netns.pid), "tap0"])
    st = status_fields(s.pid)
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
    assert ping(netns, "10.0.2.2").returncode == 0
    os.kill(s.pid, signal.SIGTERM)
    assert s.wait(10) == -signal.SIGTERM


@pytest.mark.parametrize("syscall", ["execve", "prctl", "setns", "unshare", "mount", "pidfd_open", "ptrace"])
def test_a_blocked_syscall_kills_the_process(netns, start_slirpnet, monkeypatch, syscall):
    monkeypatch.setitem(ENV, "SLIRPNET_TEST_SECCOMP_PROBE", syscall)
    s = start_slirpnet(["--enable-seccomp", str(netns.pid), "tap0"])
    assert s.wait(10) == SIGSYS_STATUS, s.stderr()


def test_the_probe_kills_a_sandboxed_process_too_and_needs_the_filter(netns, start_slirpnet, monkeypatch):
    monkeypatch.setitem(ENV, "SLIRPNET_TEST_SECCOMP_PROBE", "execve")
    s = start_slirpnet(["--enable-sandbox", "--enable-seccomp", str(netns.pid), "tap0"])
    assert s.wait(10) == SIGSYS_STATUS
    # Without --enable-seccomp the hook does nothing: the process keeps serving.
    other = start_slirpnet(["--enable-sandbox", "-c", str(netns.pid), "tap1"])
    time.sleep(0.5)
    assert other.proc.poll() is None


def test_exit_fd_and_shutdown_work_inside_the_sandbox(netns, start_slirpnet):
    r, w = os.pipe()
    s = start_slirpnet(["--enable-sandbox", "--enable-seccomp", "-e", str(r), str(netns.pid), "tap0"], pass_fds=(r,))
    os.close(r)
    os.close(w)
    assert s.wait(10) == 0
    assert "do_slirp is exiting\n" in s.stderr()


def test_podman_default_argv_from_inside_the_user_namespace(netns, tmp_path):
    """Podman: ``--disable-host-loopback --mtu=65520 --enable-sandbox
    --enable-seccomp -c -e 3 -r 4 --netns-type=path PATH tap0``, started as
    root of the rootless user namespace (here: nsenter -U)."""
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def fds_3_and_4():
        # Out of the way first, so that neither lands on the other's target.
        high_exit = fcntl.fcntl(exit_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_ready = fcntl.fcntl(ready_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.dup2(high_exit, 3)  # inheritable
        os.dup2(high_ready, 4)

    argv = [
        "--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
        "-c", "-e", "3", "-r", "4", "--netns-type=path", f"/proc/{netns.pid}/ns/net", "tap0",
    ]  # fmt: skip
    out = open(tmp_path / "out", "wb")
    err = open(tmp_path / "err", "wb")
    proc = subprocess.Popen(
        ["nsenter", "-t", str(netns.pid), "-U", "--preserve-credentials", *SLIRPNET, *argv],
        preexec_fn=fds_3_and_4, close_fds=False, env=ENV,  # only 3 and 4 are inheritable
        stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
    )  # fmt: skip
    os.close(exit_r)
    os.close(ready_w)
    try:
        assert read_until_eof(ready_r, 20) == b"1", (tmp_path / "err").read_text()
        assert_confined(proc.pid)
        assert status_fields(proc.pid)["Seccomp"] == "2"
        link = json.loads(netns.run("ip", "-j", "link", "show", "tap0", check=True).stdout)
        assert link[0]["mtu"] == 65520
        assert ping(netns, "10.0.2.2").returncode == 0
        os.close(exit_w)
        exit_w = None
        assert proc.wait(10) == 0
        assert "do_slirp is exiting" in (tmp_path / "err").read_text()
        stdout = (tmp_path / "out").read_text()
        assert "seccomp: The following syscalls are blocked: execve " in stdout
    finally:
        if exit_w is not None:
            os.close(exit_w)
        stop(proc)
        out.close()
        err.close()


def test_path_mode_non_root_outside_the_userns_fails_like_slirp4netns(netns):
    pid = netns.pid
    res = subprocess.run(
        [*SLIRPNET, "--enable-sandbox", "--netns-type=path", f"--userns-path=/proc/{pid}/ns/user",
         f"/proc/{pid}/ns/net", "tap0"],
        capture_output=True, text=True, env=ENV, timeout=20,
    )  # fmt: skip
    assert res.returncode == 1
    assert "setegid(0): Operation not permitted\nparent failed\n" in res.stderr
    assert "Starting slirp" in res.stdout  # the banner comes first, as slirp4netns's


def test_run_subcommand_with_both_flags():
    res = subprocess.run(
        [*SLIRPNET, "run", "--enable-sandbox", "--enable-seccomp", "--",
         "sh", "-c", "ping -c1 -W2 10.0.2.2 >/dev/null && exit 7"],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert res.returncode == 7, res.stderr
    assert res.stderr == ""


def test_resolv_conf_outside_etc_and_run_is_bound_in(netns, start_slirpnet, tmp_path):
    """--resolv-conf through an absolute symlink to a file under /tmp (which
    the sandbox's root tmpfs covers): the link and the file are in the sandbox
    at their real paths, and nothing else from those directories is."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (real_dir / "secret").write_text("must not be visible\n")
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "resolv.conf").symlink_to(real_dir / "resolv.conf")
    (link_dir / "rel.conf").symlink_to("../real/resolv.conf")
    s = start_slirpnet(["--enable-sandbox", f"--resolv-conf={link_dir}/resolv.conf", str(netns.pid), "tap0"])
    root = f"/proc/{s.pid}/root"
    assert os.readlink(f"{root}{link_dir}/resolv.conf") == str(real_dir / "resolv.conf")
    assert pathlib.Path(f"{root}{real_dir}/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert os.listdir(f"{root}{real_dir}") == ["resolv.conf"]
    assert os.listdir(f"{root}{link_dir}") == ["resolv.conf"]
    opts = {p: o for p, o, _ in mountinfo(s.pid)}
    assert {"ro", "nosuid", "nodev", "noexec"} <= opts[f"{real_dir}/resolv.conf"]
    # A relative link resolves inside the sandbox's root even through /proc/PID/root.
    s2 = start_slirpnet(["--enable-sandbox", f"--resolv-conf={link_dir}/rel.conf", str(netns.pid), "tap1"])
    root2 = f"/proc/{s2.pid}/root"
    assert pathlib.Path(f"{root2}{link_dir}/rel.conf").read_text() == "nameserver 192.0.2.53\n"


def test_default_resolv_conf(netns, start_slirpnet):
    """Here /etc/resolv.conf is inside /etc or /run: the root holds just those two
    (elsewhere its real location's top directory is there too)."""
    s = start_slirpnet(["--enable-sandbox", str(netns.pid), "tap0"])
    real = os.path.realpath("/etc/resolv.conf")
    expected = {"etc", "run"}
    if os.path.isfile(real) and not real.startswith(("/etc/", "/run/")):
        expected.add(real.split("/")[1])
    assert set(os.listdir(f"/proc/{s.pid}/root")) == expected


def run_scenario(name: str, tmp_path: pathlib.Path) -> dict:
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        ["unshare", "-rm", "--propagation", "shared", sys.executable, "-m", "tests.integration.sandbox_scenario",
         name, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=90, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_nothing_propagates_back_to_the_callers_mount_namespace(tmp_path):
    seen = run_scenario("propagation", tmp_path)
    assert "shared:" in seen["propagation_of_run"]  # the scenario is the real one
    assert seen["ready"] == "1", seen["stderr"]
    assert seen["foo_mounted_while_running"]
    assert seen["sandbox_sees_marker"] == "still here\n"
    assert not seen["bar_in_sandbox"], "mounts made later must not reach the sandbox"
    assert seen["slirpnet_status"] == -signal.SIGTERM
    assert seen["foo_mounted_after_exit"] and seen["marker_after_exit"] == "still here\n"


def test_etc_resolv_conf_symlinked_outside_etc_and_run(tmp_path):
    seen = run_scenario("etc_resolv_symlink", tmp_path)
    assert seen["ready"] == "1", seen["stderr"]
    dns = seen["dns_dir"]
    assert seen["link_in_sandbox"] == seen["resolv_link"] == f"{dns}/resolv.conf"
    assert seen["content_in_sandbox"] == "nameserver 192.0.2.53\n"
    assert seen["dns_dir_in_sandbox"] == ["resolv.conf"]
    assert seen["file_mount_in_sandbox"]
    assert not seen["orig_in_sandbox"]
    assert seen["top_in_sandbox"] == sorted({"etc", "run", dns.split("/")[1]})


def test_seccomp_load_failure_is_enable_seccomp_failed(netns, tmp_path):
    # A libseccomp.so.2 that is no library: loading it fails, as on a system without one.
    (tmp_path / "libseccomp.so.2").write_text("not an ELF file\n")
    env = {**ENV, "LD_LIBRARY_PATH": str(tmp_path)}
    res = subprocess.run(
        [*SLIRPNET, "--enable-seccomp", str(netns.pid), "tap0"], capture_output=True, text=True, env=env, timeout=20
    )
    assert res.returncode == 1
    assert res.stderr.endswith("enable_seccomp failed\nparent failed\n"), res.stderr
    assert "cannot load libseccomp.so.2" in res.stderr
    version = subprocess.run([*SLIRPNET, "--version"], capture_output=True, text=True, env=env, timeout=20)
    assert "libseccomp: none\n" in version.stdout


def test_version_reports_the_libseccomp_in_use():
    res = subprocess.run([*SLIRPNET, "--version"], capture_output=True, text=True, env=ENV, timeout=20)
    line = [x for x in res.stdout.splitlines() if x.startswith("libseccomp: ")]
    from slirp.seccomp import library

    assert line == [f"libseccomp: {library().version()}"]
    assert line[0] != "libseccomp: none"


def test_run_subcommand_confinement_failure_is_125_and_the_command_never_runs(tmp_path):
    (tmp_path / "libseccomp.so.2").write_text("not an ELF file\n")
    marker = tmp_path / "ran"
    res = subprocess.run(
        [*SLIRPNET, "run", "--enable-seccomp", "--", "touch", str(marker)],
        capture_output=True, text=True, env={**ENV, "LD_LIBRARY_PATH": str(tmp_path)}, timeout=30,
    )  # fmt: skip
    assert res.returncode == 125
    assert "enable_seccomp failed\nparent failed\n" in res.stderr
    assert not marker.exists()
