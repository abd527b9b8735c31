"""A PNG of the medians (matplotlib, the ``bench`` extra); rows that failed are labelled."""

from __future__ import annotations

import pathlib

from .report import fmt, machine_line

PANELS = [
    ("TCP throughput out (Gbit/s)", [("tcp_out_1", "1 stream"), ("tcp_out_4", "4 streams")]),
    ("TCP throughput in (Gbit/s)", [("tcp_in_1", "1 stream"), ("tcp_in_4", "4 streams")]),
    ("UDP out delivered (Gbit/s)", [("udp_out", "delivered")]),
    ("Request/response median (µs)", [("rr_out_median", "out"), ("rr_in_median", "in")]),
    ("Connections per second", [("conn_out", "out"), ("conn_in", "in")]),
    ("Helper CPU (s per GB)", [("cpu_out", "out"), ("cpu_in", "in")]),
]


def plot(doc: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(doc["rows"].values())
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (title, series) in zip(axes.flat, PANELS):
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
            if all((r["summary"].get(k) or {}).get("median") is None for k, _ in series):
                reason = "n/a" if all("skipped" in (r["summary"].get(k) or {}) for k, _ in series) else "failed"
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
