"""The physical limit: the same model, batch and threads, run in-process with no server.

Every framework's latency overhead and throughput are reported against it.  It runs in its own process pinned to
the server's CPU set, so it competes for the same cores a server would.
Run as ``python -m servingbench.measure.inprocess PLAN.json`` (the harness does this).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def measure(artifact_dir: str, batch: int, threads: int, fmt: str = "eager", device: str = "cpu",
            warmup_s: float = 0.5, duration_s: float = 2.0, pool: int = 16) -> dict:
    """Run ``predict`` back to back; latency histogram of each call and the achieved rate.  An image or text payload
    model is preprocessed in every call too (the servers' work: decoding and transforming is part of the limit)."""
    from servingbench.measure.stats import LatencyHistogram
    from servingbench.models.preprocess import load_preprocessor
    from servingbench.models.runtime import load_runtime

    rt = load_runtime(artifact_dir, fmt=fmt, device=device, threads=threads)
    pre = load_preprocessor(artifact_dir, server=False)
    predict = rt.predict if pre is None else (lambda items: rt.predict(pre(items)))
    inputs = [rt.spec.example_inputs(batch, seed=1000 + i) for i in range(pool)]
    t_end = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < t_end:
        predict(inputs[i % pool])
        i += 1
    hist = LatencyHistogram()
    n = 0
    t0 = time.perf_counter()
    t_end = t0 + duration_s
    while True:
        a = time.perf_counter()
        predict(inputs[n % pool])
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



def inprocess_limits(suite: Any, artifacts: dict[str, Any], cpus: set[int] | None, scratch: Path,
                     log_dir: Path) -> list[dict[str, Any]]:
    """For every model x batch x threads x format the suite uses: the model alone, in a process pinned like a server."""
    batches = sorted({w.batch for w in suite.workloads}) or [1]
    combos = sorted({(d.threads, d.model_format) for d in suite.deployments})
    return limits_for([(m.name, artifacts[m.name]) for m in suite.models], batches, combos, suite.device, cpus,
                      scratch, log_dir)


def limits_for(models: list[tuple[str, Any]], batches: list[int], combos: list[tuple[int, str]], device: str,
               cpus: set[int] | None, scratch: Path, log_dir: Path, workers: int = 1, warmup_s: float = 0.5,
               duration_s: float = 2.0, tag: str = "inprocess") -> list[dict[str, Any]]:
    """The model alone for each model x batch x (threads, format): ``workers`` processes at once, each pinned to
    ``cpus`` like the server's workers (their rates add up; their latencies merge), so a deployment of W workers
    is compared with W copies of the bare model on the same cores."""
    from servingbench.measure.stats import LatencyHistogram
    from servingbench.runtime.supervisor import claim_tempdir, default_signals, marker_env, tail

    jobs = [{"artifact_dir": str(art.dir), "batch": b, "threads": t, "fmt": fmt, "device": device,
             "warmup_s": warmup_s, "duration_s": duration_s}
            for _, art in models for b in batches for t, fmt in combos]
    names = [name for name, _ in models for _ in batches for _ in combos]
    log_dir.mkdir(parents=True, exist_ok=True)
    claim_tempdir(scratch)  # the plans below go there: `servingbench cleanup` removes it if this harness dies
    marks = marker_env("inprocess")  # one marker for the jobs of this step: cleanup finds them if we die
    procs = []
    for k in range(workers):
        plan = {"jobs": jobs, "result": str(scratch / f"{tag}-{k}.json")}
        plan_path = scratch / f"{tag}-{k}.plan.json"
        plan_path.write_text(json.dumps(plan))
        with open(log_dir / f"{tag}.log", "ab") as log:
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "servingbench.measure.inprocess", str(plan_path)], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=default_signals, env={**os.environ, **marks}), plan["result"]))
    try:
        for proc, _ in procs:
            if cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, cpus)
        for proc, _ in procs:
            proc.wait(timeout=60 + (warmup_s + duration_s + 3) * len(jobs))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if any(proc.returncode != 0 for proc, _ in procs):
        raise RuntimeError(f"in-process measurement failed: {tail(log_dir / f'{tag}.log', 15)}")
    per_worker = [json.loads(Path(result).read_text()) for _, result in procs]
    out = []
    for i, name in enumerate(names):
        parts = [w[i] for w in per_worker]
        hist = LatencyHistogram()
        for p in parts:
            hist.merge(LatencyHistogram.from_dict(p["histogram"]))
        rate = sum(p["throughput_rps"] for p in parts)
        out.append({**parts[0], "model": name, "workers": workers, "calls": sum(p["calls"] for p in parts),
                    "throughput_rps": rate, "samples_per_s": rate * parts[0]["batch"],
                    "latency_s": {**hist.percentiles(), "mean": hist.mean()}, "histogram": hist.to_dict()})
    return out


if __name__ == "__main__":
    sys.exit(main())
