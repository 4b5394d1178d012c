"""The generator's own limits on this machine: closed loop against a trivial endpoint (no model, no framework)
gives its ceiling (requests/s) and the loopback latency floor; stored with every run and used to flag points."""

from __future__ import annotations

import base64
import os
import signal
import sys
from pathlib import Path
from typing import Any

from servingbench.contract import LaunchSpec, ReadyProbe
from servingbench.load.plan import GeneratorPlan
from servingbench.load.point import generator_plan, run_generator
from servingbench.runtime import supervisor
from servingbench.runtime.supervisor import ServerProcess
from servingbench.scenarios.schema import Generator, Measurement


def calibrate_generator(
    cpus: tuple[set[int] | None, set[int] | None], scratch: Path, log_dir: Path,
    concurrency: tuple[int, ...] = (1, 16), window_s: float = 1.0, generator: Generator | None = None,
) -> dict[str, Any]:
    """Closed loop against a trivial endpoint: the generator's ceiling (rps) and the latency floor (p50/p99)."""
    from servingbench.measure.stats import LatencyHistogram

    port = supervisor.free_port()
    spec = LaunchSpec(
        argv=[sys.executable, "-m", "servingbench.measure.echo_server", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=scratch,
        ready=ReadyProbe(path="/", timeout_s=30), stop_signal=signal.SIGTERM, grace_s=5, name="calibration-endpoint",
    )
    server = ServerProcess(spec, marker=supervisor.new_marker(), ports={"http": port}, log_path=log_dir / "calibration.log",
                           cpus=cpus[0])
    out: dict[str, Any] = {"generator_cpus": sorted(cpus[1]) if cpus[1] else None, "points": []}
    try:
        server.start()
        server.wait_ready(f"http://127.0.0.1:{port}")
        for c in concurrency:
            m = Measurement(warmup="0.5s", window=f"{window_s}s", windows=3, tolerance=0.1,
                            max_duration=f"{window_s * 5}s", timeout="10s")
            target = {"model": "echo", "model_name": "echo", "url": f"http://127.0.0.1:{port}/", "method": "POST",
                      "headers": {"Content-Type": "application/json"}, "rtol": 0.0, "atol": 0.0,
                      "bodies": [base64.b64encode(b'{"inputs": [[0.0]]}').decode()]}
            plan = GeneratorPlan.build(mode="closed", load={"concurrency": c}, m=m, targets=[target],
                                       result=str(scratch / f"calibration-{c}.json"),
                                       processes=generator_plan(generator, cpus[1])).model_dump()
            raw = run_generator(plan, cpus[1], scratch / f"calibration-{c}.plan.json", log_dir / "calibration-generator.log",
                                budget=60 + plan["generator"]["connect_timeout_s"])
            h = LatencyHistogram()
            count = 0
            for w in raw["windows"]:
                h.merge(LatencyHistogram.from_dict(w["histogram"]))
                count += w["count"] - w["errors"]
            out["points"].append({
                "concurrency": c, "throughput_rps": count / raw["measured_s"], "latency_s": h.percentiles(),
                "generator_cpu_pct": raw["generator"]["cpu_pct"], "stable": raw["stable"],
                "generator_processes": len(raw["generator"].get("processes") or [1]),
            })
    finally:
        server.stop()
    first, last = out["points"][0], out["points"][-1]
    out.update(ceiling_rps=last["throughput_rps"], floor_p50_s=first["latency_s"]["p50"],
               floor_p99_s=first["latency_s"]["p99"])
    return out
