"""``--enable-sandbox``: confine the running slirpnet process, as slirp4netns does (compat spec §7).

Theory of operation
-------------------
slirpnet faces an untrusted container: every frame it parses comes from
there.  Once its fds are open it needs no file system beyond what it re-reads
(resolv.conf) and no privilege beyond binding low ports, so :func:`apply`
takes everything else away from the process the caller started, after the
TAP, the host-side sockets and the API socket exist and before the ready
byte is written:

1. **Single-threaded check.**  setns(CLONE_NEWUSER) refuses a threaded
   process, and mount-namespace, root and capability changes apply to the
   calling thread only; a thread started earlier would stay outside the
   sandbox.  /proc/self/task must list one task (uvloop starts libuv's
   thread pool lazily, and nothing before us asks it for work).
2. **Preload.**  After pivot_root the interpreter can no longer open its
   own files, so everything it will need is loaded now: every module of the
   ``slirp`` and ``netstack`` packages (so a function-level import anywhere
   is a cache hit), the codecs and stdlib modules used lazily
   (:data:`PRELOAD_MODULES`), the native datapath ``slirp._native`` if it is
   built, uvloop, and libseccomp.  /proc/sys/kernel/cap_last_cap is read now
   too.
3. **User namespace.**  A caller that is not root (euid != 0) joins the
   target's user namespace (``/proc/PID/ns/user`` in pid mode — never
   ``--userns-path``; in path mode none is joined) and sets its effective
   gid and uid to 0 there, which gives it the capabilities it needs below.
   In path mode a non-root caller outside the user namespace therefore
   fails with ``setegid(0): ...`` and ``parent failed`` (exit 1), as
   slirp4netns does.  Root (real root, or root of a user namespace as under
   Podman) stays where it is.
4. **Mount namespace.**  unshare(CLONE_NEWNS), then ``/`` is made
   recursively *private*: from here on no mount or unmount event propagates
   between our namespace and the caller's, in either direction (a tmpfs the
   caller mounted under an rshared /run stays mounted when we detach our
   old root below).
5. **New root.**  A 1 KiB tmpfs (nosuid, nodev, noexec, mode 0755) is
   mounted on /tmp; /etc and /run are bind-mounted into it recursively and
   made read-only, nosuid, nodev, noexec on every mount of the subtree
   (mount_setattr(AT_RECURSIVE); before Linux 5.12 each mount is remounted
   by path, and mounts we cannot reach — another user's 0700 FUSE mount
   under /run/user — are left as they are, with a warning).  If the
   resolv.conf that slirpnet re-reads (``--resolv-conf``, default
   /etc/resolv.conf) resolves outside /etc and /run, the symlinks met on the
   way that lie outside them are recreated and the file itself is
   bind-mounted read-only at its real path, so DNS keeps working.  Sources
   are opened (O_PATH) before the tmpfs is mounted, so a source under /tmp
   is not hidden by it.
6. **pivot_root** into the tmpfs (``pivot_root(".", ".")``), detach the old
   root (MNT_DETACH: the whole old tree goes away in our namespace only),
   chdir("/"), and remount the new root read-only (failure ignored).
7. **Privileges.**  no_new_privs; ambient capabilities cleared; every
   capability but CAP_NET_BIND_SERVICE dropped from the bounding set;
   effective, permitted and inheritable set to exactly {CAP_NET_BIND_SERVICE}
   (or nothing, if the process did not hold even that).

Invariants afterwards: the process sees only /etc and /run (read-only) and
possibly one resolv.conf file; it holds no capability but
CAP_NET_BIND_SERVICE and can never gain any (no_new_privs, bounding set);
the caller's mount namespace is unchanged.

Limits — what it does NOT do: the host network namespace and every fd
already open (TAP, sockets, API socket, inherited fds) stay fully usable;
/etc and /run stay readable (including secrets a uid may read there); the
process keeps its uid, so it can still signal and ptrace-attach to the
caller's other processes unless --enable-seccomp blocks ptrace; no resource
limits are set.  A resolv.conf outside /etc and /run is bound as a file: a
rewrite in place is seen, but a replacement by rename (or a re-pointed
/etc/resolv.conf symlink) is not — inside /etc and /run both are.  Nothing may import a module, dlopen a library or exec
after this step (glibc's NSS modules for files and dns are built into libc
2.34+; others are not available in the sandbox).

Test-only hook: ``SLIRPNET_TEST_SANDBOX_NO_MOUNT_SETATTR=1`` takes the
pre-5.12 remount path even where mount_setattr exists, so the tests cover
both.  Nothing else reads it.
"""

from __future__ import annotations

import codecs
import errno
import importlib
import os
import pkgutil
import re
import stat
import sys
from dataclasses import dataclass, field

from . import linux, seccomp

BOUND_TREES = ("/etc", "/run")
NEW_ROOT = "/tmp"  # where the root tmpfs is mounted before pivot_root
ROOT_TMPFS_OPTIONS = "size=1k,mode=0755"
MAX_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS
CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"
CAP_LAST_CAP_DEFAULT = 40  # CAP_CHECKPOINT_RESTORE, Linux 5.9
READ_ONLY_ATTRS = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC
READ_ONLY_REMOUNT = (
    linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
)
NO_MOUNT_SETATTR_ENV = "SLIRPNET_TEST_SANDBOX_NO_MOUNT_SETATTR"

# Loaded lazily by the stdlib or by code paths that run after the sandbox.
PRELOAD_MODULES = (
    "encodings.idna",  # socket calls with host names (pulls in stringprep, unicodedata)
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "json",
    "traceback",
    "linecache",
    "uvloop",
)
PRELOAD_PACKAGES = ("slirp", "netstack")


class SandboxError(Exception):
    """A sandbox step failed; ``str()`` is the perror-style line to print."""


def _fail(step: str, err: OSError) -> SandboxError:
    return SandboxError(f"{step}: {err.strerror or os.strerror(err.errno)}")


# -- pure parts ---------------------------------------------------------------


def inside_bound_trees(path: str, trees=BOUND_TREES) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)


@dataclass
class ExtraBinds:
    """What the new root needs besides /etc and /run for one file to resolve.

    ``dirs`` are real directories to create, ``symlinks`` (location, target)
    pairs to recreate as they are, ``file`` the file to bind-mount at the
    same path (None when it already lies inside the bound trees)."""

    dirs: list[str] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    file: str | None = None

    def empty(self) -> bool:
        return not (self.dirs or self.symlinks or self.file)


def plan_file_binds(path: str, lstat=os.lstat, readlink=os.readlink, trees=BOUND_TREES) -> ExtraBinds:
    """Walk ``path`` component by component as the kernel does and say what
    the new root needs so that ``path`` opens the same file there.

    Only what lies outside ``trees`` is listed (the trees are bound whole).
    A path that does not resolve to a regular file needs nothing (an empty
    plan): there is nothing to bind, and the reader copes with a missing file."""
    plan = ExtraBinds()
    pending = [c for c in path.split("/") if c]
    resolved = "/"
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            resolved = os.path.dirname(resolved) or "/"
            continue
        candidate = os.path.join(resolved, comp)
        try:
            st = lstat(candidate)
        except OSError:
            return ExtraBinds()
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return ExtraBinds()
            try:
                target = readlink(candidate)
            except OSError:
                return ExtraBinds()
            if not inside_bound_trees(candidate, trees):
                plan.symlinks.append((candidate, target))
            if target.startswith("/"):
                resolved = "/"
            pending[:0] = [c for c in target.split("/") if c]
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return ExtraBinds()  # ENOTDIR
        if not pending and not stat.S_ISREG(st.st_mode):
            return ExtraBinds()
        resolved = candidate
        if pending and resolved != "/" and not inside_bound_trees(resolved, trees):
            plan.dirs.append(resolved)
    if resolved != "/" and not inside_bound_trees(resolved, trees):
        plan.file = resolved
    if plan.file is None and not plan.symlinks:
        return ExtraBinds()
    return plan


def bounding_caps_to_drop(last_cap: int, keep: int = linux.CAP_NET_BIND_SERVICE) -> list[int]:
    """Every capability number up to ``last_cap`` but ``keep``."""
    return [cap for cap in range(last_cap + 1) if cap != keep]


def kept_caps(permitted: int, keep: int = linux.CAP_NET_BIND_SERVICE) -> int:
    """The one capability we keep, as a mask, if we hold it at all."""
    return permitted & (1 << keep)


def parse_mountinfo_mount_points(text: str) -> list[str]:
    """Field 5 of each /proc/self/mountinfo line, octal escapes undone."""
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(_unescape_mountinfo(fields[4]))
    return points


def _unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def submounts(mount_points: list[str], top: str) -> list[str]:
    """Mount points strictly below ``top``, outermost first."""
    below = [p for p in mount_points if p.startswith(top.rstrip("/") + "/")]
    return sorted(set(below), key=lambda p: p.count("/"))


# -- the steps ------------------------------------------------------------------


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError as err:
        raise _fail("sandbox: /proc/self/task (is /proc mounted?)", err) from None


def preload() -> None:
    """Load now everything the process will need once its files are gone."""
    for package_name in PRELOAD_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            _preload_module(info.name)
    for name in PRELOAD_MODULES:
        _preload_module(name)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and getattr(stream, "encoding", None):
            codecs.lookup(stream.encoding)
    try:
        seccomp.library()
    except seccomp.SeccompError:
        pass  # --enable-seccomp reports it


def _preload_module(name: str) -> None:
    """Import ``name`` if it can be: one that cannot be imported now could not
    be later either, sandbox or not, and its users already handle that
    (e.g. slirp._native not built, and what imports it: the Python datapath
    is used instead)."""
    try:
        importlib.import_module(name)
    except ImportError:
        pass


def read_cap_last_cap(path: str = CAP_LAST_CAP_PATH) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return CAP_LAST_CAP_DEFAULT


def join_user_namespace(cfg) -> None:
    """Step 3: a non-root caller joins the target's userns (pid mode) and becomes 0 there."""
    if os.geteuid() == 0:
        return
    if cfg.netns_type == "pid":
        path = f"/proc/{cfg.pid}/ns/user"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise _fail(f"open({path})", err) from None
        try:
            linux.setns(fd, linux.CLONE_NEWUSER)
        except OSError as err:
            raise _fail("setns(CLONE_NEWUSER)", err) from None
        finally:
            os.close(fd)
    try:
        os.setegid(0)
    except OSError as err:
        raise _fail("setegid(0)", err) from None
    try:
        os.seteuid(0)
    except OSError as err:
        raise _fail("seteuid(0)", err) from None


def _open_path(path: str) -> int | None:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _fail(f"open({path})", err) from None


def _make_read_only(target: str, recursive: bool, no_mount_setattr: bool) -> int:
    """Read-only, nosuid, nodev, noexec on ``target`` (and the mounts below it).

    Returns how many mounts below could not be changed (pre-5.12 path only)."""
    if not no_mount_setattr:
        try:
            linux.mount_setattr(target, linux.AT_RECURSIVE if recursive else 0, READ_ONLY_ATTRS)
            return 0
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EOPNOTSUPP):
                raise _fail(f"mount_setattr({target})", err) from None
    try:
        linux.mount(None, target, None, READ_ONLY_REMOUNT)
    except OSError as err:
        raise _fail(f"remount({target}, read-only)", err) from None
    if not recursive:
        return 0
    with open("/proc/self/mountinfo") as f:
        below = submounts(parse_mountinfo_mount_points(f.read()), target)
    missed = 0
    for point in below:
        try:
            linux.mount(None, point, None, READ_ONLY_REMOUNT)
        except OSError:
            missed += 1
    return missed


def _bind(fd: int, target: str, recursive: bool) -> None:
    flags = linux.MS_BIND | (linux.MS_REC if recursive else 0)
    try:
        linux.mount(f"/proc/self/fd/{fd}", target, None, flags)
    except OSError as err:
        raise _fail(f"mount(--bind {target})", err) from None


def build_root(cfg, warn) -> None:
    """Steps 4–6: new mount namespace, tmpfs root with /etc and /run, pivot_root."""
    no_mount_setattr = os.environ.get(NO_MOUNT_SETATTR_ENV) == "1"
    plan = plan_file_binds(os.path.abspath(cfg.resolv_conf))
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError as err:
        raise _fail("unshare(CLONE_NEWNS)", err) from None
    try:
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    except OSError as err:
        raise _fail("mount(/, MS_REC|MS_PRIVATE)", err) from None
    # Opened in the new namespace (a bind source must be a mount of the
    # caller's current namespace) and before the tmpfs may hide them.
    tree_fds: list[tuple[str, int | None]] = []
    file_fd = None
    try:
        for tree in BOUND_TREES:
            tree_fds.append((tree, _open_path(tree)))
        file_fd = _open_path(plan.file) if plan.file else None
        try:
            linux.mount(
                "tmpfs", NEW_ROOT, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, ROOT_TMPFS_OPTIONS
            )
        except OSError as err:
            raise _fail(f"mount(tmpfs, {NEW_ROOT})", err) from None
        missed = 0
        for tree, fd in tree_fds:
            if fd is None:
                continue
            target = NEW_ROOT + tree
            os.mkdir(target, 0o755)
            _bind(fd, target, recursive=True)
            missed += _make_read_only(target, recursive=True, no_mount_setattr=no_mount_setattr)
        for directory in plan.dirs:
            os.makedirs(NEW_ROOT + directory, 0o755, exist_ok=True)
        for location, link_target in plan.symlinks:
            os.makedirs(os.path.dirname(NEW_ROOT + location), 0o755, exist_ok=True)
            os.symlink(link_target, NEW_ROOT + location)
        if file_fd is not None:
            target = NEW_ROOT + plan.file
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            _bind(file_fd, target, recursive=False)
            _make_read_only(target, recursive=False, no_mount_setattr=no_mount_setattr)
        if missed:
            warn(f"WARNING: sandbox: {missed} mount(s) under {' and '.join(BOUND_TREES)} could not be made read-only")
        os.chdir(NEW_ROOT)
        try:
            linux.pivot_root(".", ".")
        except OSError as err:
            raise _fail("pivot_root", err) from None
        try:
            linux.umount2(".", linux.MNT_DETACH)
        except OSError as err:
            raise _fail("umount2(old root, MNT_DETACH)", err) from None
        os.chdir("/")
        try:
            linux.mount(None, "/", None, READ_ONLY_REMOUNT)
        except OSError:
            pass  # as slirp4netns: a writable 1 KiB tmpfs is no escape
    except OSError as err:  # mkdir/symlink/open inside the new root
        raise _fail(f"sandbox: {err.filename or 'new root'}", err) from None
    finally:
        for _, fd in tree_fds:
            if fd is not None:
                os.close(fd)
        if file_fd is not None:
            os.close(file_fd)


def drop_privileges(last_cap: int) -> None:
    """Step 7: no_new_privs, no ambient caps, bounding set and sets = {CAP_NET_BIND_SERVICE}."""
    try:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)", err) from None
    try:
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: no ambient capabilities (Linux < 4.3)
            raise _fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", err) from None
    for cap in bounding_caps_to_drop(last_cap):
        try:
            linux.prctl(linux.PR_CAPBSET_DROP, cap)
        except OSError as err:
            if err.errno == errno.EINVAL:  # beyond this kernel's capabilities
                break
            raise _fail(f"prctl(PR_CAPBSET_DROP, {cap})", err) from None
    try:
        _, permitted, _ = linux.capget()
        keep = kept_caps(permitted)
        linux.capset(keep, keep, keep)
    except OSError as err:
        raise _fail("capset", err) from None


def apply(cfg, warn) -> None:
    """Confine this process (steps 1–7 above).  Raises :class:`SandboxError`.

    ``warn(text)`` reports what is not fatal."""
    tasks = thread_count()
    if tasks != 1:
        raise SandboxError(f"sandbox: the process has {tasks} threads; it must be single-threaded here")
    preload()
    last_cap = read_cap_last_cap()
    join_user_namespace(cfg)
    build_root(cfg, warn)
    drop_privileges(last_cap)
