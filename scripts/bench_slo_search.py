#!/usr/bin/env python3
"""Benchmark (not a test): the harness's own SLO search against the calibration server, scored against M/D/1.

    python scripts/bench_slo_search.py --searches 20 --wrap /work/shared/bin/exclusive

What runs: ``servingbench run`` (the CLI, in a subprocess) on a suite this script writes: ``frameworks:
[calibration]`` (the test kit's calibration deployment, ``servingbench.testing.calibration``, registered for the
run with ``SERVINGBENCH_ADAPTERS``), ``models: [mlp]``, one ``slo_search`` workload, ``cpu_sets: auto`` (the server
pinned to its core(s), the generator to the last core).  Every search goes through the whole harness path:
``SloRunner`` (idle floor, drain before each probe), open-loop Poisson points through the locust generator,
stable windows only, validity flags (a flagged probe cannot pass), the early-stopping bound with ``dispersion``,
the confirmation of the final rate.  ``measurement.repeats: K`` makes one run do K searches, each with a freshly
started server; ``--searches`` are spread over ceil(N / K) runs.

The analytic answer: one worker, FIFO, deterministic service time S = ``--service-ms``: an M/D/1 queue whose highest
Poisson rate with p99 sojourn <= target is ``md1_max_rate_for_p99(target, S)`` (386.7 rps for S = 2 ms, 20 ms).
Each search's answer is printed as a percentage of it; the issue's bar is 80-100 % in at least 18 of 20.
The default target is 40 ms (20 x S: limit 442.8 rps); see "Why 40 ms" below.  The
measured latencies add the HTTP round trip, parsing and the generator's own delays (~2-3 ms; the search's idle
floor is printed), so the measured system's limit is a few % below the analytic one (about 97 % for +2.5 ms).

Probe length (the defaults): 3 stable windows of 4 s (at most 20 s per point), warm-up 0.5 s, ``dispersion: 5``
(docs: ``servingbench.measure.stats.p99_early_stopping`` and ``tests/unit/test_slo_search_sim.py``: a queue's
over-target requests come in bursts, so every 5 requests count as one observation; the simulation there uses 10-20 s
probes).  A p99 claim then needs >= 1491 requests with none over the target; the search starts at 300 rps, grows x2
capped at ``--max-rate`` (default 1 / S, the capacity), bisects to 5 % and confirms.  Why 12 s and not 6 s: the
client and the HTTP stack add ~2-3 ms to every latency (the idle floor is ~3 ms for S = 2 ms) and the machine adds
rare stalls, so the real queue has a few more requests over the target than M/D/1 near the limit; a 6 s probe
(~2000 requests) may then show at most 2 overs to pass, and the answers fall just under 80 % of the limit (a trial:
77.6 %, 80.8 %).  The seeded simulation with a fixed 2-3 ms added to every latency: 6 s probes 76-92 % of searches
within 80-100 %, 9 s 89-96 %, 12 s 96-99 %.

Why 40 ms (20 x S) and not 20 ms (10 x S): on a 2-core virtual machine the measured latency is the queue's plus
2-5 ms that M/D/1 does not have (the locust client's event loop and wake-ups, the HTTP stack, wake-ups of idle
virtual CPUs: the idle floor was 2.7-4.7 ms for S = 2 ms, p50 4.5 ms at 75 rps) and rare stalls of 20-45 ms.
Against a 20 ms target that is a quarter of the budget: with 12 s probes the answers were 87.3, 77.6, 77.6 % and
twice no rate at all (300 rps failed with p99 20.5-20.9 ms where M/D/1 has 11.1 ms), so the search measured the
client and the machine, not the queue.  The seeded simulation with 3-5 ms added to every latency: 20 ms target 72-95
% of searches within 80-100 %, 30 ms 97-99 %, 40 ms 98 %.  ``--target-ms 20`` reproduces the tighter case.

``--wrap CMD``: a command prefix for every ``servingbench run`` (e.g. a lock that serialises heavy runs on a shared
machine: ``--wrap /work/shared/bin/exclusive``); each run takes the lock separately.  Inside it a quiet gate waits
(at most ``--quiet-wait`` s) until the CPUs are under 15 % busy (work of other users that does not take the lock
would otherwise land on the server's or the generator's core); if they stay busy it gives the lock back and tries
again a minute later.  When other work lands on those cores during a run anyway, the harness flags the probes
(``interference``, ``machine_speed_changed``; a flagged probe cannot pass): a search with such a probe below the
capacity (where it might have passed) is printed as DISTURBED, counted apart, and replaced by
one more search (at most ``--max-extra``); the tally is given both ways.  Results go to ``--out``
(default ``results/bench-slo-<time>``): the suite, one results directory per run, ``runs.log``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from benchlib import QUIET, exec_when_quiet, run_gated, servingbench_cmd  # scripts/ is on sys.path when run

from servingbench.measure.stats import md1_max_rate_for_p99, min_requests_for_p99

REGISTRATION = "calibration=servingbench.testing.calibration:CalibrationAdapter"
#: probe flags that mean other work on the machine disturbed the search (the harness saw it)
DISTURBED = {"interference", "machine_speed_changed"}


def write_suite(path: Path, args: argparse.Namespace, repeats: int) -> None:
    suite = {
        "name": "bench-slo-calibration",
        "description": f"slo_search against the calibration server (S = {args.service_ms:g} ms, one worker, FIFO)",
        "frameworks": ["calibration"],
        "models": ["mlp"],
        "device": "cpu",
        "deployments": [{"label": f"s{args.service_ms:g}ms", "workers": 1, "threads": 1,
                         "options": {"calibration": {"service_ms": args.service_ms}}}],
        "measurement": {"warmup": f"{args.warmup:g}s", "window": f"{args.window:g}s", "windows": args.windows,
                        "tolerance": args.tolerance, "max_duration": f"{args.max_duration:g}s",
                        "min_requests": args.min_requests, "repeats": repeats},
        "workloads": [{"name": "slo", "kind": "slo_search", "models": ["mlp"], "start_rate": args.start_rate,
                       "max_rate": args.max_rate, "precision": args.precision, "max_steps": args.max_steps,
                       "arrival": "poisson", "dispersion": args.dispersion, "confirm": True, "drain": True}],
        "slo": {"p99": f"{args.target_ms:g}ms", "max_error_rate": 0.001},
        "cpu_sets": "auto",
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def run_once(suite: Path, out_root: Path, wrap: list[str], log, quiet_s: float = 120.0,
             busy: float = 0.15) -> tuple[Path | None, int, float]:
    """One ``servingbench run`` (inside ``wrap``, after the quiet gate); (its results directory, exit code, seconds
    including any wait for the lock and for quiet)."""
    out_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SERVINGBENCH_ADAPTERS": REGISTRATION}
    env.pop("SERVINGBENCH_CALIBRATION_SLOWDOWN", None)
    gate = [sys.executable, str(Path(__file__).resolve()), QUIET, str(quiet_s), str(busy), "--"] if quiet_s > 0 else []
    t0 = time.perf_counter()
    rc = run_gated([*servingbench_cmd(), "run", str(suite), "--out", str(out_root)], gate, wrap, log, env)
    dirs = sorted(p for p in out_root.iterdir() if p.is_dir())
    return (dirs[-1] if dirs else None), rc, time.perf_counter() - t0


def machine_seconds(run_dir: Path) -> float | None:
    """The run's own duration (run.json started -> ended): the lock's waiting time excluded."""
    meta = json.loads((run_dir / "run.json").read_text())
    try:
        fmt = "%Y-%m-%dT%H:%M:%S"
        return (datetime.strptime(meta["ended"], fmt) - datetime.strptime(meta["started"], fmt)).total_seconds()
    except (KeyError, ValueError):
        return None


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == QUIET:
        exec_when_quiet(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--searches", type=int, default=20)
    ap.add_argument("--per-run", type=int, default=5, help="searches per `servingbench run` (measurement.repeats)")
    ap.add_argument("--service-ms", type=float, default=2.0)
    ap.add_argument("--target-ms", type=float, default=40.0, help="the SLO's p99 target (default 20 x S)")
    ap.add_argument("--warmup", type=float, default=0.5, help="s")
    ap.add_argument("--window", type=float, default=4.0, help="s")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.25, help="stability: spread of throughput and p50")
    ap.add_argument("--max-duration", type=float, default=20.0, help="s")
    ap.add_argument("--min-requests", type=int, default=300)
    ap.add_argument("--dispersion", type=float, default=5.0)
    ap.add_argument("--start-rate", type=float, default=300.0)
    ap.add_argument("--max-rate", type=float, default=None, help="default: 1 / S (the capacity)")
    ap.add_argument("--precision", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--wrap", default="", help="command prefix for every run, e.g. a lock")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="inside the lock, wait up to this long for the "
                    "machine's CPUs to be < 15 %% busy before each run, else give the lock back and retry a minute "
                    "later (0: no gate)")
    ap.add_argument("--max-extra", type=int, default=10, help="searches disturbed by other work (a probe flagged "
                    "interference or machine_speed_changed) are repeated, at most this many")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    s, target = args.service_ms / 1e3, args.target_ms / 1e3
    args.max_rate = args.max_rate or round(1 / s, 3)
    limit = md1_max_rate_for_p99(target, s)
    out = args.out or Path("results") / f"bench-slo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    wrap = shlex.split(args.wrap)
    need = min_requests_for_p99(dispersion=args.dispersion)
    print(f"S = {args.service_ms:g} ms, p99 target {args.target_ms:g} ms: M/D/1 limit {limit:.1f} rps "
          f"(capacity {1 / s:.0f} rps); probes: warm-up {args.warmup:g} s + {args.windows} x {args.window:g} s "
          f"stable windows (max {args.max_duration:g} s, tolerance {args.tolerance:g}), dispersion "
          f"{args.dispersion:g} (a claim needs >= {need} requests: {need / (args.windows * args.window):.0f} rps), "
          f"start {args.start_rate:g} rps, max {args.max_rate:g} rps, precision {args.precision:g}; "
          f"{args.searches} searches, {args.per_run} per run; out {out}", flush=True)
    results: list[dict] = []
    runs: list[dict] = []
    t_all = time.perf_counter()
    with open(out / "runs.log", "a") as log:
        clean = extra = 0
        while clean < args.searches:
            k = min(args.per_run, args.searches - clean)
            suite = out / f"suite-{k}.yaml"
            write_suite(suite, args, k)
            run_dir, rc, wall = run_once(suite, out / f"run{len(runs) + 1:02d}", wrap, log, args.quiet_wait)
            recs = read_records(run_dir) if run_dir else []
            slos = sorted((r for r in recs if r.get("type") == "slo"), key=lambda r: int(r.get("repeat") or 0))
            cells = {r["cell"]: r for r in recs if r.get("type") == "cell" and "seconds" in r}
            mach = machine_seconds(run_dir) if run_dir else None
            runs.append({"dir": str(run_dir), "rc": rc, "searches": len(slos), "wall_s": wall, "machine_s": mach})
            print(f"run {len(runs)}: {run_dir} (exit {rc}), {len(slos)} searches, {mach or float('nan'):.0f} s "
                  f"({wall:.0f} s with the wait for the lock)", flush=True)
            for r in slos:
                ans = r.get("max_rate")
                pts = r.get("points") or []
                flagged = sorted({f for p in pts for f in (p.get("flags") or [])})
                # Disturbed: a probe the harness flagged for other work on the machine, at a rate that could have
                # passed (below the capacity 1 / S): a flagged probe fails, so it can only have lowered the answer.
                disturbed = sorted({f for p in pts if (p.get("rate") or 0) < args.max_rate
                                    for f in (p.get("flags") or []) if f in DISTURBED})
                row = {"search": len(results) + 1, "run": len(runs), "cell": r["cell"], "max_rate": ans,
                       "disturbed": disturbed,
                       "pct": None if ans is None else 100 * ans / limit, "probes": len(pts),
                       "confirmed": r.get("confirmed"), "generator_limited": r.get("generator_limited"),
                       "idle_floor_ms": (r.get("idle_floor_s") or math.nan) * 1e3, "probe_flags": flagged,
                       "cell_seconds": (cells.get(r["cell"]) or {}).get("seconds"), "reason": r.get("reason"),
                       "probes_detail": [(p.get("rate"), p.get("verdict"), p.get("requests"), p.get("over_target"),
                                          None if p.get("p99_s") is None else round(p["p99_s"] * 1e3, 2),
                                          p.get("flags")) for p in pts]}
                results.append(row)
                clean += not disturbed
                extra += bool(disturbed)
                pct = "none" if ans is None else f"{ans:7.1f} rps = {row['pct']:5.1f} %"
                print(f"search {row['search']:2d}{' DISTURBED' if disturbed else ''}: {pct} of the limit; {len(pts)} probes, "
                      f"{'confirmed' if row['confirmed'] else 'NOT confirmed'}, idle floor "
                      f"{row['idle_floor_ms']:.2f} ms, cell {row['cell_seconds'] or math.nan:.0f} s"
                      + (f", probe flags {flagged}" if flagged else "") + f"; {str(row['reason'])[:150]}", flush=True)
                print("    probes (rate, verdict, requests, over, p99 ms, flags): "
                      + "; ".join(f"{a:g} {v} {n} {o} {p} {f or ''}".strip() for a, v, n, o, p, f in
                                  row["probes_detail"]), flush=True)
            if not slos:
                print(f"run {len(runs)} gave no search (see {out / 'runs.log'}); stopping", flush=True)
                break
            if extra > args.max_extra:
                print(f"{extra} searches disturbed by other work on the machine: stopping", flush=True)
                break
    pcts = [r["pct"] for r in results]
    within = sum(p is not None and 80 <= p <= 100 for p in pcts)
    above = sum(p is not None and p > 100 for p in pcts)
    cpcts = [r["pct"] for r in results if not r["disturbed"]]
    cwithin = sum(p is not None and 80 <= p <= 100 for p in cpcts)
    total_machine = sum(r["machine_s"] or 0 for r in runs)
    summary = {"limit_rps": limit, "service_ms": args.service_ms, "target_ms": args.target_ms, "searches": len(results),
               "within_80_100": within, "above_100": above, "pcts": pcts, "clean_searches": len(cpcts),
               "clean_within_80_100": cwithin, "runs": runs, "results": results,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine_s": total_machine, "wall_s": time.perf_counter() - t_all}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nanswers as % of the M/D/1 limit {limit:.1f} rps: "
          + ", ".join("none" if p is None else f"{p:.1f}" for p in pcts))
    print(f"searches not disturbed (no probe below 1/S flagged {'/'.join(sorted(DISTURBED))}): {cwithin}/{len(cpcts)} within "
          f"80-100 %")
    print(f"all searches: {within}/{len(results)} within 80-100 % ({above} above 100 %); machine time {total_machine:.0f} s "
          f"({summary['wall_s']:.0f} s with waits for the lock); summary {out / 'summary.json'}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
