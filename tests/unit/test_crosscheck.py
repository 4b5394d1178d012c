"""Crosscheck's pure parts: wrk's Lua script and command line, its output parser, medians and deltas."""

from __future__ import annotations

import json

import pytest

from servingbench.load import crosscheck as cc

WRK_TEXT = """\
Running 10s test @ http://127.0.0.1:8000/predict/mlp
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    11.09ms    2.31ms  41.22ms   87.12%
    Req/Sec     2.90k   143.21     3.12k    71.00%
  Latency Distribution
     50%   10.63ms
     75%   11.70ms
     90%   13.41ms
     99%   20.05ms
  28873 requests in 10.01s, 4.38MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   2884.41
Transfer/sec:    447.97KB
"""

DONE = {"duration_us": 10010000, "requests": 28873, "bytes": 4592000,
        "errors": {"connect": 0, "read": 2, "write": 0, "status": 7, "timeout": 1},
        "latency_us": {"min": 812, "mean": 11090.5, "stdev": 2310.2, "max": 41220, "p50": 10631, "p90": 13410,
                       "p99": 20047, "p99.9": 35000}}


def test_parse_wrk_time_units():
    assert cc.parse_wrk_time("812.00us") == pytest.approx(812e-6)
    assert cc.parse_wrk_time("10.63ms") == pytest.approx(0.01063)
    assert cc.parse_wrk_time("10.01s") == pytest.approx(10.01)
    assert cc.parse_wrk_time("1.00m") == pytest.approx(60.0)
    with pytest.raises(ValueError):
        cc.parse_wrk_time("3.0parsecs")


def test_parse_wrk_text_report():
    r = cc.parse_wrk_output(WRK_TEXT)
    assert r["requests_per_s"] == pytest.approx(2884.41)
    assert r["latency_distribution_s"] == pytest.approx(
        {"p50": 0.01063, "p75": 0.0117, "p90": 0.01341, "p99": 0.02005})
    assert r["requests"] == 28873 and r["duration_s"] == pytest.approx(10.01)
    assert r["non_2xx_3xx"] == 7
    assert r["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert r["errors"] == 10
    assert r["errors_by_kind"] == {"read": 2, "timeout": 1, "status": 7}
    # successful responses only, over wrk's own duration
    assert r["throughput_rps"] == pytest.approx((28873 - 7) / 10.01)
    assert r["p50_s"] == pytest.approx(0.01063) and r["p99_s"] == pytest.approx(0.02005)


def test_parse_wrk_prefers_the_done_line():
    text = WRK_TEXT + cc.WRK_MARKER + json.dumps(DONE) + "\n"
    r = cc.parse_wrk_output(text)
    assert r["p50_s"] == pytest.approx(0.010631) and r["p99_s"] == pytest.approx(0.020047)
    assert r["duration_s"] == pytest.approx(10.01)
    assert r["throughput_rps"] == pytest.approx((28873 - 7) / 10.01)
    assert r["errors"] == 10 and r["errors_by_kind"] == {"read": 2, "status": 7, "timeout": 1}
    assert r["latency_distribution_s"]["p75"] == pytest.approx(0.0117)  # the text part is kept


def test_parse_wrk_clean_run_has_no_errors():
    text = "\n".join(l for l in WRK_TEXT.splitlines() if not l.strip().startswith(("Socket", "Non-2xx")))
    r = cc.parse_wrk_output(text)
    assert r["errors"] == 0 and r["errors_by_kind"] == {}
    assert r["throughput_rps"] == pytest.approx(28873 / 10.01)


def test_parse_wrk_without_report_fails():
    with pytest.raises(ValueError, match="no wrk report"):
        cc.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize("data, literal", [
    (b"abc", '"abc"'),
    (b'a"b\\c', '"a\\"b\\\\c"'),
    (b"\x00\x01\n9", '"\\000\\001\\0109"'),
    (b"\xff1", '"\\2551"'),  # three digits: the next digit does not extend the escape
])
def test_lua_string_escapes(data, literal):
    assert cc.lua_string(data) == literal


def test_lua_script_sets_method_body_headers_and_done():
    body = bytes(range(256)) + b'{"x": "y"}'
    s = cc.wrk_lua_script("POST", body, {"Content-Type": "application/msgpack", "Authorization": "Bearer t\"k"})
    assert 'wrk.method = "POST"' in s
    assert f"wrk.body = {cc.lua_string(body)}" in s
    assert 'wrk.headers["Content-Type"] = "application/msgpack"' in s
    assert 'wrk.headers["Authorization"] = "Bearer t\\"k"' in s
    assert "done = function(summary, latency, requests)" in s
    assert "request = function" not in s and "response = function" not in s  # wrk's fast static-request path
    assert cc.WRK_MARKER.strip() in s


def test_wrk_argv():
    argv = cc.wrk_argv("/usr/bin/wrk", "http://127.0.0.1:9/p", 32, 10, "/tmp/s.lua", timeout_s=30)
    assert argv == ["/usr/bin/wrk", "-t1", "-c32", "-d10s", "--latency", "--timeout", "30s", "-s", "/tmp/s.lua",
                    "http://127.0.0.1:9/p"]


def test_perf_analyzer_argv_and_csv(tmp_path):
    argv = cc.perf_analyzer_argv("pa", "mlp", "127.0.0.1:8000", 32, 9, tmp_path / "in.json", tmp_path / "o.csv",
                                 {"Authorization": "Bearer x"})
    assert argv[argv.index("--concurrency-range") + 1] == "32:32"
    assert argv[argv.index("--measurement-interval") + 1] == "3000"
    assert argv[argv.index("-H") + 1] == "Authorization:Bearer x"
    csv_text = ("Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency\n"
                "32,2950.5,12,10500,12000,13000,19000\n")
    assert cc.parse_perf_analyzer_csv(csv_text) == pytest.approx(
        {"throughput_rps": 2950.5, "p50_s": 0.0105, "p99_s": 0.019, "errors": 0})


def test_find_perf_analyzer_states_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PERF_ANALYZER", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cc, "_site_packages", lambda: [tmp_path])
    monkeypatch.setattr(cc.sys, "prefix", str(tmp_path))
    r = cc.find_perf_analyzer()
    assert r["path"] is None and "perf_analyzer not found" in r["reason"]


def _round(i, sb, wrk, p50_sb=0.011, p50_wrk=0.0105):
    x = {"p99_s": 0.02, "errors": 0, "client_cpu_pct": 50.0, "server_cpu_pct": 99.0}
    return {"round": i, "servingbench": {**x, "throughput_rps": sb, "p50_s": p50_sb},
            "wrk": {**x, "throughput_rps": wrk, "p50_s": p50_wrk}}


def test_summarize_medians_and_deltas():
    rounds = [_round(0, 2900, 3000), _round(1, 2000, 3100), _round(2, 2950, 2950)]
    floor = {"servingbench": {"floor_p50_s": 0.0008}}
    s = cc.summarize(rounds, floor)
    assert s["median"]["servingbench"]["throughput_rps"] == 2900
    assert s["median"]["wrk"]["throughput_rps"] == 3000
    d = s["deltas"]["wrk"]
    assert d["throughput_rps_pct"] == pytest.approx(-100 / 30)
    assert d["throughput_within_tolerance"] is True
    assert d["per_round_throughput_pct"][1] == pytest.approx(100 * (2000 - 3100) / 3100)
    assert d["p50_s_pct"] == pytest.approx(100 * 0.0005 / 0.0105)
    assert d["p50_within_tolerance"] is True  # 4.8 %
    assert d["p50_abs_s"] == pytest.approx(0.0005) and d["p50_within_floor"] is True
    assert s["client_floor_p50_s"] == 0.0008
    # paired by round: the median of the per-round deltas
    assert d["paired_throughput_pct"] == pytest.approx(-100 / 30)  # rounds: -3.3 %, -35.5 %, 0 %
    assert d["per_round_p50_pct"] == [pytest.approx(100 * 0.0005 / 0.0105)] * 3
    assert d["paired_p50_within_tolerance"] is True


def test_p50_times_rate_separates_a_faster_server_from_a_slower_clock():
    """Little's law: a client that got a 20 % faster server reads a 1/1.2 p50: p50 x rate agrees; a client whose
    latency reads 20 % high at the same rate does not."""
    faster = cc.summarize([_round(i, 3600, 3000, p50_sb=0.010 / 1.2, p50_wrk=0.010) for i in range(3)], None)
    assert faster["deltas"]["wrk"]["paired_p50_x_rate_pct"] == pytest.approx(0.0, abs=1e-9)
    assert faster["deltas"]["wrk"]["paired_p50_within_tolerance"] is False
    slow_clock = cc.summarize([_round(i, 3000, 3000, p50_sb=0.012, p50_wrk=0.010) for i in range(3)], None)
    assert slow_clock["deltas"]["wrk"]["paired_p50_x_rate_pct"] == pytest.approx(20.0)


def test_summarize_outside_tolerance_and_no_floor():
    s = cc.summarize([_round(0, 2000, 3000, p50_sb=0.016)], None)
    d = s["deltas"]["wrk"]
    assert d["throughput_within_tolerance"] is False and d["p50_within_tolerance"] is False
    assert d["p50_within_floor"] is False  # no floor measured: never claimed


def test_record_shape():
    rounds = [_round(0, 2900, 3000)]
    result = {"framework": "mosec", "deployment": None, "model": "mlp", "concurrency": 32, "rounds": rounds,
              **cc.summarize(rounds, None)}
    rec = cc.crosscheck_record(result, cell="mosec/default")
    assert rec["type"] == "crosscheck" and rec["id"] == "crosscheck:mosec/default:mlp:c32"
    assert rec["deltas"]["wrk"]["throughput_rps_pct"] is not None
    assert json.loads(json.dumps(rec)) == rec
    assert cc.rows(result)[-1][0] == "median"


@pytest.mark.parametrize("duration, windows", [(10, 5), (2, 2)])
def test_measurement_windows_fill_the_duration(duration, windows):
    m = cc.measurement_for(duration, 1.0)
    assert m.windows == windows and m.window * m.windows == pytest.approx(duration)
    assert m.max_duration == pytest.approx(duration) and m.warmup == 1.0


def test_summarize_separates_rounds_with_interference():
    rounds = [_round(0, 2000, 3000), _round(1, 2950, 3000), _round(2, 3100, 3000)]
    rounds[0]["servingbench"]["flags"] = ["interference", "generator_bound"]
    s = cc.summarize(rounds, None)
    assert s["interference_rounds"] == [0] and s["generator_bound_rounds"] == [0]
    assert s["conclusive"] is False
    assert s["clean_deltas"]["wrk"]["rounds"] == [1, 2]
    assert s["clean_deltas"]["wrk"]["throughput_rps_pct"] == pytest.approx(100 * (3025 - 3000) / 3000)
    assert cc.summarize(rounds[:1], None)["clean_deltas"] is None


def test_wait_quiet_waits_for_idle_cores(monkeypatch):
    hz = cc.os.sysconf("SC_CLK_TCK")
    busy = iter([0, hz * 0.5, hz * 0.5, hz * 0.55])  # 50 % of a core, then 5 %
    monkeypatch.setattr(cc, "_cpu_busy_ticks", lambda cpus: (next(busy), 0.0))
    monkeypatch.setattr(cc, "_own_cpu_seconds", lambda own: 0.0)
    monkeypatch.setattr(cc.time, "sleep", lambda s: None)
    q = cc.wait_quiet({0, 1}, limit_pct=10, max_wait_s=60)
    assert q["quiet"] is True and q["other_busy_pct"] == pytest.approx(5.0)


def test_wait_quiet_does_not_count_our_own_server(monkeypatch):
    """An idle server that polls (LitServe) is not other work."""
    hz = cc.os.sysconf("SC_CLK_TCK")
    busy = iter([0, hz * 0.5])  # 50 % of a core ...
    own = iter([10.0, 10.45])  # ... 45 % of it the server's and the harness's
    monkeypatch.setattr(cc, "_cpu_busy_ticks", lambda cpus: (next(busy), 0.0))
    monkeypatch.setattr(cc, "_own_cpu_seconds", lambda procs: next(own))
    monkeypatch.setattr(cc.time, "sleep", lambda s: None)
    q = cc.wait_quiet({0}, limit_pct=10, max_wait_s=60, own=lambda: [])
    assert q["quiet"] is True and q["other_busy_pct"] == pytest.approx(5.0)


def test_own_cpu_seconds_counts_the_harness():
    assert cc._own_cpu_seconds(None) > 0


def test_cpu_busy_ticks_reads_proc_stat():
    busy, total = cc._cpu_busy_ticks({0})
    assert 0 <= busy <= total


def test_round_order_alternates():
    assert cc.round_order(0) == ["servingbench", "wrk"]
    assert cc.round_order(1) == ["wrk", "servingbench"]
    assert cc.round_order(2, with_perf_analyzer=True) == ["servingbench", "wrk", "perf_analyzer"]
    assert cc.round_order(3, with_perf_analyzer=True) == ["perf_analyzer", "wrk", "servingbench"]
    assert cc.round_order(1, alternate=False) == ["servingbench", "wrk"]
