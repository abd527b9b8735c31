"""Start-up the way slirp4netns starts: namespaces, the TAP, --configure, ready/exit fds, run.

Each test makes its own user + network namespace (``unshare -rn``), runs as
the unprivileged test user, and talks only to the stack's own addresses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time


from .nsutil import ENV, SLIRPNET, Netns, pid_alive, read_until_eof, stop


def links(ns: Netns) -> dict:
    out = ns.run("ip", "-j", "addr", "show", check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def routes(ns: Netns) -> list:
    return json.loads(ns.run("ip", "-j", "route", "show", check=True).stdout)


def ping(ns: Netns, addr: str, *extra: str) -> subprocess.CompletedProcess:
    return ns.run("ping", "-c", "1", "-W", "2", *extra, addr, timeout=15)


def ipv4_addrs(link: dict) -> list[tuple[str, int]]:
    return [(a["local"], a["prefixlen"]) for a in link.get("addr_info", []) if a["family"] == "inet"]


def test_configure_sets_up_lo_tap_address_route_and_pings_gateway(netns, start_slirpnet):
    s = start_slirpnet(["-c", str(netns.pid), "tap0"])
    got = links(netns)
    assert "UP" in got["lo"]["flags"]
    tap = got["tap0"]
    assert "UP" in tap["flags"] and tap["mtu"] == 1500
    assert ipv4_addrs(tap) == [("10.0.2.100", 24)]
    default = [r for r in routes(netns) if r["dst"] == "default"]
    assert default and default[0]["gateway"] == "10.0.2.2" and default[0]["dev"] == "tap0"
    assert ping(netns, "10.0.2.2").returncode == 0
    assert ping(netns, "10.0.2.3").returncode == 0
    err = s.stderr()
    assert re.search(r"^sent tapfd=\d+ for tap0$", err, re.M), err
    assert re.search(r"^received tapfd=\d+$", err, re.M), err
    out = s.stdout()
    assert "Starting slirp\n* MTU:             1500\n* Network:         10.0.2.0\n" in out
    assert "* Recommended IP:  10.0.2.100\n" in out
    assert "WARNING: 127.0.0.1:* on the host is accessible as 10.0.2.2" in out


def test_ping_replies_come_from_the_stack_with_ttl_255(netns, start_slirpnet):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    res = ping(netns, "10.0.2.2")
    assert res.returncode == 0 and b"ttl=255" in res.stdout
    # Large echo: the payload comes back whole (ping checks it).
    res = ping(netns, "10.0.2.2", "-s", "1400")
    assert res.returncode == 0 and b"1408 bytes from 10.0.2.2" in res.stdout
    # Larger than the MTU: fragments both ways, reassembled by us and by the guest.
    res = ping(netns, "10.0.2.2", "-s", "20000")
    assert res.returncode == 0 and b"20008 bytes from 10.0.2.2" in res.stdout
    frag_stats = netns.run("cat", "/proc/net/snmp", check=True).stdout.decode()
    ip_names, ip_values = [line.split()[1:] for line in frag_stats.splitlines() if line.startswith("Ip:")]
    stats = dict(zip(ip_names, map(int, ip_values)))
    assert stats["ReasmOKs"] >= 1 and stats["FragCreates"] >= 14


def test_cidr_25_moves_every_address(netns, start_slirpnet):
    s = start_slirpnet(["--cidr", "10.0.135.128/25", "-c", str(netns.pid), "tap0"])
    assert ipv4_addrs(links(netns)["tap0"]) == [("10.0.135.228", 25)]
    default = [r for r in routes(netns) if r["dst"] == "default"]
    assert default[0]["gateway"] == "10.0.135.130"
    assert ping(netns, "10.0.135.130").returncode == 0
    assert ping(netns, "10.0.135.131").returncode == 0
    assert ping(netns, "10.0.2.2").returncode != 0
    assert "* Gateway:         10.0.135.130\n" in s.stdout()


def test_macaddress_and_mtu(netns, start_slirpnet):
    s = start_slirpnet(["-c", "--mtu=9000", "--macaddress", "02:11:22:33:44:55", str(netns.pid), "tap0"])
    tap = links(netns)["tap0"]
    assert tap["address"] == "02:11:22:33:44:55" and tap["mtu"] == 9000
    assert ping(netns, "10.0.2.2", "-s", "8000").returncode == 0
    assert "* MAC address:     02:11:22:33:44:55\n" in s.stdout()
    # ARP answers carry the gateway's virtual MAC 52:55:<ip>.
    neigh = netns.run("ip", "-j", "neigh", "show", "10.0.2.2", check=True).stdout
    assert json.loads(neigh)[0]["lladdr"] == "52:55:0a:00:02:02"


def test_without_configure_the_tap_is_left_down(netns, start_slirpnet):
    start_slirpnet([str(netns.pid), "tap0"])
    tap = links(netns)["tap0"]
    assert "UP" not in tap["flags"] and ipv4_addrs(tap) == []


def test_netns_type_path_with_userns_path(netns, start_slirpnet):
    pid = netns.pid
    start_slirpnet(
        ["-c", "--netns-type=path", f"--userns-path=/proc/{pid}/ns/user", f"/proc/{pid}/ns/net", "tap0"]
    )
    assert ping(netns, "10.0.2.2").returncode == 0


def test_netns_type_path_from_inside_the_user_namespace(netns, tmp_path):
    """Podman's way: slirpnet is started inside the rootless user namespace and
    given only a netns path."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [
            "nsenter", "-t", str(netns.pid), "-U", "--preserve-credentials",
            *SLIRPNET, "-c", "-r", str(w), "--netns-type=path", f"/proc/{netns.pid}/ns/net", "tap0",
        ],
        pass_fds=(w,), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    os.close(w)
    try:
        assert read_until_eof(r, 20) == b"1"
        assert ping(netns, "10.0.2.2").returncode == 0
    finally:
        stop(proc)
        proc.stderr.close()


def test_path_mode_outside_the_userns_fails_like_slirp4netns(netns, tmp_path):
    res = subprocess.run(
        [*SLIRPNET, "--netns-type=path", f"/proc/{netns.pid}/ns/net", "tap0"],
        capture_output=True, text=True, env=ENV, timeout=20,
    )  # fmt: skip
    assert res.returncode == 1
    assert "setns(CLONE_NEWNET): Operation not permitted" in res.stderr
    assert "child failed(1)" in res.stderr


def test_missing_pid_fails_in_the_child(tmp_path):
    res = subprocess.run([*SLIRPNET, "999999999", "tap0"], capture_output=True, text=True, env=ENV, timeout=20)
    assert res.returncode == 1
    assert "/proc/999999999/ns/net: No such file or directory\n" in res.stderr
    assert "child failed(1)\n" in res.stderr


def test_a_bad_slirpnet_datapath_is_a_clear_error(netns, tmp_path):
    env = {**ENV, "SLIRPNET_DATAPATH": "fast"}
    want = "SLIRPNET_DATAPATH must be one of native, native-sync, python, off, not 'fast'\n"
    marker = tmp_path / "ran"
    res = subprocess.run([*SLIRPNET, "run", "--", "touch", str(marker)], capture_output=True, text=True, env=env, timeout=20)
    assert (res.returncode, res.stderr) == (125, want)
    assert not marker.exists()
    res = subprocess.run([*SLIRPNET, "-c", str(netns.pid), "tap0"], capture_output=True, text=True, env=env, timeout=20)
    assert (res.returncode, res.stderr) == (1, want)
    assert "tap0" not in netns.run("ip", "-o", "link").stdout.decode()


def test_ready_fd_is_written_once_everything_is_configured(netns, tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*SLIRPNET, "-c", "-r", str(w), str(netns.pid), "tap0"],
        pass_fds=(w,), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    os.close(w)
    try:
        assert read_until_eof(r, 20) == b"1"  # exactly one byte, then EOF: the fd was closed
        # By then the address is configured and the stack answers.
        assert ipv4_addrs(links(netns)["tap0"]) == [("10.0.2.100", 24)]
        assert ping(netns, "10.0.2.2").returncode == 0
    finally:
        stop(proc)


def test_exit_fd_hangup_ends_with_status_0(netns, start_slirpnet):
    r, w = os.pipe()
    s = start_slirpnet(["-c", "-e", str(r), str(netns.pid), "tap0"], pass_fds=(r,))
    os.close(r)
    os.write(w, b"data must not end it")
    time.sleep(0.3)
    assert s.proc.poll() is None, "readable data on the exit fd must not end slirpnet"
    assert ping(netns, "10.0.2.2").returncode == 0
    os.close(w)
    assert s.wait(10) == 0
    err = s.stderr()
    assert "exitfd event\n" in err and "do_slirp is exiting\n" in err
    assert "tap0" not in links(netns), "the TAP is not persistent: it goes with slirpnet"


def test_exit_fd_not_open_exits_at_once(netns, start_slirpnet):
    s = start_slirpnet(["-e", "77", str(netns.pid), "tap0"], ready=False)
    assert s.wait(20) == 0
    assert "exitfd event" in s.stderr()


def test_sigterm_ends_it(netns, start_slirpnet):
    s = start_slirpnet(["-c", str(netns.pid), "tap0"])
    os.kill(s.pid, signal.SIGTERM)
    assert s.wait(10) == -signal.SIGTERM


def test_attaches_to_a_pre_existing_tap_like_rootlesskit(netns, start_slirpnet):
    netns.run("ip", "tuntap", "add", "tap0", "mode", "tap", check=True)
    netns.run("ip", "link", "set", "tap0", "up", check=True)
    netns.run("ip", "addr", "add", "10.0.2.100/24", "dev", "tap0", check=True)
    start_slirpnet([str(netns.pid), "tap0"])
    assert ping(netns, "10.0.2.2").returncode == 0


def test_busy_tap_is_refused(netns, start_slirpnet):
    netns.run("ip", "tuntap", "add", "tap0", "mode", "tap", check=True)
    start_slirpnet([str(netns.pid), "tap0"])
    second = start_slirpnet([str(netns.pid), "tap0"], ready=False)
    assert second.wait(20) == 1
    err = second.stderr()
    assert "ioctl(TUNSETIFF): Device or resource busy\n" in err and "child failed(1)\n" in err


def test_run_gives_a_command_networking_and_its_status():
    res = subprocess.run(
        [*SLIRPNET, "run", "--", "sh", "-c", "ping -c1 -W2 10.0.2.2 >/dev/null && ip -4 -o addr show tap0; exit 7"],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert res.returncode == 7, res.stderr
    assert "10.0.2.100/24" in res.stdout
    assert res.stderr == ""  # quiet by default


def test_run_accepts_stack_options():
    res = subprocess.run(
        [*SLIRPNET, "run", "--mtu", "4000", "--cidr=10.0.135.128/25", "--", "sh", "-c",
         "ping -c1 -W2 10.0.135.130 >/dev/null && cat /sys/class/net/tap0/mtu; ip -4 -o addr show tap0"],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "10.0.135.228/25" in res.stdout


def test_run_reports_signals_and_unknown_commands():
    res = subprocess.run([*SLIRPNET, "run", "--", "sh", "-c", "kill -KILL $$"], env=ENV, timeout=30)
    assert res.returncode == 128 + signal.SIGKILL
    res = subprocess.run(
        [*SLIRPNET, "run", "--", "no-such-command-xyz"], capture_output=True, text=True, env=ENV, timeout=30
    )
    assert res.returncode == 127 and "command not found" in res.stderr
    res = subprocess.run([*SLIRPNET, "run"], capture_output=True, text=True, env=ENV, timeout=30)
    assert res.returncode == 2 and "no command given" in res.stderr


def test_run_leaves_no_process_behind():
    proc = subprocess.Popen(
        [*SLIRPNET, "run", "--", "sh", "-c", "echo $$; exec sleep 60"],
        stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )  # fmt: skip
    try:
        cmd_pid = int(proc.stdout.readline())
        assert pid_alive(cmd_pid)
        # slirpnet killed hard: the command must not outlive it.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while pid_alive(cmd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(cmd_pid)
    finally:
        stop(proc)
        proc.stdout.close()


def test_run_forwards_sigterm_to_the_command():
    proc = subprocess.Popen(
        [*SLIRPNET, "run", "--", "sh", "-c", "trap 'exit 42' TERM; echo up; while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "up\n"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 42
    finally:
        stop(proc)
        proc.stdout.close()
