"""Pure parts of the sandbox (compat spec §7): which files to bind, which
capabilities to drop, mountinfo parsing; and the rule that nothing imports a
module lazily after the sandbox has hidden the file system."""

from __future__ import annotations

import ast
import os
import pathlib
import stat

from slirp import linux, sandbox

ROOT = pathlib.Path(__file__).resolve().parents[2]


class FakeFs:
    """lstat/readlink over a dict: path -> "dir" | "file" | ("link", target)."""

    def __init__(self, entries: dict):
        self.entries = {"/": "dir", **entries}

    def lstat(self, path: str):
        kind = self.entries.get(path)
        if kind is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        mode = {"dir": stat.S_IFDIR, "file": stat.S_IFREG}.get(kind if isinstance(kind, str) else "", stat.S_IFLNK)
        return os.stat_result((mode | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, 0))

    def readlink(self, path: str) -> str:
        kind = self.entries[path]
        assert isinstance(kind, tuple)
        return kind[1]

    def plan(self, path: str) -> sandbox.ExtraBinds:
        return sandbox.plan_file_binds(path, lstat=self.lstat, readlink=self.readlink)


def test_plain_file_in_etc_needs_nothing():
    fs = FakeFs({"/etc": "dir", "/etc/resolv.conf": "file"})
    assert fs.plan("/etc/resolv.conf").empty()


def test_link_into_run_needs_nothing():
    fs = FakeFs(
        {
            "/etc": "dir",
            "/etc/resolv.conf": ("link", "../run/systemd/resolve/stub-resolv.conf"),
            "/run": "dir",
            "/run/systemd": "dir",
            "/run/systemd/resolve": "dir",
            "/run/systemd/resolve/stub-resolv.conf": "file",
        }
    )
    assert fs.plan("/etc/resolv.conf").empty()


def test_link_outside_binds_the_real_file():
    fs = FakeFs(
        {
            "/etc": "dir",
            "/etc/resolv.conf": ("link", "/mnt/wsl/resolv.conf"),
            "/mnt": "dir",
            "/mnt/wsl": "dir",
            "/mnt/wsl/resolv.conf": "file",
        }
    )
    plan = fs.plan("/etc/resolv.conf")
    assert plan.file == "/mnt/wsl/resolv.conf"
    assert plan.symlinks == []  # the link itself is in /etc, bound whole
    assert plan.dirs == ["/mnt", "/mnt/wsl"]


def test_link_chain_through_var_run_recreates_the_outside_link():
    # /etc/resolv.conf -> /var/run/resolvconf/resolv.conf, /var/run -> /run
    fs = FakeFs(
        {
            "/etc": "dir",
            "/etc/resolv.conf": ("link", "/var/run/resolvconf/resolv.conf"),
            "/var": "dir",
            "/var/run": ("link", "/run"),
            "/run": "dir",
            "/run/resolvconf": "dir",
            "/run/resolvconf/resolv.conf": "file",
        }
    )
    plan = fs.plan("/etc/resolv.conf")
    assert plan.file is None  # the file is in /run
    assert plan.symlinks == [("/var/run", "/run")]
    assert plan.dirs == ["/var"]


def test_relative_links_and_dotdot():
    fs = FakeFs(
        {
            "/srv": "dir",
            "/srv/a": "dir",
            "/srv/a/link": ("link", "../b/./c/../resolv.conf"),
            "/srv/b": "dir",
            "/srv/b/c": "dir",
            "/srv/b/resolv.conf": "file",
        }
    )
    plan = fs.plan("/srv/a/link")
    assert plan.symlinks == [("/srv/a/link", "../b/./c/../resolv.conf")]
    assert plan.file == "/srv/b/resolv.conf"
    # /srv/b/c must exist in the new root for "c/.." to resolve there.
    assert plan.dirs == ["/srv", "/srv/a", "/srv/b", "/srv/b/c"]


def test_missing_dangling_looping_or_not_a_file_needs_nothing():
    assert FakeFs({}).plan("/etc/resolv.conf").empty()
    assert FakeFs({"/x": ("link", "/nowhere")}).plan("/x").empty()
    assert FakeFs({"/x": ("link", "/y"), "/y": ("link", "/x")}).plan("/x").empty()
    assert FakeFs({"/d": "dir"}).plan("/d").empty()
    assert FakeFs({"/f": "file"}).plan("/f/resolv.conf").empty()  # ENOTDIR


def test_bound_tree_prefixes_are_whole_components():
    assert sandbox.inside_bound_trees("/etc")
    assert sandbox.inside_bound_trees("/run/x")
    assert not sandbox.inside_bound_trees("/etcetera/resolv.conf")
    assert not sandbox.inside_bound_trees("/running")


def test_bounding_set_keeps_only_net_bind_service():
    drop = sandbox.bounding_caps_to_drop(40)
    assert len(drop) == 40 and linux.CAP_NET_BIND_SERVICE not in drop
    assert drop[0] == 0 and drop[-1] == 40


def test_kept_caps_is_net_bind_service_if_held():
    assert sandbox.kept_caps((1 << 41) - 1) == 1 << 10
    assert sandbox.kept_caps(0) == 0
    assert sandbox.kept_caps(1 << 21) == 0  # CAP_SYS_ADMIN alone: nothing kept


def test_mountinfo_points_are_unescaped_and_submounts_ordered():
    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:25 / /tmp/run rw,nosuid shared:5 - tmpfs tmpfs rw\n"
        "31 30 0:26 / /tmp/run/user/1000/a\\040b rw - tmpfs tmpfs rw\n"
        "32 30 0:27 / /tmp/run/user rw - tmpfs tmpfs rw\n"
        "33 22 0:28 / /tmp/running rw - tmpfs tmpfs rw\n"
    )
    points = sandbox.parse_mountinfo_mount_points(text)
    assert points[2] == "/tmp/run/user/1000/a b"
    assert sandbox.submounts(points, "/tmp/run") == ["/tmp/run/user", "/tmp/run/user/1000/a b"]


# -- nothing imports lazily after the sandbox -----------------------------------

# Function-level imports of modules outside slirp/ and netstack/ (those two are
# preloaded whole by the sandbox).  Each entry runs only before the sandbox.
ALLOWED_LAZY_IMPORTS = {
    ("slirp/configure.py", "configure_link"),  # pyroute2: the namespace child only
    ("slirp/configure.py", "step"),  # os, inside configure_link
}


def function_level_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if func is not None and isinstance(child, ast.Import):
                for alias in child.names:
                    yield func, alias.name
            elif func is not None and isinstance(child, ast.ImportFrom) and child.level == 0:
                yield func, child.module
            yield from visit(child, func)

    yield from visit(tree, None)


def test_no_lazy_imports_of_outside_modules():
    offenders = []
    for package in ("slirp", "netstack"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for func, module in function_level_imports(path):
                if module.split(".")[0] in ("slirp", "netstack"):
                    continue
                if (rel, func) not in ALLOWED_LAZY_IMPORTS:
                    offenders.append(f"{rel}:{func}() imports {module}")
    assert offenders == [], "hoist these to module level (after --enable-sandbox nothing can be imported)"
