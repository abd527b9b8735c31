"""python -m benchmarks: slirpnet side by side with slirp4netns, pasta and the kernel.

Run it as an unprivileged user from the checkout root (``benchmarks/run`` does
that, and drops from root to the test user).  ``--help`` lists the options;
the README's "Performance" section explains rows and metrics.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import metrics, procs, report
from .rows import ALL_ROWS, REFERENCE_ROW, ROOT, ROWS, RowFailed

RESULTS_DIR = ROOT / "benchmarks" / "results"
QUICK_ROWS = ["kernel", "slirpnet-native", "slirpnet-python", "slirp4netns-65520", "pasta-tap"]
QUICK_MEASUREMENTS = ["tcp-out-1", "tcp-in-1", "udp-out", "rr-out", "conn-out"]
QUICK_DURATIONS = metrics.Durations(tcp_s=1.0, udp_s=1.0, rr_s=0.5, conn_batch_s=0.3, tcp6_s=1.0, rr6_s=0.5)
TOOLS = ["iperf3", "gcc", "ip", "nsenter", "unshare"]


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="~30 s smoke run: one short repetition of a subset (rows: %s; measurements: %s)"
                        % (", ".join(QUICK_ROWS), ", ".join(QUICK_MEASUREMENTS)))
    p.add_argument("--only", metavar="ROWS",
                   help="comma-separated rows or prefixes (e.g. kernel,slirp4netns,slirpnet-native); "
                        "'all' adds the extra rows")
    p.add_argument("--metrics", metavar="M",
                   help="comma-separated measurements, kinds (tcp, udp, rr, conn; IPv6: tcp6, rr6), "
                        "directions (out, in), kind-direction (tcp-in, rr6-out) or families (ipv4, ipv6)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    p.add_argument("--tcp-seconds", type=float, help="iperf3 -t for TCP and UDP, IPv6 too (default 3; IPv6: 2)")
    p.add_argument("--udp-rate", default=metrics.UDP_RATE,
                   help="iperf3 -b for UDP (default %(default)s; 0: as fast as the guest can send, "
                        "to find a carrier's capacity)")
    p.add_argument("--out-dir", type=pathlib.Path, default=RESULTS_DIR, help="where results go (%(default)s)")
    p.add_argument("--readme", action="store_true",
                   help="also write results/readme.{json,md,png} and replace the table block in README.md")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs slirpnet (default: this one)")
    p.add_argument("--list", action="store_true", help="list rows and measurements, then exit")
    return p.parse_args(argv)


def select_rows(spec: str | None, quick: bool) -> list:
    if not spec:
        return [ALL_ROWS[n] for n in QUICK_ROWS] if quick else list(ROWS)
    chosen = []
    for token in [t.strip() for t in spec.split(",") if t.strip()]:
        if token == "all":
            matches = list(ALL_ROWS.values())
        elif token in ALL_ROWS:
            matches = [ALL_ROWS[token]]
        else:
            matches = [r for r in ROWS if r.name.startswith(token + "-")]
        if not matches:
            raise SystemExit(f"unknown row {token!r}; rows: {', '.join(ALL_ROWS)}")
        chosen += [r for r in matches if r not in chosen]
    return [r for r in ALL_ROWS.values() if r in chosen]  # stable order


def _first_line(argv) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (res.stdout.strip() or res.stderr.strip() or "?").splitlines()[0]


def versions() -> dict:
    commit = os.environ.get("SLIRPNET_BENCH_COMMIT")
    if not commit:
        rev = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True)
        commit = rev.stdout.strip() or "unknown"
    pasta = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "passt"], capture_output=True, text=True)
    return {
        "slirpnet": commit,
        "slirp4netns": _first_line(["slirp4netns", "--version"]).replace("slirp4netns version ", ""),
        "pasta": pasta.stdout.strip() or "unknown",
        "iperf3": _first_line(["iperf3", "--version"]).split(" (")[0].replace("iperf ", ""),
    }


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    osname = "Linux"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {"cpu": cpu, "vcpus": os.cpu_count(), "kernel": platform.release(), "os": osname}


def ensure_native(python: str) -> None:
    """Build slirp._native in place if it is missing (the native rows need it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if subprocess.run([python, "-c", "import slirp._native"], env=env, capture_output=True).returncode == 0:
        return
    print("== building slirpnet's native module (native/build.py)", flush=True)
    res = subprocess.run([python, "native/build.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"   build failed (the native row will say so): {res.stderr.strip()[-300:]}", flush=True)


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, inherited by every helper.

    Podman raises it the same way before it starts slirp4netns or pasta.  Under
    `su`'s default soft limit of 1024, slirp4netns stops accepting forwarded
    connections after ~1000 of them (its closed sockets keep their fds for
    seconds) and each further connection waits ~10 s.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def describe(raw: dict) -> str:
    if "skipped" in raw:
        return f"n/a ({raw['skipped']})"
    if raw.get("not_run"):
        return f"not run: this direction failed already ({raw['error']})"
    if "error" in raw:
        return f"FAILED: {raw['error']}"
    parts = []
    for key, value in raw["metrics"].items():
        unit = report.METRICS[key].unit
        parts.append(f"{key}={report.fmt(key, value)}{'' if unit in ('%',) else ' ' + unit}")
    path = raw.get("path")
    warning = f" — {raw['warning']}" if raw.get("warning") else ""
    return ", ".join(parts) + (f" [via {path}]" if path else "") + warning


def run_row_rep(row, rep: int, selected: list[str], tool, durations, workdir, python) -> dict:
    result = {"rep": rep, "error": None, "measurements": {}}
    share = procs.CpuShare()
    share.start()
    missing = {"slirp4netns": "slirp4netns", "pasta": "pasta"}.get(row.kind)
    if missing and not shutil.which(missing):
        result["error"] = f"{missing} is not installed"
        return result
    topo = running = None
    t0 = time.monotonic()
    try:
        topo = procs.Topology(ipv6=metrics.needs_ipv6(selected))
        running = row.start(topo, workdir, python)
        result["start_s"] = round(time.monotonic() - t0, 2)
        bench = metrics.Bench(topo, running, tool, durations)
        broken: dict[str, str] = {}  # route -> the error that broke it
        for name in selected:
            route = metrics.MEASUREMENTS[name].route
            t1 = time.monotonic()
            if route in running.unsupported:
                raw = {"skipped": running.unsupported[route]}
            elif route in running.errors:
                raw = {"error": running.errors[route]}
            elif reason := running.helper_exit_reason():
                raw = {"error": reason}
            elif route in broken:
                raw = {"error": broken[route], "not_run": True}
            else:
                raw = bench.measure(name)
                if "error" in raw:
                    if reason := running.helper_exit_reason():
                        raw["error"] = f"{raw['error']} ({reason})"
                    broken[route] = raw["error"]
            raw["produces"] = metrics.PRODUCES[name]
            raw["elapsed_s"] = round(time.monotonic() - t1, 2)
            result["measurements"][name] = raw
            print(f"   {row.name:<22} {name:<10} {describe(raw)}", flush=True)
    except RowFailed as e:
        result["error"] = str(e)
        print(f"   {row.name:<22} failed: {e}", flush=True)
    except RuntimeError as e:  # namespace set-up
        result["error"] = f"set-up: {e}"
        print(f"   {row.name:<22} failed: set-up: {e}", flush=True)
    finally:
        if running:
            running.stop()
        if topo:
            topo.close()
        result["other_cpu"] = round(share.other_fraction(), 3)
        result["elapsed_s"] = round(time.monotonic() - t0, 2)
    return result


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for r in ALL_ROWS.values():
            print(f"{r.name:<22} {r.description}{'' if r in ROWS else '  (extra: --only ' + r.name + ')'}")
        print("\nmeasurements:", ", ".join(metrics.MEASUREMENTS))
        return 0
    if os.geteuid() == 0:
        print("python -m benchmarks must run as an unprivileged user (pasta refuses root, and the point is "
              "rootless networking). Use benchmarks/run, which drops from root to the test user, "
              "or run it as an ordinary user.", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (Debian: iperf3 gcc iproute2 util-linux)", file=sys.stderr)
        return 2
    try:  # fail now, not after a 10-minute run
        args.out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out_dir).close()
        if args.readme and not os.access(ROOT / "README.md", os.W_OK):
            raise PermissionError(f"README.md is not writable: {ROOT / 'README.md'}")
    except OSError as e:
        print(f"cannot write results: {e} (use --out-dir DIR)", file=sys.stderr)
        return 2
    rows = select_rows(args.only, args.quick)
    try:
        selected = metrics.select_measurements(
            [t.strip() for t in args.metrics.split(",")] if args.metrics else (QUICK_MEASUREMENTS if args.quick else None))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    reps = args.reps or (1 if args.quick else 3)
    durations = QUICK_DURATIONS if args.quick else metrics.Durations()
    if args.tcp_seconds:
        durations.tcp_s = durations.udp_s = durations.tcp6_s = args.tcp_seconds
    metrics.UDP_RATE = args.udp_rate  # read by every UDP measurement of this run

    nofile = raise_nofile_limit()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    started = datetime.datetime.now().astimezone()
    t0 = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="slirpnet-bench-"))
    doc = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "config": {
            "rows": [r.name for r in rows], "measurements": selected, "repetitions": reps,
            "durations": vars(durations), "udp_rate": metrics.UDP_RATE,
            "udp_datagram_bytes": metrics.UDP_DATAGRAM_BYTES, "udp_socket_buffer": metrics.UDP_SOCKET_BUFFER, "reference": REFERENCE_ROW, "quick": args.quick,
            "nofile_limit": nofile,
        },
        "rows": {r.name: {"label": r.label, "description": r.description, "mtu": r.mtu, "reps": []} for r in rows},
    }
    try:
        tool = metrics.build_tool(ROOT / "benchmarks" / "tcpbench.c", workdir)
        if any(r.kind == "slirpnet" and r.variant == "native" for r in rows):
            ensure_native(args.python)
        print(f"== {len(rows)} rows × {len(selected)} measurements × {reps} repetitions", flush=True)
        for rep in range(1, reps + 1):
            for row in rows:
                print(f"== repetition {rep}/{reps}: {row.name}", flush=True)
                doc["rows"][row.name]["reps"].append(
                    run_row_rep(row, rep, selected, tool, durations, workdir, args.python))
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({e or 'SIGINT'}); stopping everything this run started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    doc["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    doc["duration_s"] = round(time.monotonic() - t0, 1)
    for row in doc["rows"].values():
        row["summary"] = report.summarize_row(row["reps"])
    block = report.render(doc)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    outputs = {"json": args.out_dir / f"{stamp}.json", "md": args.out_dir / f"{stamp}.md",
               "png": args.out_dir / f"{stamp}.png"}
    outputs["json"].write_text(json.dumps(doc, indent=1) + "\n")
    outputs["md"].write_text(block)
    try:
        from . import plot
        plot.plot(doc, outputs["png"])
    except ImportError as e:
        print(f"(no PNG: {e}; install the 'bench' extra for matplotlib)", file=sys.stderr)
        outputs.pop("png")
    if args.readme:
        for kind, path in outputs.items():
            shutil.copyfile(path, args.out_dir / f"readme.{kind}")
        readme = ROOT / "README.md"
        readme.write_text(report.replace_readme_block(readme.read_text(), block))
    print("\n" + block)
    print(f"results: {', '.join(str(p) for p in outputs.values())}; took {doc['duration_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
