"""``--enable-seccomp``: a deny-list seccomp filter, as slirp4netns installs (compat spec §8).

Theory of operation
-------------------
The filter allows every system call except those in :data:`BLOCKED_SYSCALLS`
— the calls that would let a compromised slirpnet run other programs, look
into or steer other processes, change its namespaces, mounts or root, load
kernel code or reboot.  A blocked call kills the whole process
(``SECCOMP_RET_KILL_PROCESS``; ``KILL`` — the calling thread only — on
kernels and libseccomp versions without it), with SIGSYS.  Rules are added
for the native architecture and for the compat ABIs a process of that
architecture can also enter (x86_64: i386 and x32; aarch64: 32-bit arm), so
switching the syscall ABI is no way around the list.

The BPF program is built by libseccomp (``libseccomp.so.2``, present on every
Debian system through ``libseccomp2``), called through ctypes against its
stable C ABI: no build step, no headers, and ``--version`` reports the
library that is really loaded.  The filter is loaded with
``SCMP_FLTATR_CTL_TSYNC`` so that every thread of the process gets it, and
libseccomp sets no_new_privs first (needed by an unprivileged process).

What it does NOT do: it is no allow-list (network, file and memory calls
stay open: the stack needs them), it does not filter arguments, and it
does not stop a process that already holds an fd from using it.

Consequences for slirpnet (audited, and kept true by the tests): after
:func:`apply`, no exec (the ``run`` subcommand forks its command before),
no prctl (libuv names its worker threads with prctl(PR_SET_NAME), so the
caller starts the thread pool *before* the filter: see
``Driver.start_thread_pool``), no setns/unshare/mount (the namespace child
and the sandbox are done before), no pidfd_open (the ``run`` subcommand's
pidfd is opened when the Driver is built).

Test-only hook: ``SLIRPNET_TEST_SECCOMP_PROBE=NAME`` (read at start-up, only
honoured together with ``--enable-seccomp`` and only for a name on the
deny-list) makes the process call that system call with all-zero arguments
once its loop runs — the integration tests use it to see the process die
of SIGSYS.  Nothing else reads it.
"""

from __future__ import annotations

import ctypes
import errno
import os

# Spec §8, in slirp4netns's order (the stdout line lists them in this order).
BLOCKED_SYSCALLS: tuple[str, ...] = (
    "execve",
    "execveat",
    "ptrace",
    "lookup_dcookie",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "process_vm_readv",
    "process_vm_writev",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "chroot",
    "pivot_root",
    "mount",
    "umount",
    "umount2",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_by_handle_at",
    "name_to_handle_at",
    "prctl",
    "setns",
    "unshare",
)

# libseccomp's architecture tokens are the kernel's AUDIT_ARCH_* values.
SCMP_ARCH_X86 = 0x40000003
SCMP_ARCH_X86_64 = 0xC000003E
SCMP_ARCH_X32 = 0x4000003E
SCMP_ARCH_ARM = 0x40000028
SCMP_ARCH_AARCH64 = 0xC00000B7

ARCH_NAMES = {
    SCMP_ARCH_X86: "x86",
    SCMP_ARCH_X86_64: "x86_64",
    SCMP_ARCH_X32: "x32",
    SCMP_ARCH_ARM: "arm",
    SCMP_ARCH_AARCH64: "aarch64",
}

# The compat ABIs a process of the native architecture can also use.
COMPAT_ARCHES: dict[int, tuple[int, ...]] = {
    SCMP_ARCH_X86_64: (SCMP_ARCH_X86, SCMP_ARCH_X32),
    SCMP_ARCH_AARCH64: (SCMP_ARCH_ARM,),
}

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_TSYNC = 4
NR_SCMP_ERROR = -1
API_LEVEL_KILL_PROCESS = 3  # seccomp_api_get() >= 3: SCMP_ACT_KILL_PROCESS works

LIBRARY = "libseccomp.so.2"
PROBE_ENV = "SLIRPNET_TEST_SECCOMP_PROBE"


class SeccompError(Exception):
    """The filter could not be built or loaded; the message says why."""


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


class Libseccomp:
    """The few libseccomp calls we use, typed."""

    def __init__(self, name: str = LIBRARY):
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        lib.seccomp_version.argtypes = ()
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_arch_native.argtypes = ()
        lib.seccomp_arch_add.restype = ctypes.c_int
        lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = (
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
        )
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        lib.seccomp_export_pfc.restype = ctypes.c_int
        lib.seccomp_export_pfc.argtypes = (ctypes.c_void_p, ctypes.c_int)
        self.lib = lib
        try:
            lib.seccomp_api_get.restype = ctypes.c_uint
            lib.seccomp_api_get.argtypes = ()
            self._api_get = lib.seccomp_api_get
        except AttributeError:  # libseccomp < 2.4
            self._api_get = None

    def version(self) -> str:
        v = self.lib.seccomp_version().contents
        return f"{v.major}.{v.minor}.{v.micro}"

    def api_level(self) -> int:
        return self._api_get() if self._api_get is not None else 1

    def native_arch(self) -> int:
        return self.lib.seccomp_arch_native()

    def resolve(self, name: str) -> int:
        """The native syscall number, a negative pseudo-number for a call this
        architecture lacks, or NR_SCMP_ERROR for a name libseccomp doesn't know."""
        return self.lib.seccomp_syscall_resolve_name(name.encode())


_library: Libseccomp | None = None
_library_error: str | None = None


def library() -> Libseccomp:
    """libseccomp, loaded once (before any sandbox hides the file system)."""
    global _library, _library_error
    if _library is None:
        if _library_error is not None:
            raise SeccompError(_library_error)
        try:
            _library = Libseccomp()
        except (OSError, AttributeError) as err:
            _library_error = f"cannot load {LIBRARY}: {err}"
            raise SeccompError(_library_error) from None
    return _library


def library_version() -> str:
    """What ``--version`` prints after ``libseccomp:``: the version of the
    library this process loads, or ``none``."""
    try:
        return library().version()
    except SeccompError:
        return "none"


def kill_action(api_level: int) -> int:
    """KILL_PROCESS where libseccomp and the kernel support it, else KILL (the thread)."""
    return SCMP_ACT_KILL_PROCESS if api_level >= API_LEVEL_KILL_PROCESS else SCMP_ACT_KILL_THREAD


def arches_for(native: int) -> tuple[int, ...]:
    """The native architecture token followed by its compat ABIs."""
    return (native, *COMPAT_ARCHES.get(native, ()))


def blocked_line(names) -> str:
    """The exact stdout line slirp4netns prints (without the newline)."""
    return "seccomp: The following syscalls are blocked: " + " ".join(names)


class Filter:
    """A built (not yet loaded) filter: ``blocked`` lists the names it kills on,
    ``unknown`` those libseccomp doesn't know (warned about, not blocked)."""

    def __init__(self, lib: Libseccomp, names=BLOCKED_SYSCALLS, arches: tuple[int, ...] | None = None):
        self.lib = lib
        self.action = kill_action(lib.api_level())
        self.arches = arches if arches is not None else arches_for(lib.native_arch())
        self.blocked: list[str] = []
        self.unknown: list[str] = []
        self.ctx = lib.lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise SeccompError("seccomp_init failed")
        try:
            self._build(names)
        except BaseException:
            self.release()
            raise

    def _build(self, names) -> None:
        lib = self.lib.lib
        for arch in self.arches:
            rc = lib.seccomp_arch_add(self.ctx, arch)
            if rc < 0 and rc != -errno.EEXIST:
                raise SeccompError(f"seccomp_arch_add({ARCH_NAMES.get(arch, hex(arch))}): {os.strerror(-rc)}")
        rc = lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_CTL_TSYNC, 1)
        if rc < 0:
            raise SeccompError(f"seccomp_attr_set(TSYNC): {os.strerror(-rc)}")
        for name in names:
            nr = self.lib.resolve(name)
            if nr == NR_SCMP_ERROR:
                self.unknown.append(name)
                continue
            rc = lib.seccomp_rule_add_array(self.ctx, self.action, nr, 0, None)
            if rc < 0:
                if nr < 0:
                    # A pseudo-number: none of our architectures has this call.
                    self.unknown.append(name)
                    continue
                raise SeccompError(f"seccomp_rule_add({name}): {os.strerror(-rc)}")
            self.blocked.append(name)

    def export_pfc(self, fd: int) -> None:
        """Write libseccomp's human-readable form of the filter to ``fd``."""
        rc = self.lib.lib.seccomp_export_pfc(self.ctx, fd)
        if rc < 0:
            raise SeccompError(f"seccomp_export_pfc: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise SeccompError(f"seccomp_load: {os.strerror(-rc)}")

    def release(self) -> None:
        if self.ctx:
            self.lib.lib.seccomp_release(self.ctx)
            self.ctx = None


def apply(warn) -> list[str]:
    """Build and load the filter for this process; returns the blocked names.

    ``warn(text)`` reports names libseccomp does not know.  Raises
    :class:`SeccompError` when the filter cannot be built or loaded."""
    flt = Filter(library())
    try:
        for name in flt.unknown:
            warn(f"WARNING: seccomp: syscall {name} is not known to libseccomp {flt.lib.version()}: not blocked")
        flt.load()
    finally:
        flt.release()
    return flt.blocked


# -- test-only probe ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def probe_from_env(environ=os.environ) -> str | None:
    """The name in SLIRPNET_TEST_SECCOMP_PROBE if it is on the deny-list, else None."""
    name = environ.get(PROBE_ENV)
    return name if name in BLOCKED_SYSCALLS else None


def probe(name: str) -> int:
    """Call ``name`` with all-zero arguments (test hook; see the module docstring).

    Under the filter the process dies here.  Returns the errno otherwise."""
    nr = library().resolve(name)
    if nr < 0:
        return errno.ENOSYS
    zero = ctypes.c_long(0)
    rc = _libc.syscall(ctypes.c_long(nr), zero, zero, zero, zero, zero, zero)
    return ctypes.get_errno() if rc == -1 else 0
