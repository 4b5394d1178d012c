#!/usr/bin/env python3
"""Benchmark (not a test): ``servingbench compare``'s false alarms (A/A) and power (a planted 10 % slowdown).

    python scripts/bench_compare.py --pairs 20 --wrap /work/shared/bin/exclusive

Every run is a separate ``servingbench run`` (the CLI, in a subprocess) of one suite this script writes: the
calibration deployment (``servingbench.testing.calibration``: one worker, FIFO, a deterministic service time
S = ``--service-ms``, registered with ``SERVINGBENCH_ADAPTERS``), model mlp, one closed-loop point at
``--concurrency`` (default 4: the worker is never idle, throughput 1 / S, p50 about 4 S), ``repeats: 7`` (each
repeat restarts the server: seven samples per side, so that two repeats flagged ``machine_speed_changed`` can be
left out and still leave the five ``compare`` needs to judge), ``cpu_sets: auto``, and short
points (warm-up 0.5 s + 3 stable windows of 1 s, at most 6 s, tolerance 10 %).

For each i = 1..N, three runs back to back: P_i (planted), A_i, B_i.

* A/A pair i: ``compare(A_i, B_i)``, nothing changed.  Counted as a false alarm when any row is flagged
  (``regression`` or ``improvement``: throughput, p50, p99, cold start, idle PSS).  Bar: none in >= 19 of 20.
* Planted pair i: ``compare(A_i, P_i)``.  P_i runs with ``SERVINGBENCH_CALIBRATION_SLOWDOWN=1.1``: the server's
  service time is 10 % longer while the deployment's configuration is the same (as with a regression in a
  server's code; the adapter option ``slowdown`` would change the configuration, and ``compare`` rightly refuses to
  judge deployments whose configurations differ: "not comparable").  Counted as flagged when ``compare`` reports
  a regression (its exit status 1).  Bar: >= 16 of 20.
* Run A_i is the baseline of both pairs (it saves a third of the runs; the two tallies therefore share their A
  runs).  ``--separate-a`` runs a fourth run A'_i as the planted pair's baseline instead.

``--budget-min M``: no new triple starts once the runs so far took M minutes of machine time (run.json started ->
ended: the wait for the lock is not counted); the tallies are over the pairs that ran.  An existing ``--out``
directory is continued (its ``summary.json`` pairs are kept, numbering goes on); ``--chunk K`` runs at most K more
pairs, so the benchmark can be run in pieces (e.g. each piece inside the lock: ``exclusive python
scripts/bench_compare.py --out DIR --chunk 4``).  ``--reanalyse DIR``
compares every stored pair of DIR again with the current ``compare`` (after a change of its rules) into
``DIR/reanalysis.json``.  ``--wrap CMD``: a command
prefix for every run (``--wrap /work/shared/bin/exclusive``: each run takes the lock separately); inside it a quiet
gate waits (at most ``--quiet-wait`` s) until the CPUs are under 15 % busy, else gives the lock back and tries again
a minute later.  Results: ``--out`` (default
``results/bench-compare-<time>``): the suite, every run's results directory, ``runs.log``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from benchlib import QUIET, exec_when_quiet, run_gated, servingbench_cmd  # scripts/ is on sys.path when run

REGISTRATION = "calibration=servingbench.testing.calibration:CalibrationAdapter"
PLANTED_ENV = "SERVINGBENCH_CALIBRATION_SLOWDOWN"


# ---- running (the same helpers as scripts/bench_slo_search.py) ----------------------------------------------------


def run_once(suite: Path, out_root: Path, wrap: list[str], log, env_extra: dict[str, str],
             quiet_s: float) -> tuple[Path | None, int, float]:
    out_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SERVINGBENCH_ADAPTERS": REGISTRATION}
    env.pop(PLANTED_ENV, None)
    env.update(env_extra)
    gate = [sys.executable, str(Path(__file__).resolve()), QUIET, str(quiet_s), "0.15", "--"] if quiet_s > 0 else []
    log.write(f"# environment: {env_extra or 'unchanged'}\n")
    t0 = time.perf_counter()
    rc = run_gated([*servingbench_cmd(), "run", str(suite), "--out", str(out_root)], gate, wrap, log, env)
    dirs = sorted(p for p in out_root.iterdir() if p.is_dir())
    return (dirs[-1] if dirs else None), rc, time.perf_counter() - t0


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


# ---- this benchmark ----------------------------------------------------------------------------------------------
def write_suite(path: Path, args: argparse.Namespace) -> None:
    suite = {
        "name": "bench-compare-calibration",
        "description": f"calibration server (S = {args.service_ms:g} ms), closed loop at {args.concurrency}, "
                       f"{args.repeats} repeats: the runs of scripts/bench_compare.py",
        "frameworks": ["calibration"],
        "models": ["mlp"],
        "device": "cpu",
        "deployments": [{"label": f"s{args.service_ms:g}ms", "workers": 1, "threads": 1,
                         "options": {"calibration": {"service_ms": args.service_ms}}}],
        "measurement": {"warmup": f"{args.warmup:g}s", "window": f"{args.window:g}s", "windows": args.windows,
                        "tolerance": args.tolerance, "max_duration": f"{args.max_duration:g}s",
                        "min_requests": 200, "repeats": args.repeats},
        "workloads": [{"name": "closed", "kind": "closed_loop", "concurrency": [args.concurrency]}],
        "cpu_sets": "auto",
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def describe_run(run_dir: Path) -> dict:
    """Per-run facts for the table: throughput per repeat, flags, the canary."""
    recs = read_records(run_dir)
    pts = sorted((r for r in recs if r.get("type") == "point"), key=lambda r: int(r.get("repeat") or 0))
    meta = json.loads((run_dir / "run.json").read_text())
    can = meta.get("canary") or {}
    return {"dir": str(run_dir), "machine_s": machine_seconds(run_dir),
            "throughput": [round(p["metrics"]["throughput_rps"] or 0, 1) for p in pts],
            "p50_ms": [round((p["metrics"]["latency_s"].get("p50") or math.nan) * 1e3, 2) for p in pts],
            "flags": [p["validity"]["flags"] for p in pts],
            "canary_ms": None if can.get("median_s") is None else can["median_s"] * 1e3,
            "canary_spread": can.get("rel_spread"),
            "cold_start_s": [round(r.get("cold_start_s") or math.nan, 2) for r in recs
                             if r.get("type") == "cell" and r.get("status") == "ok"]}


def compare_pair(a: Path, b: Path) -> dict:
    from servingbench.report.compare import compare_runs

    df = compare_runs(a, b)
    rows = [{"metric": r.metric, "a": r.a, "b": r.b, "change_pct": None if math.isnan(r.change_pct) else r.change_pct,
             "verdict": r.verdict, "p": None if math.isnan(r.p_value) else r.p_value,
             "ci": None if math.isnan(r.ci_low_pct) else (round(r.ci_low_pct, 1), round(r.ci_high_pct, 1))}
            for r in df.itertuples()]
    return {"rows": rows, "significant": [r["metric"] for r, s in zip(rows, df["significant"]) if s],
            "regressions": [r["metric"] for r, g in zip(rows, df["regression"]) if g],
            "canary": (df.attrs.get("canary") or {}).get("note")}


def fmt_rows(rows: list[dict]) -> str:
    short = {"throughput_rps": "tput", "latency_p50_s": "p50", "latency_p99_s": "p99", "cold_start_s": "cold",
             "idle_pss_bytes": "pss"}
    out = []
    for r in rows:
        chg = "–" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%"
        p = "" if r["p"] is None else f" p={r['p']:.3g}"
        out.append(f"{short.get(r['metric'], r['metric'])} {chg} {r['verdict']}{p}")
    return "; ".join(out)


def miss_reason(cmp: dict) -> str:
    """Why a pair's throughput row was not flagged: its verdict, shortened."""
    row = next((r for r in cmp["rows"] if r["metric"] == "throughput_rps"), None)
    if row is None:
        return "no throughput row"
    v = row["verdict"]
    return ("machines differed" if "machines differed" in v else "flagged points left out" if "flagged" in v else v)


def reanalyse(out: Path) -> int:
    """Every stored pair compared again with the current ``servingbench compare`` (its rules may have changed since
    the runs were taken); writes ``reanalysis.json`` beside ``summary.json`` and prints the tallies."""
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    pairs = []
    for old in summary["pairs"]:
        i = old["i"]
        a, b, p = (runs.get(f"{t}{i:02d}", {}).get("dir") for t in "ABP")
        pair: dict = {"i": i}
        if a and b:
            pair["aa"] = compare_pair(Path(a), Path(b))
        if a and p:
            pair["planted"] = compare_pair(Path(a), Path(p))
        pairs.append(pair)
        aa, pl = pair.get("aa"), pair.get("planted")
        print(f"pair {i:2d}: A/A {'FLAGGED ' + str(aa['significant']) if aa and aa['significant'] else 'clean'}"
              f" ({aa and aa['canary'][:60]}); planted "
              f"{'flagged' if pl and pl['regressions'] else 'missed (' + miss_reason(pl) + ')' if pl else '-'}",
              flush=True)
    aa = [p for p in pairs if "aa" in p]
    pl = [p for p in pairs if "planted" in p]
    res = {"pairs": pairs, "aa_pairs": len(aa), "aa_nothing_flagged": sum(not p["aa"]["significant"] for p in aa),
           "planted_pairs": len(pl), "planted_flagged": sum(bool(p["planted"]["regressions"]) for p in pl),
           "planted_misses": [{"i": p["i"], "why": miss_reason(p["planted"])} for p in pl
                              if not p["planted"]["regressions"]]}
    (out / "reanalysis.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"\nA/A: nothing flagged in {res['aa_nothing_flagged']}/{res['aa_pairs']} pairs; planted: flagged in "
          f"{res['planted_flagged']}/{res['planted_pairs']}; misses: {res['planted_misses']}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == QUIET:
        exec_when_quiet(sys.argv[2:])
    if len(sys.argv) == 3 and sys.argv[1] == "--reanalyse":
        return reanalyse(Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--planted", type=float, default=1.1, help="the planted slowdown factor of run P")
    ap.add_argument("--separate-a", action="store_true", help="a separate baseline run for each planted pair")
    ap.add_argument("--service-ms", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--max-duration", type=float, default=6.0)
    ap.add_argument("--budget-min", type=float, default=None, help="start no new triple after this much machine time")
    ap.add_argument("--chunk", type=int, default=None, help="run at most this many more pairs in this invocation")
    ap.add_argument("--wrap", default="", help="command prefix for every run, e.g. a lock")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path("results") / f"bench-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    suite = out / "suite.yaml"
    write_suite(suite, args)
    wrap = shlex.split(args.wrap)
    print(f"calibration server S = {args.service_ms:g} ms, closed loop c={args.concurrency} (expected "
          f"{1e3 / args.service_ms:.0f} rps; planted {args.planted:g}x: {1e3 / args.service_ms / args.planted:.0f} rps), "
          f"{args.repeats} repeats x (warm-up {args.warmup:g} s + {args.windows} x {args.window:g} s); {args.pairs} "
          f"pairs, order P_i A_i B_i{' A2_i' if args.separate_a else ''}; out {out}", flush=True)
    machine = 0.0
    t_all = time.perf_counter()
    pairs: list[dict] = []
    runs: dict[str, dict] = {}
    if (out / "summary.json").exists():  # continue an earlier invocation into the same directory
        prev = json.loads((out / "summary.json").read_text())
        pairs, runs, machine = prev["pairs"], prev["runs"], prev["machine_s"]
        print(f"continuing {out}: {len(pairs)} pairs done, {machine:.0f} s of machine time so far", flush=True)
    first = len(pairs) + 1
    if args.chunk:
        args.pairs = min(args.pairs, first - 1 + args.chunk)
    with open(out / "runs.log", "a") as log:
        def do(tag: str, env_extra: dict[str, str]) -> Path | None:
            nonlocal machine
            run_dir, rc, wall = run_once(suite, out / tag, wrap, log, env_extra, args.quiet_wait)
            info = describe_run(run_dir) if run_dir else {"dir": None}
            info.update(rc=rc, wall_s=wall, env=env_extra)
            runs[tag] = info
            machine += info.get("machine_s") or 0
            flags = sorted({f for fl in info.get("flags") or [] for f in fl})
            print(f"  {tag}: exit {rc}, {info.get('machine_s') or math.nan:.0f} s ({wall:.0f} s with waits); "
                  f"throughput {info.get('throughput')} rps; p50 {info.get('p50_ms')} ms; canary "
                  f"{info.get('canary_ms') or math.nan:.2f} ms (spread {100 * (info.get('canary_spread') or math.nan):.1f} %)"
                  + (f"; flags {flags}" if flags else ""), flush=True)
            return run_dir if rc == 0 else None

        for i in range(first, args.pairs + 1):
            if args.budget_min is not None and machine >= 60 * args.budget_min:
                print(f"machine-time budget of {args.budget_min:g} min reached after {i - 1} pairs", flush=True)
                break
            print(f"pair {i}:", flush=True)
            p = do(f"P{i:02d}", {PLANTED_ENV: f"{args.planted:g}"})
            a = do(f"A{i:02d}", {})
            b = do(f"B{i:02d}", {})
            a2 = do(f"A2_{i:02d}", {}) if args.separate_a else a
            pair: dict = {"i": i}
            if a and b:
                pair["aa"] = compare_pair(a, b)
                flagged = bool(pair["aa"]["significant"])
                print(f"  A/A  {i:2d}: {'FLAGGED ' + str(pair['aa']['significant']) if flagged else 'nothing flagged'}"
                      f" | {fmt_rows(pair['aa']['rows'])} | {pair['aa']['canary']}", flush=True)
            if a2 and p:
                pair["planted"] = compare_pair(a2, p)
                hit = bool(pair["planted"]["regressions"])
                print(f"  plant {i:2d}: {'flagged ' + str(pair['planted']['regressions']) if hit else 'NOT flagged'}"
                      f" | {fmt_rows(pair['planted']['rows'])} | {pair['planted']['canary']}", flush=True)
            pairs.append(pair)
            (out / "summary.json").write_text(json.dumps({"pairs": pairs, "runs": runs, "machine_s": machine},
                                                         indent=2, default=str))
    aa = [p for p in pairs if "aa" in p]
    pl = [p for p in pairs if "planted" in p]
    aa_clean = sum(not p["aa"]["significant"] for p in aa)
    pl_hit = sum(bool(p["planted"]["regressions"]) for p in pl)
    pl_tput = sum("throughput_rps" in p["planted"]["regressions"] for p in pl)
    summary = {"pairs": pairs, "runs": runs, "machine_s": machine, "wall_s": time.perf_counter() - t_all,
               "aa_pairs": len(aa), "aa_nothing_flagged": aa_clean, "planted_pairs": len(pl),
               "planted_flagged": pl_hit, "planted_throughput_flagged": pl_tput,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    tputs = [t for r in runs.values() if r.get("env") == {} for t in r.get("throughput") or []]
    ptputs = [t for r in runs.values() if r.get("env") for t in r.get("throughput") or []]
    print(f"\nA/A: nothing flagged in {aa_clean}/{len(aa)} pairs")
    print(f"planted {args.planted:g}x: flagged (a regression) in {pl_hit}/{len(pl)} pairs "
          f"(throughput row: {pl_tput}/{len(pl)})")
    if tputs and ptputs:
        print(f"throughput per repeat: unchanged median {statistics.median(tputs):.1f} rps "
              f"[{min(tputs):.1f}, {max(tputs):.1f}], planted median {statistics.median(ptputs):.1f} rps "
              f"[{min(ptputs):.1f}, {max(ptputs):.1f}]")
    print(f"{len(runs)} runs, machine time {machine:.0f} s ({summary['wall_s']:.0f} s with waits); "
          f"summary {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
