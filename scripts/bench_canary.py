#!/usr/bin/env python3
"""Benchmark (not a test): four consecutive runs of one small suite, their machine-speed canaries, and ``compare``.

    /work/shared/bin/exclusive .venv/bin/python scripts/bench_canary.py          (the four runs under one lock)

The suite is the issue's: MOSEC and Triton, model mlp, one worker and one thread, a closed loop at concurrency 8
(warm-up 1 s, 3 stable windows of 1 s, at most 6 s, tolerance 15 %, as the quick suite), ``cpu_sets: auto``, and
``repeats: --repeats`` (default 5: each repeat restarts the servers, frameworks interleaved, so ``compare`` has the
five samples a side it needs for a verdict; with 1, as in the issue's runs, every row is "inconclusive").

For each run it prints the canary (``run.json["canary"]``: the median time of the fixed CPU workload, its own
spread, its drift over the run), each cell's before/after drift against its threshold (a change flags the cell's
points ``machine_speed_changed``), and the throughput per framework; then ``compare`` of each consecutive pair:
whether the canaries agree (``report.compare.canary_check``) and every row's verdict.  When the canaries differ,
``compare`` keeps a timing row's verdict only if it goes against the machines' difference and makes every other one
"inconclusive: the machines differed by X %".

``--wrap CMD`` runs each run inside CMD (e.g. a lock; then the runs are not strictly back to back); without it,
run the whole script inside the lock.  ``--quiet-wait S``: before each run, wait at most S seconds until the CPUs
are under 15 % busy, else wait a minute and try again (outside the lock when ``--wrap`` takes it).  Results: ``--out`` (default ``results/bench-canary-<time>``), ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from benchlib import QUIET, exec_when_quiet, run_gated, servingbench_cmd  # scripts/ is on sys.path when run


def machine_seconds(run_dir: Path) -> float | None:
    meta = json.loads((run_dir / "run.json").read_text())
    try:
        fmt = "%Y-%m-%dT%H:%M:%S"
        return (datetime.strptime(meta["ended"], fmt) - datetime.strptime(meta["started"], fmt)).total_seconds()
    except (KeyError, ValueError):
        return None


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_suite(path: Path, args: argparse.Namespace) -> None:
    suite = {
        "name": "bench-canary",
        "description": "MOSEC and Triton, mlp, closed loop at concurrency 8: the four consecutive runs of "
                       "scripts/bench_canary.py",
        "frameworks": args.frameworks,
        "models": ["mlp"],
        "device": "cpu",
        "deployments": [{"label": "default", "workers": 1, "threads": 1}],
        "measurement": {"warmup": "1s", "window": "1s", "windows": 3, "tolerance": 0.15, "max_duration": "6s",
                        "min_requests": 100, "repeats": args.repeats},
        "workloads": [{"name": "closed", "kind": "closed_loop", "concurrency": [args.concurrency]}],
        "cpu_sets": "auto",
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def describe_run(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "run.json").read_text())
    recs = read_records(run_dir)
    can = meta.get("canary") or {}
    cells = [r for r in recs if r.get("type") == "cell" and "canary" in r]
    tput: dict[str, list[float]] = {}
    flagged: dict[str, int] = {}
    for r in recs:
        if r.get("type") == "point":
            tput.setdefault(r["framework"], []).append(r["metrics"]["throughput_rps"] or 0.0)
            if r["validity"]["flags"]:
                for f in r["validity"]["flags"]:
                    flagged[f] = flagged.get(f, 0) + 1
    return {
        "dir": str(run_dir), "machine_s": machine_seconds(run_dir),
        "canary": {"median_ms": None if can.get("median_s") is None else can["median_s"] * 1e3,
                   "per_iteration_us": None if can.get("per_iteration_s") is None else can["per_iteration_s"] * 1e6,
                   "rel_spread": can.get("rel_spread"), "drift": can.get("drift"),
                   "samples": len(can.get("samples") or [])},
        "cells": [{"cell": c["cell"], "drift": c["canary"]["drift"], "threshold": c["canary"]["threshold"],
                   "changed": c["canary"]["changed"]} for c in cells],
        "throughput": {fw: [round(x) for x in v] for fw, v in tput.items()},
        "flags": flagged,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == QUIET:
        exec_when_quiet(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--frameworks", nargs="+", default=["mosec", "triton"])
    ap.add_argument("--wrap", default="", help="command prefix for every run, e.g. a lock")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from servingbench.report.compare import canary_check, compare_runs

    out = args.out or Path("results") / f"bench-canary-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    suite = out / "suite.yaml"
    write_suite(suite, args)
    wrap = shlex.split(args.wrap)
    t_all = time.perf_counter()
    runs: list[dict] = []
    dirs: list[Path] = []
    with open(out / "runs.log", "a") as log:
        for i in range(1, args.runs + 1):
            root = out / f"run{i}"
            root.mkdir(parents=True, exist_ok=True)
            gate = ([sys.executable, str(Path(__file__).resolve()), QUIET, str(args.quiet_wait), "0.15", "--"]
                    if args.quiet_wait > 0 else [])
            t0 = time.perf_counter()
            rc = run_gated([*servingbench_cmd(), "run", str(suite), "--out", str(root)], gate, wrap, log)
            wall = time.perf_counter() - t0
            found = sorted(p for p in root.iterdir() if p.is_dir())
            if not found:
                print(f"run {i}: no results (exit {rc}); see {out / 'runs.log'}", flush=True)
                break
            info = describe_run(found[-1])
            info.update(rc=rc, wall_s=wall)
            runs.append(info)
            dirs.append(found[-1])
            c = info["canary"]
            changed = [x["cell"] for x in info["cells"] if x["changed"]]
            print(f"run {i}: {found[-1].name} (exit {rc}), {info['machine_s'] or math.nan:.0f} s "
                  f"({wall:.0f} s with waits)", flush=True)
            print(f"  canary: median {c['median_ms'] or math.nan:.3f} ms ({c['per_iteration_us'] or math.nan:.2f} µs per "
                  f"iteration), own spread "
                  f"{100 * (c['rel_spread'] or math.nan):.2f} %, drift over the run {100 * (c['drift'] or math.nan):.2f} % "
                  f"({c['samples']} measurements); cells whose canary changed: {changed or 'none'}", flush=True)
            print("  cells: " + "; ".join(f"{x['cell']} {100 * x['drift']:+.2f} % (limit {100 * x['threshold']:.1f} %)"
                                          for x in info["cells"]), flush=True)
            print("  throughput (rps per repeat): " + "; ".join(
                f"{fw} {v} (median {statistics.median(v):.0f})" for fw, v in info["throughput"].items())
                + (f"; point flags {info['flags']}" if info["flags"] else ""), flush=True)
    comparisons = []
    for i in range(1, len(dirs)):
        a, b = dirs[i - 1], dirs[i]
        ma, mb = (json.loads((d / "run.json").read_text()) for d in (a, b))
        can = canary_check(ma, mb)
        df = compare_runs(a, b)
        rows = [{"framework": r.framework, "metric": r.metric, "change_pct": None if math.isnan(r.change_pct)
                 else round(r.change_pct, 1), "verdict": r.verdict,
                 "p": None if math.isnan(r.p_value) else r.p_value} for r in df.itertuples()]
        flagged = [f"{r['framework']} {r['metric']}" for r, s in zip(rows, df["significant"]) if s]
        comparisons.append({"a": a.name, "b": b.name, "canary": can, "rows": rows, "flagged": flagged})
        diff = "" if can["diff"] is None else (f"{100 * can['diff']:+.2f} %, limit {100 * can['limit']:.1f} %"
                                              + ("" if can.get("p_value") is None else f", p = {can['p_value']:.2g}"))
        print(f"\ncompare run {i} -> run {i + 1}: canaries {can['status']} ({diff}); flagged rows: "
              f"{flagged or 'none'}", flush=True)
        for r in rows:
            chg = "–" if r["change_pct"] is None else f"{r['change_pct']:+.1f} %"
            p = "" if r["p"] is None else f" (p={r['p']:.3g})"
            print(f"  {r['framework']:8s} {r['metric']:15s} {chg:>9s}  {r['verdict']}{p}", flush=True)
    summary = {"runs": runs, "comparisons": comparisons, "wall_s": time.perf_counter() - t_all,
               "machine_s": sum(r["machine_s"] or 0 for r in runs),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n{len(runs)} runs, machine time {summary['machine_s']:.0f} s ({summary['wall_s']:.0f} s in all); "
          f"summary {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
