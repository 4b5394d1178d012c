"""Crosscheck end to end: wrk sends the codec's exact bytes; a 2-round crosscheck against a real LitServe server.

No tolerance is asserted: how far servingbench's client is from wrk is a measurement (docs/crosscheck.md), reported
by `servingbench crosscheck`, not a test outcome.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from servingbench.load import crosscheck as cc

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def wrk():
    path = cc.find_wrk()
    if path is None:
        pytest.fail("wrk is not installed: run scripts/ensure_wrk.sh")
    return path


def test_wrk_sends_the_exact_body_and_headers(wrk, tmp_path):
    seen: list[tuple[str, str, dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not seen:
                seen.append((self.command, self.path, dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    body = bytes(range(256)) * 4 + b'"\\\n'
    try:
        r = cc.run_wrk(wrk, f"http://127.0.0.1:{srv.server_port}/x/y?z=1", "PUT", body,
                       {"Content-Type": "application/octet-stream", "X-Token": 'a"b'}, 1, 1, None, tmp_path,
                       tmp_path / "wrk.log")
    finally:
        srv.shutdown()
    method, path, headers, got = seen[0]
    assert (method, path, got) == ("PUT", "/x/y?z=1", body)
    assert headers["Content-Type"] == "application/octet-stream" and headers["X-Token"] == 'a"b'
    assert r["requests"] > 0 and r["errors"] == 0 and r["throughput_rps"] > 0
    assert not list(tmp_path.glob("*.lua"))  # the script (may hold a token) is removed


def test_crosscheck_litserve_two_rounds(litserve_live, tmp_path, wrk):
    from servingbench.suite import cpu_sets

    server_cpus, gen_cpus = cpu_sets("auto")
    lines: list[str] = []
    result = cc.crosscheck(litserve_live, "mlp", 4, rounds=2, duration_s=2, gen_cpus=gen_cpus,
                           workdir=tmp_path / "w", log_dir=tmp_path / "logs", warmup_s=0.5, server_cpus=server_cpus,
                           floor_duration_s=1.5, server_warmup_s=1, quiet_wait_s=5,
                           progress=lines.append)
    assert len(result["rounds"]) == 2
    for r in result["rounds"]:
        for client in ("servingbench", "wrk"):
            assert r[client]["throughput_rps"] > 0, (client, r)
            assert r[client]["errors"] == 0, (client, r)
            assert r[client]["p50_s"] > 0 and r[client]["p99_s"] >= r[client]["p50_s"]
    assert result["sequence"] == ["1:servingbench", "1:wrk", "2:wrk", "2:servingbench"]  # counterbalanced
    assert all("waited_s" in r[c]["quiet"] for r in result["rounds"] for c in ("servingbench", "wrk"))
    assert result["clients"]["perf_analyzer"]["skipped"]  # LitServe does not speak KServe V2
    floor = result["client_floor"]
    assert floor["servingbench"]["floor_p50_s"] > 0 and floor["wrk"]["floor_p50_s"] > 0
    d = result["deltas"]["wrk"]
    for k in ("throughput_rps_pct", "p50_s_pct", "p99_s_pct", "p50_abs_s"):
        assert d[k] is not None
    assert len(d["per_round_throughput_pct"]) == 2
    rec = cc.crosscheck_record(result, cell="litserve/default")
    assert rec["type"] == "crosscheck" and rec["id"].startswith("crosscheck:litserve/default:mlp:c4")
    json.dumps(rec)  # appendable to records.jsonl
    assert any(l.startswith("round 2:") for l in lines)
    litserve_live.check_alive()
