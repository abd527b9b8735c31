"""The slirp4netns command line: parsing, validation messages, exit codes (compat spec §1, §2, §10).

Expected texts are slirp4netns 1.2.0's, observed on Debian 12.  Where the
real binary is installed, a differential test runs both on the same argv
(cases that fail before any namespace is touched) and compares stderr, the
presence of the usage text, and the exit status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from slirp.cli import Exit, parse_args, usage_text
from slirp.gnu_getopt import GetoptError, LongOption, getopt_long

PROG = "slirp4netns"


def fails(argv):
    with pytest.raises(Exit) as info:
        parse_args(argv, PROG)
    return info.value


# (argv, stderr, usage shown)
ERROR_CASES = [
    ([], "", True),
    (["1"], "", True),
    (["--", "5"], "", True),
    (["abc", "tap0"], "PID must be a positive integer\n", True),
    (["0", "tap0"], "PID must be a positive integer\n", True),
    (["--", "-5", "tap0"], "PID must be a positive integer\n", True),
    (["-e", "x", "1", "tap0"], "exit-fd must be a non-negative integer\n", True),
    (["-e", "3x", "1", "tap0"], "exit-fd must be a non-negative integer\n", True),
    (["-r", "-1", "1", "tap0"], "ready-fd must be a non-negative integer\n", True),
    (["-m", "0", "1", "tap0"], "MTU must be a positive integer (< 65522)\n", True),
    (["-m", "65522", "1", "tap0"], "MTU must be a positive integer (< 65522)\n", True),
    (["-m", "12x", "1", "tap0"], "MTU must be a positive integer (< 65522)\n", True),
    (["--mtu=-5", "1", "tap0"], "MTU must be a positive integer (< 65522)\n", True),
    (["--cidr", "24", "1", "tap0"], "invalid CIDR: 24\n", False),
    (["--cidr", "foo", "1", "tap0"], "invalid CIDR: foo\n", False),
    (["--cidr", "10.0.2.0", "1", "tap0"], "invalid CIDR: 10.0.2.0\n", False),
    (["--cidr", "300.0.2.0/24", "1", "tap0"], "invalid network address: 300.0.2.0\n", False),
    (["--cidr", "10.0.2.0/26", "1", "tap0"], "prefix length needs to be 1-25\n", False),
    (["--cidr", "10.0.2.0/0", "1", "tap0"], "prefix length needs to be 1-25\n", False),
    (["--cidr", "10.0.2.100/26", "1", "tap0"], "prefix length needs to be 1-25\n", False),
    (
        ["--cidr", "10.0.2.100/24", "1", "tap0"],
        "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24\n",
        False,
    ),
    (
        ["--macaddress", "02:00:00:00:00:01", "1", "tap0"],
        "--macaddr cannot be specified when --configure or -c is not specified\n",
        True,
    ),
    (
        ["-c", "--macaddress", "zz", "1", "tap0"],
        '"zz" is an invalid MAC address.\nmacaddress has to be a valid MAC address '
        "(hex string, 6 bytes, each byte separated by a ':').\n",
        False,
    ),
    (
        ["-c", "--macaddress", "02:00:00:00:00:0100", "1", "tap0"],
        '"02:00:00:00:00:0100" is an invalid MAC address.\nmacaddress has to be a valid MAC address '
        "(hex string, 6 bytes, each byte separated by a ':').\n",
        False,
    ),
    (["--foo", "1", "tap0"], f"{PROG}: unrecognized option '--foo'\n", True),
    (["--foo=1", "1", "tap0"], f"{PROG}: unrecognized option '--foo=1'\n", True),
    (["-x", "1", "tap0"], f"{PROG}: invalid option -- 'x'\n", True),
    (
        ["--c", "1", "tap0"],
        f"{PROG}: option '--c' is ambiguous; possibilities: '--configure' '--cidr' '--create-sandbox'\n",
        True,
    ),
    (["-e"], f"{PROG}: option requires an argument -- 'e'\n", True),
    (["--mtu"], f"{PROG}: option '--mtu' requires an argument\n", True),
    (["--configure=1", "1", "tap0"], f"{PROG}: option '--configure' doesn't allow an argument\n", True),
    (
        ["--netns-type=path", "/nonexistent/netns", "tap0"],
        "existing path expected when --netns-type=path: No such file or directory\n",
        True,
    ),
    (
        ["--netns-type=foo", "/nonexistent/netns", "tap0"],
        "existing path expected when --netns-type=path: No such file or directory\n",
        True,
    ),
    (["--userns-path=/nonexistent/userns", "1", "tap0"], "userns path doesn't exist: /nonexistent/userns\n", True),
    (["--target-type=x", "1", "tap0"], '--target-type must be either "netns" or "bess"\n', True),
    (["--target-type=bess", "-c", "/tmp/x"], "--configure conflicts with --target-type=bess\n", True),
    (["--target-type=bess", "--netns-type=pid", "/tmp/x"], "--netns-type conflicts with --target-type=bess\n", True),
    (["--target-type=bess"], "", True),
    (["--outbound-addr=bogus", "1", "tap0"], "outbound-addr has to be valid ipv4 address or interface name.\n", False),
]


@pytest.mark.parametrize("argv,stderr,usage", ERROR_CASES, ids=[" ".join(c[0]) or "(none)" for c in ERROR_CASES])
def test_error_messages_and_status(argv, stderr, usage):
    done = fails(argv)
    assert done.status == 1
    assert done.stderr == stderr
    assert (usage_text(PROG) in done.stdout) is usage


def test_help_names_every_option_clients_look_for():
    done = fails(["--help"])
    assert done.status == 0 and done.stderr == ""
    assert done.stdout.startswith(f"Usage: {PROG} [OPTION]... PID|PATH [TAPNAME]\n")
    # Podman and RootlessKit feature-detect by substring (compat spec §1.3).
    for word in (
        "--disable-host-loopback",
        "--mtu",
        "--enable-sandbox",
        "--enable-seccomp",
        "--cidr",
        "--outbound-addr",
        "--enable-ipv6",
        "--netns-type",
        "--api-socket",
        "-c, --configure",
        "-e, --exit-fd=FD",
        "-r, --ready-fd=FD",
        "-m, --mtu=MTU",
        "-6, --enable-ipv6",
        "-a, --api-socket=PATH",
        "--userns-path=PATH",
        "--outbound-addr6=IPv6",
        "--disable-dns",
        "--macaddress=MAC",
        "--target-type=TYPE",
        "-h, --help",
        "-v, --version",
        "default=1500, max=65521",
        "default=10.0.2.0/24",
    ):
        assert word in done.stdout, word


def test_version_block():
    done = fails(["-v"])
    assert done.status == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("slirpnet version ")
    assert lines[1].startswith("commit: ")
    assert lines[2].startswith("libslirp: ")
    assert "SLIRP_CONFIG_VERSION_MAX: 4" in lines
    assert lines[4].startswith("libseccomp: ")


def test_gnu_parsing_interleaved_bundled_prefixes():
    cfg = parse_args(["-c6", "-e10", "--conf", "--api=x", "1", "--mtu", "9000", "tap1", "--cidr=10.0.135.128/25"])
    assert cfg.configure and cfg.enable_ipv6
    assert cfg.exit_fd == 10 and cfg.api_socket == "x" and cfg.mtu == 9000
    assert (cfg.target, cfg.tapname) == ("1", "tap1")
    assert cfg.plan.guest == bytes([10, 0, 135, 228])
    assert cfg.plan.gateway == bytes([10, 0, 135, 130])
    assert cfg.plan.dns == bytes([10, 0, 135, 131])
    assert cfg.warnings == ["WARNING: Support for IPv6 is experimental"]  # as slirp4netns (compat spec §1.2)


def test_option_argument_may_start_with_dash():
    # getopt takes the next word whatever it is: "-e -1" is exit-fd "-1".
    assert fails(["-e", "-1", "1", "tap0"]).stderr == "exit-fd must be a non-negative integer\n"


def test_too_many_arguments_is_a_warning():
    cfg = parse_args(["1", "tap0", "extra"])
    assert cfg.warnings == ["WARNING: too many arguments"]
    assert cfg.tapname == "tap0"


def test_tapname_truncated_to_ifnamsiz():
    cfg = parse_args(["1", "a" * 20])
    assert cfg.tapname == "a" * 15


def test_macaddress_after_configure_and_before():
    assert parse_args(["--macaddress", "02:11:22:33:44:55", "-c", "1", "tap0"]).mac == bytes.fromhex("021122334455")
    assert parse_args(["-c", "--macaddress=2:1:2:3:4:5", "1", "tap0"]).mac == bytes.fromhex("020102030405")


def test_deprecated_aliases_warn_and_work():
    cfg = parse_args(["--no-host-loopback", "--create-sandbox", "1", "tap0"])
    assert cfg.disable_host_loopback and cfg.enable_sandbox
    assert len(cfg.warnings) == 2 and all("deprecated" in w for w in cfg.warnings)


def test_netns_type_path_and_userns(tmp_path):
    ns = tmp_path / "netns"
    ns.write_text("")
    cfg = parse_args(["--netns-type=path", f"--userns-path={ns}", str(ns), "tap0"])
    assert cfg.netns_type == "path" and cfg.target == str(ns) and cfg.userns_path == str(ns)


def test_outbound_addr_literal_and_interface():
    cfg = parse_args(["--outbound-addr=127.0.0.1", "--outbound-addr6=::1", "1", "tap0"])
    assert cfg.outbound4 == bytes([127, 0, 0, 1]) and cfg.outbound6 == bytes(15) + b"\x01"
    cfg = parse_args(["--outbound-addr=lo", "1", "tap0"])
    assert cfg.outbound4 == bytes([127, 0, 0, 1])
    assert fails(["--outbound-addr6=127.0.0.1", "1", "tap0"]).stderr.startswith("outbound-addr6 has to be")


def test_small_mtu_is_a_clear_error():
    done = fails(["-m", "67", "1", "tap0"])
    assert done.status == 1 and "at least 68" in done.stderr
    done = fails(["-6", "-m", "1279", "1", "tap0"])
    assert done.status == 1 and "IPv6" in done.stderr


def test_api_socket_path_too_long():
    done = fails(["--api-socket", "a" * 108, "1", "tap0"])
    assert done.stderr == "the specified API socket path is too long (>= 108)\n"


# -- the getopt model on its own ----------------------------------------------

LONG = [LongOption("alpha", True, "a"), LongOption("alphabet", False, "B"), LongOption("beta", False, "b")]


def test_getopt_exact_match_beats_longer_names():
    opts, pos = getopt_long(["--alpha", "v", "x"], "a:b", LONG)
    assert opts == [("a", "v")] and pos == ["x"]


def test_getopt_double_dash_and_lone_dash():
    opts, pos = getopt_long(["-b", "-", "--", "-b", "--beta"], "a:b", LONG)
    assert opts == [("b", None)] and pos == ["-", "-b", "--beta"]


def test_getopt_require_order_stops_at_first_positional():
    opts, pos = getopt_long(["-b", "ping", "-c1", "host"], "a:b", LONG, require_order=True)
    assert opts == [("b", None)] and pos == ["ping", "-c1", "host"]


def test_getopt_ambiguous_prefix_lists_candidates():
    with pytest.raises(GetoptError) as info:
        getopt_long(["--al"], "a:b", LONG)
    assert str(info.value) == "option '--al' is ambiguous; possibilities: '--alpha' '--alphabet'"


# -- differential: the real slirp4netns on the same argv ---------------------

SLIRP4NETNS = shutil.which("slirp4netns")
# Every case above fails before slirp4netns touches a namespace.  (Where
# slirpnet deliberately differs — clearer texts for --outbound-addr6 and small
# MTUs, the API socket path checked before the TAP is made — there is no
# differential case.)
DIFFERENTIAL = ERROR_CASES


@pytest.mark.skipif(SLIRP4NETNS is None, reason="slirp4netns is not installed (tests/run installs it)")
@pytest.mark.parametrize("argv,stderr,usage", DIFFERENTIAL, ids=[" ".join(c[0]) or "(none)" for c in DIFFERENTIAL])
def test_same_as_slirp4netns(argv, stderr, usage):
    real = subprocess.run(["slirp4netns", *argv], executable=SLIRP4NETNS, capture_output=True, text=True, timeout=10)
    ours = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'slirp4netns'; from slirp.cli import main; sys.exit(main())", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert ours.returncode == real.returncode
    # slirp4netns prints some messages without a final newline; glibc's
    # messages carry argv[0].
    assert ours.stderr.rstrip("\n") == real.stderr.rstrip("\n")
    assert ("Usage:" in ours.stdout) == ("Usage:" in real.stdout)


def test_datapath_kind_checks_the_environment():
    from slirp.datapath import DATAPATH_KINDS, datapath_kind

    assert datapath_kind({}) == "native"
    assert datapath_kind({"SLIRPNET_DATAPATH": ""}) == "native"
    for kind in DATAPATH_KINDS:
        assert datapath_kind({"SLIRPNET_DATAPATH": kind}) == kind
    with pytest.raises(ValueError, match="SLIRPNET_DATAPATH must be one of native, native-sync, python, off, not 'fast'"):
        datapath_kind({"SLIRPNET_DATAPATH": "fast"})
