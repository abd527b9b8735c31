"""The seccomp filter: its deny-list, actions, architectures and stdout line (compat spec §8).

The filter is built with the real libseccomp and exported in its pseudo
filter code (PFC), never loaded: loading it would confine the test process.
"""

from __future__ import annotations

import re

import pytest

from slirp import seccomp

# Compat spec §8, verbatim.
SPEC_LIST = (
    "execve, execveat, ptrace, lookup_dcookie, pidfd_getfd, pidfd_open, pidfd_send_signal, "
    "process_vm_readv, process_vm_writev, init_module, finit_module, delete_module, kexec_load, "
    "kexec_file_load, reboot, chroot, pivot_root, mount, umount, umount2, move_mount, open_tree, "
    "fsopen, fsconfig, fsmount, fspick, open_by_handle_at, name_to_handle_at, prctl, setns, unshare"
)


def test_deny_list_is_the_spec_list_in_order():
    assert seccomp.BLOCKED_SYSCALLS == tuple(SPEC_LIST.split(", "))


def test_blocked_line_is_exact():
    assert seccomp.blocked_line(["execve", "ptrace"]) == "seccomp: The following syscalls are blocked: execve ptrace"


def test_kill_process_needs_api_level_3():
    assert seccomp.kill_action(1) == seccomp.SCMP_ACT_KILL_THREAD
    assert seccomp.kill_action(2) == seccomp.SCMP_ACT_KILL_THREAD
    assert seccomp.kill_action(3) == seccomp.SCMP_ACT_KILL_PROCESS
    assert seccomp.kill_action(6) == seccomp.SCMP_ACT_KILL_PROCESS


def test_compat_arches():
    assert seccomp.arches_for(seccomp.SCMP_ARCH_X86_64) == (
        seccomp.SCMP_ARCH_X86_64,
        seccomp.SCMP_ARCH_X86,
        seccomp.SCMP_ARCH_X32,
    )
    assert seccomp.arches_for(seccomp.SCMP_ARCH_AARCH64) == (seccomp.SCMP_ARCH_AARCH64, seccomp.SCMP_ARCH_ARM)
    assert seccomp.arches_for(0xC00000F3) == (0xC00000F3,)  # riscv64: no compat ABI added


def test_probe_env_only_names_on_the_list():
    assert seccomp.probe_from_env({seccomp.PROBE_ENV: "execve"}) == "execve"
    assert seccomp.probe_from_env({seccomp.PROBE_ENV: "read"}) is None
    assert seccomp.probe_from_env({}) is None


def pfc_sections(flt: seccomp.Filter, tmp_path) -> dict[str, dict[str, str]]:
    """arch name -> {syscall name: action} from libseccomp's PFC export."""
    path = tmp_path / "filter.pfc"
    with open(path, "w") as f:
        flt.export_pfc(f.fileno())
    sections: dict[str, dict[str, str]] = {}
    arch = name = None
    for line in path.read_text().splitlines():
        m = re.match(r"# filter for arch (\S+) ", line)
        if m:
            arch = m.group(1)
            sections[arch] = {}
            continue
        m = re.match(r'\s*# filter for syscall "([^"]+)"', line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"\s*action (\S+);", line)
        if m and arch is not None and name is not None:
            sections[arch][name] = m.group(1)
            name = None
    return sections


NOT_ON_ARCH = {"x86_64": set(), "x32": set(), "x86": {"kexec_file_load"}}


@pytest.fixture
def lib():
    try:
        return seccomp.library()
    except seccomp.SeccompError as err:  # pragma: no cover - tests/run installs libseccomp2
        pytest.fail(str(err))


def test_filter_kills_on_every_listed_call_for_every_arch(lib, tmp_path):
    flt = seccomp.Filter(lib)
    try:
        assert flt.blocked == list(seccomp.BLOCKED_SYSCALLS)
        assert flt.unknown == []
        assert flt.action == seccomp.SCMP_ACT_KILL_PROCESS  # libseccomp >= 2.4 on a 4.14+ kernel
        sections = pfc_sections(flt, tmp_path)
    finally:
        flt.release()
    expected_arches = {seccomp.ARCH_NAMES[a] for a in seccomp.arches_for(lib.native_arch())}
    assert set(sections) == expected_arches
    covered = set()
    for arch, rules in sections.items():
        assert set(rules.values()) == {"KILL_PROCESS"}, arch
        assert set(rules) <= set(seccomp.BLOCKED_SYSCALLS), arch
        covered |= set(rules)
        # Every listed call this ABI has is killed (libseccomp leaves out the
        # ones it lacks: i386 has no kexec_file_load).
        missing = set(seccomp.BLOCKED_SYSCALLS) - set(rules)
        if arch in NOT_ON_ARCH:
            assert missing <= NOT_ON_ARCH[arch], (arch, missing)
    assert covered == set(seccomp.BLOCKED_SYSCALLS)


def test_unknown_names_are_reported_not_blocked(lib, tmp_path):
    flt = seccomp.Filter(lib, names=("execve", "no_such_syscall_xyz", "prctl"))
    try:
        assert flt.blocked == ["execve", "prctl"]
        assert flt.unknown == ["no_such_syscall_xyz"]
        sections = pfc_sections(flt, tmp_path)
    finally:
        flt.release()
    for rules in sections.values():
        assert set(rules) == {"execve", "prctl"}


def test_version_is_the_loaded_library(lib):
    assert re.fullmatch(r"\d+\.\d+\.\d+", seccomp.library_version())
    assert seccomp.library_version() == lib.version()
