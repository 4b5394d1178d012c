"""The physical limit: the same model, batch and threads, run in-process with no server.

Every framework's latency overhead and throughput are reported against it.  It runs in its own process pinned to
the server's CPU set, so it competes for the same cores a server would.
Run as ``python -m servingbench.measure.inprocess PLAN.json`` (the harness does this).
"""

from __future__ import annotations

import json
import os
import sys
import time


def measure(artifact_dir: str, batch: int, threads: int, fmt: str = "eager", device: str = "cpu",
            warmup_s: float = 0.5, duration_s: float = 2.0, pool: int = 16) -> dict:
    """Run ``predict`` back to back; latency histogram of each call and the achieved rate."""
    from servingbench.measure.stats import LatencyHistogram
    from servingbench.models.runtime import load_runtime

    rt = load_runtime(artifact_dir, fmt=fmt, device=device, threads=threads)
    inputs = [rt.spec.example_inputs(batch, seed=1000 + i) for i in range(pool)]
    t_end = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < t_end:
        rt.predict(inputs[i % pool])
        i += 1
    hist = LatencyHistogram()
    n = 0
    t0 = time.perf_counter()
    t_end = t0 + duration_s
    while True:
        a = time.perf_counter()
        rt.predict(inputs[n % pool])
        b = time.perf_counter()
        hist.record(b - a)
        n += 1
        if b >= t_end:
            break
    elapsed = time.perf_counter() - t0
    return {
        "batch": batch, "threads": threads, "format": fmt, "device": device,
        "calls": n, "duration_s": elapsed,
        "throughput_rps": n / elapsed, "samples_per_s": n * batch / elapsed,
        "latency_s": {**hist.percentiles(), "mean": hist.mean()},
        "histogram": hist.to_dict(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(open(argv[0]).read())
    out = [measure(**job) for job in plan["jobs"]]
    tmp = plan["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, plan["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
