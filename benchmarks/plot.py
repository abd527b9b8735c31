"""A PNG of the medians (matplotlib, the ``bench`` extra); rows that failed are labelled.

One panel per group of metrics the run produced (the IPv6 panels only with IPv6
measurements), three panels to a line.
"""

from __future__ import annotations

import pathlib

import math

from .report import fmt, machine_line

PANELS = [
    ("TCP throughput out (Gbit/s)", [("tcp_out_1", "1 stream"), ("tcp_out_4", "4 streams")]),
    ("TCP throughput in (Gbit/s)", [("tcp_in_1", "1 stream"), ("tcp_in_4", "4 streams")]),
    ("UDP out delivered (Gbit/s)", [("udp_out", "delivered")]),
    ("Request/response median (µs)", [("rr_out_median", "out"), ("rr_in_median", "in")]),
    ("Connections per second", [("conn_out", "out"), ("conn_in", "in")]),
    ("Helper CPU (s per GB)", [("cpu_out", "out"), ("cpu_in", "in")]),
    ("IPv6 TCP throughput (Gbit/s)", [("tcp6_out_1", "out"), ("tcp6_in_1", "in")]),
    ("IPv6 request/response median (µs)", [("rr6_out_median", "out"), ("rr6_in_median", "in")]),
]
COLUMNS = 3


def panels(doc: dict) -> list:
    """The panels with at least one metric some row has (measured, failed or n/a)."""
    keys = {key for row in doc["rows"].values() for key in row.get("summary", {})}
    return [(title, series) for title, series in PANELS if any(k in keys for k, _ in series)]


def plot(doc: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(doc["rows"].values())
    labels = [r["label"] for r in rows]
    shown = panels(doc) or PANELS[:COLUMNS]
    lines = math.ceil(len(shown) / COLUMNS)
    fig, axes = plt.subplots(lines, COLUMNS, figsize=(15, 4.25 * lines), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, (title, series) in zip(axes.flat, shown):
        n = len(series)
        height = 0.8 / n
        for j, (key, name) in enumerate(series):
            ys = [i + (j - (n - 1) / 2) * height for i in range(len(rows))]
            vals = [(r["summary"].get(key) or {}).get("median") for r in rows]
            bars = ax.barh(ys, [v or 0 for v in vals], height=height, label=name)
            for y, v, bar in zip(ys, vals, bars):
                if v is not None:
                    ax.text(bar.get_width(), y, f" {fmt(key, v)}", va="center", fontsize=7)
        for i, r in enumerate(rows):
            found = [r["summary"][k] for k, _ in series if k in r["summary"]]  # measured, failed or n/a
            if found and all("median" not in s for s in found):
                reason = "n/a" if all("skipped" in s for s in found) else "failed"
                ax.text(0, i, f" {reason}", va="center", fontsize=7, color="gray")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.18)
        if n > 1:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"slirpnet benchmark, {doc['started'][:10]} — {machine_line(doc)} — "
                 f"medians of {doc['config']['repetitions']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
