"""The benchmark's pure parts: medians, summaries, ratios, formatting, tables, README block.

The harness itself (namespaces, helpers, iperf3) is not run here: it is a
measurement, not a test, and stays out of CI's pass/fail.
"""

from __future__ import annotations

import pytest

from benchmarks import metrics, report


def ok(metrics_: dict, produces: list[str] | None = None, **extra) -> dict:
    return {"metrics": metrics_, "produces": produces or list(metrics_), **extra}


def err(reason: str, produces: list[str]) -> dict:
    return {"error": reason, "produces": produces}


def make_doc(rows: dict) -> dict:
    return {
        "started": "2025-01-02T03:04:05+00:00",
        "duration_s": 600,
        "machine": {"cpu": "Test CPU", "vcpus": 2, "kernel": "6.1.0", "os": "Debian"},
        "versions": {"slirpnet": "abc123", "slirp4netns": "1.2.0", "pasta": "0.0~git", "iperf3": "3.12"},
        "config": {"repetitions": 3, "reference": "ref", "udp_rate": "1G", "udp_datagram_bytes": 1400,
                   "durations": {"tcp_s": 3, "udp_s": 3, "rr_s": 2, "conn_batch_s": 1}},
        "rows": {name: {**row, "summary": report.summarize_row(row["reps"])} for name, row in rows.items()},
    }


# -- statistics -----------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    ([3.0, 1.0, 2.0], 2.0),
    ([4.0, 1.0], 2.5),
    ([None, 5.0, None], 5.0),
    ([None, None], None),
    ([], None),
])
def test_median_ignores_missing_values(values, expected):
    assert report.median(values) == expected


def test_summary_takes_the_median_over_the_repetitions_that_produced_a_metric():
    reps = [
        {"rep": 1, "measurements": {"tcp-out-1": ok({"tcp_out_1": 1.0, "cpu_out": 0.9})}},
        {"rep": 2, "measurements": {"tcp-out-1": err("iperf3: boom", ["tcp_out_1", "cpu_out"])}},
        {"rep": 3, "measurements": {"tcp-out-1": ok({"tcp_out_1": 3.0, "cpu_out": 1.1})}},
    ]
    s = report.summarize_row(reps)
    assert s["tcp_out_1"] == {"median": 2.0, "values": [1.0, 3.0], "n": 2}
    assert s["cpu_out"]["median"] == pytest.approx(1.0)


def test_summary_keeps_the_first_failure_reason_when_nothing_was_measured():
    reps = [{"rep": i, "measurements": {"rr-in": err(f"reason {i}", ["rr_in_min", "rr_in_median", "rr_in_p99"])}}
            for i in (1, 2)]
    s = report.summarize_row(reps)
    assert s["rr_in_median"] == {"error": "reason 1"}


def test_summary_marks_skipped_and_not_applicable_metrics():
    reps = [{"rep": 1, "measurements": {
        "tcp-out-1": ok({"tcp_out_1": 20.0}, produces=["tcp_out_1", "cpu_out"]),  # kernel: no helper CPU
        "rr-out": {"skipped": "same path as pasta-tap", "produces": ["rr_out_median"]},
    }}]
    s = report.summarize_row(reps)
    assert s["cpu_out"] == {"skipped": "not applicable"}
    assert s["rr_out_median"] == {"skipped": "same path as pasta-tap"}


def test_row_failure_names_the_start_error_or_every_distinct_measurement_error():
    never = {"reps": [{"rep": 1, "error": "exited with status 1"}, {"rep": 2, "error": "exited with status 1"}]}
    assert report.row_failure(never) == "exited with status 1"
    broken = {"reps": [{"rep": 1, "error": None, "measurements": {
        "tcp-out-1": err("out broke", ["tcp_out_1"]), "tcp-in-1": err("in broke", ["tcp_in_1"]),
        "rr-in": err("in broke", ["rr_in_median"])}}]}
    broken["summary"] = report.summarize_row(broken["reps"])
    assert report.row_failure(broken) == "out: out broke; in: in broke"
    partly = {"reps": [{"rep": 1, "error": None, "measurements": {
        "tcp-out-1": ok({"tcp_out_1": 1.0}), "tcp-in-1": err("in broke", ["tcp_in_1"])}}]}
    partly["summary"] = report.summarize_row(partly["reps"])
    assert report.row_failure(partly) is None


def test_ratio():
    assert report.ratio(6.0, 2.0) == 3.0
    assert report.ratio(None, 2.0) is None
    assert report.ratio(1.0, None) is None
    assert report.ratio(1.0, 0) is None


# -- formatting -----------------------------------------------------------------

@pytest.mark.parametrize("key, value, text", [
    ("tcp_out_1", 19.234, "19.2"),
    ("tcp_out_1", 0.8712, "0.871"),
    ("tcp_out_1", 123.4, "123"),
    ("rr_out_median", 45.27, "45.3"),
    ("rr_out_p99", 1234.5, "1234"),
    ("conn_in_1", 5612.0, "5.6k"),
    ("conn_in_1", 812.4, "812"),
    ("cpu_out", 1.004, "1.00"),
    ("udp_loss", 65.04, "65.0%"),
    ("tcp_in_4", None, "—"),
])
def test_fmt(key, value, text):
    assert report.fmt(key, value) == text


@pytest.mark.parametrize("r, text", [(1.0, "1.00×"), (0.456, "0.46×"), (12.34, "12.3×"), (None, "—")])
def test_fmt_ratio(r, text):
    assert report.fmt_ratio(r) == text


def test_markdown_table_layout():
    assert report.markdown_table(["row", "a", "b"], [["x", "1", "2"]]) == (
        "| row | a | b |\n|---|--:|--:|\n| x | 1 | 2 |")


def _three_row_doc():
    ref = {"label": "slirp4netns 65520", "reps": [
        {"rep": i, "error": None, "measurements": {
            "tcp-out-1": ok({"tcp_out_1": v, "cpu_out": 1.0}),
            "rr-out": ok({"rr_out_min": 60.0, "rr_out_median": 80.0, "rr_out_p99": 120.0}),
            "conn-in": ok({"conn_in_1": 4100.0, "conn_in_2": 2000.0, "conn_in_3": 1100.0, "conn_in": 2400.0}),
        }} for i, v in ((1, 1.6), (2, 1.7), (3, 1.8))]}
    fast = {"label": "fast", "reps": [
        {"rep": 1, "error": None, "measurements": {
            "tcp-out-1": ok({"tcp_out_1": 8.5, "cpu_out": 0.25}),
            "rr-out": ok({"rr_out_min": 40.0, "rr_out_median": 40.0, "rr_out_p99": 50.0}),
            "conn-in": err("tcpbench cr: connection: Connection refused", metrics.PRODUCES["conn-in"]),
        }}]}
    dead = {"label": "dead", "reps": [{"rep": 1, "error": "exited with status 1 before ready: boom"}]}
    return make_doc({"ref": ref, "fast": fast, "dead": dead})


def test_tables_show_medians_failures_and_ratios():
    doc = _three_row_doc()
    thr = report.throughput_table(doc)
    assert "| slirp4netns 65520 | 1.7 | — |" in thr
    assert "| fast | 8.5 |" in thr
    assert "| dead | failed: exited with status 1 before ready: boom |" in thr
    lat = report.latency_table(doc)
    assert "60.0 / 80.0 / 120" in lat
    assert "4.1k → 2.0k → 1.1k" in lat
    assert "| fast | 40.0 / 40.0 / 50.0 | — | — | failed |" in lat
    rat = report.ratio_table(doc, "ref")
    assert "| slirp4netns 65520 | 1.00× |" in rat
    assert "| fast | 5.00× |" in rat  # 8.5 / 1.7
    assert "0.50×" in rat  # RR: 40 / 80
    assert "0.25×" in rat  # CPU: 0.25 / 1.0


def test_render_has_the_date_machine_method_and_failure_notes():
    text = report.render(_three_row_doc())
    assert text.startswith("Measured 2025-01-02 on Test CPU, 2 vCPUs, Linux 6.1.0; medians of 3 repetitions;")
    assert "iperf3 -u -b 1G -l 1400 -t 3" in text
    assert "- fast (conn-in): tcpbench cr: connection: Connection refused" in text


def test_ratio_table_without_reference_row_says_so():
    doc = _three_row_doc()
    del doc["rows"]["ref"]
    assert "was not run" in report.ratio_table(doc, "ref")


def test_long_row_failures_are_cut_in_the_table_and_kept_whole_in_the_notes():
    reason = "x" * 300
    doc = make_doc({"dead": {"label": "dead", "reps": [{"rep": 1, "error": reason}]}})
    cell = report.throughput_table(doc).splitlines()[2].split(" | ")[1]
    assert cell.endswith("…") and len(cell) <= len("failed: ") + report.REASON_MAX
    assert f"- dead: {reason}" in report.render(doc)


def test_replace_readme_block():
    readme = f"# x\n\nintro\n{report.README_BEGIN}\nold table\n{report.README_END}\n\nmore\n"
    new = report.replace_readme_block(readme, "new table\n")
    assert new == f"# x\n\nintro\n{report.README_BEGIN}\nnew table\n{report.README_END}\n\nmore\n"
    with pytest.raises(ValueError):
        report.replace_readme_block("# no markers\n", "t\n")


# -- selection ------------------------------------------------------------------

def test_select_measurements_by_name_kind_direction_and_pair():
    assert metrics.select_measurements(None) == list(metrics.MEASUREMENTS)
    assert metrics.select_measurements(["rr"]) == ["rr-out", "rr-in"]
    assert metrics.select_measurements(["tcp-in"]) == ["tcp-in-1", "tcp-in-4"]
    assert metrics.select_measurements(["in"]) == ["tcp-in-1", "tcp-in-4", "rr-in", "conn-in", "tcp6-in-1", "rr6-in"]
    assert metrics.select_measurements(["udp", "conn-out"]) == ["udp-out", "conn-out"]
    with pytest.raises(ValueError):
        metrics.select_measurements(["bogus"])


def test_select_ipv6_measurements_by_family_kind_and_pair():
    assert metrics.select_measurements(["ipv6"]) == ["tcp6-out-1", "tcp6-in-1", "rr6-out", "rr6-in"]
    assert metrics.select_measurements(["tcp6"]) == ["tcp6-out-1", "tcp6-in-1"]
    assert metrics.select_measurements(["rr6-out", "tcp-out-1"]) == ["tcp-out-1", "rr6-out"]
    assert "tcp6-out-1" not in metrics.select_measurements(["tcp", "ipv4"])
    assert metrics.needs_ipv6(["tcp-out-1", "rr6-in"]) and not metrics.needs_ipv6(["tcp-out-1"])


def test_every_measurement_produces_metrics_the_report_knows():
    for name, m in metrics.MEASUREMENTS.items():
        assert metrics.PRODUCES[name] and all(k in report.METRICS for k in metrics.PRODUCES[name])
        assert m.route == m.direction + ("6" if m.ip == 6 else "")
        assert name.startswith(m.family_kind + "-")


# -- IPv6 addresses of the guest ----------------------------------------------------

def test_parse_if_inet6_reads_addresses_and_dad_state():
    from benchmarks import procs

    text = ("fd000000000000005055fffe0a000264 03 40 00 40     tap0\n"   # SLAAC, still tentative
            "fe800000000000005055fffe0a000264 03 40 20 80     tap0\n"   # link-local, usable
            "fd000000000000000000000000000100 04 40 00 82     veth1\n"  # nodad, permanent
            "fd000000000000000000000000000101 04 40 00 88     veth1\n"  # DAD failed
            "00000000000000000000000000000001 01 80 10 80       lo\n"
            "garbage\n")
    addrs = procs.parse_if_inet6(text)
    assert [str(a.address) for a in addrs] == [
        "fd00::5055:fffe:a00:264", "fe80::5055:fffe:a00:264", "fd00::100", "fd00::101", "::1"]
    slaac, link, static, dup, lo = addrs
    assert (slaac.dev, slaac.ifindex, slaac.prefix_len, slaac.scope) == ("tap0", 3, 64, 0)
    assert link.scope == 0x20 and lo.prefix_len == 128
    assert [a.usable for a in addrs] == [False, True, True, False, True]


# -- IPv6 in the report ---------------------------------------------------------------

def _ipv6_doc():
    ref = {"label": "slirp4netns 65520", "reps": [{"rep": 1, "error": None, "measurements": {
        "tcp-out-1": ok({"tcp_out_1": 2.0, "cpu_out": 1.0}),
        "tcp6-out-1": ok({"tcp6_out_1": 1.0}),
        "tcp6-in-1": {"skipped": "no IPv6 port forwarding (bad arguments.host_addr)",
                      "produces": metrics.PRODUCES["tcp6-in-1"]},
        "rr6-out": ok({"rr6_out_min": 10.0, "rr6_out_median": 20.0, "rr6_out_p99": 40.0}),
        "rr6-in": {"skipped": "no IPv6 port forwarding (bad arguments.host_addr)",
                   "produces": metrics.PRODUCES["rr6-in"]},
    }}]}
    fast = {"label": "fast", "reps": [{"rep": 1, "error": None, "measurements": {
        "tcp-out-1": ok({"tcp_out_1": 8.0, "cpu_out": 0.5}),
        "tcp6-out-1": ok({"tcp6_out_1": 6.0}),
        "tcp6-in-1": ok({"tcp6_in_1": 5.0}),
        "rr6-out": ok({"rr6_out_min": 5.0, "rr6_out_median": 10.0, "rr6_out_p99": 15.0}),
        "rr6-in": err("tcpbench rr: connect: Connection refused", metrics.PRODUCES["rr6-in"]),
    }}]}
    doc = make_doc({"ref": ref, "fast": fast})
    doc["config"]["durations"].update(tcp6_s=2, rr6_s=1)
    doc["config"]["measurements"] = ["tcp-out-1", "tcp6-out-1", "tcp6-in-1", "rr6-out", "rr6-in"]
    return doc


def test_ipv6_table_has_the_ipv6_figures_and_their_fraction_of_ipv4():
    table = report.ipv6_table(_ipv6_doc())
    assert "| slirp4netns 65520 | 1 (0.50× IPv4) | n/a | 10.0 / 20.0 / 40.0 | n/a |" in table
    assert "| fast | 6 (0.75× IPv4) | 5 | 5.0 / 10.0 / 15.0 | failed |" in table


def test_ratio_table_has_ipv6_columns_only_where_the_reference_has_figures():
    header, _, ref, fast = report.ratio_table(_ipv6_doc(), "ref").splitlines()
    assert header.endswith("| CPU in | TCP6 out | RR6 out |")  # no TCP6 in, RR6 in: slirp4netns has none
    assert fast.endswith("| 6.00× | 0.50× |")
    assert "TCP6" not in report.ratio_table(_three_row_doc(), "ref")


def test_render_with_ipv6_has_its_table_method_and_na_reasons():
    text = report.render(_ipv6_doc())
    assert "; IPv6: TCP iperf3 -t 2, request/response for 1 s." in text
    assert "IPv6, out: guest → fd00::2 → host ::1" in text
    assert ("- slirp4netns 65520 (tcp6-in-1, rr6-in): no IPv6 port forwarding (bad arguments.host_addr)"
            in text.split("Not applicable (n/a):")[1])
    assert "- fast (rr6-in): tcpbench rr: connect: Connection refused" in text


def test_render_without_ipv6_has_no_ipv6_table_and_ipv6_only_has_no_ipv4_tables():
    text = report.render(_three_row_doc())
    assert "IPv6" not in text
    doc = _ipv6_doc()
    for row in doc["rows"].values():
        for rep in row["reps"]:
            rep["measurements"].pop("tcp-out-1")
        row["summary"] = report.summarize_row(row["reps"])
    text = report.render(doc)
    assert "Throughput (Gbit/s" not in text and "Request/response latency" not in text
    assert "| row | TCP6 out | RR6 out |" in text
    assert "| fast | 6 | 5 |" in report.ipv6_table(doc)  # no IPv4 figure to compare with


def test_row_failure_names_ipv6_routes():
    row = {"reps": [{"rep": 1, "error": None, "measurements": {
        "tcp6-out-1": err("out broke", ["tcp6_out_1"]), "rr6-in": err("in broke", ["rr6_in_median"])}}]}
    row["summary"] = report.summarize_row(row["reps"])
    assert report.row_failure(row) == "out IPv6: out broke; in IPv6: in broke"


def test_plot_panels_follow_the_metrics_the_run_produced():
    from benchmarks import plot

    assert [t for t, _ in plot.panels(_ipv6_doc())] == [
        "TCP throughput out (Gbit/s)", "Helper CPU (s per GB)", "IPv6 TCP throughput (Gbit/s)",
        "IPv6 request/response median (µs)"]
    assert not any("IPv6" in t for t, _ in plot.panels(_three_row_doc()))


def test_udp_rate_option():
    from benchmarks.__main__ import parse_args

    assert parse_args([]).udp_rate == "1G"
    assert parse_args(["--udp-rate", "0"]).udp_rate == "0"
