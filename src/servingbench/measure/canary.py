"""The machine-speed canary: a fixed CPU workload timed on the server's cores before and after every cell.

On a virtual machine the speed of a core can change under a run (steal, a noisy neighbour, frequency), and process
accounting inside the machine cannot see it.  The canary makes that visible: the same work (``ITERATIONS`` small
fp32 matrix products with one torch thread: ~100 ms on the 2-core development VM) timed ``REPS`` times in one
long-lived process pinned to the server's CPU set, while no server runs.  The work is fixed, not calibrated to a
duration, so canaries of different runs and machines time the same thing; each measurement also reports the time per
iteration (``per_iteration_s``), which is what ``servingbench compare`` compares (a canary of an older run with a
different iteration count is compared per iteration too).  Its median is the machine's speed at that moment; its own
spread (second-fastest to second-slowest of the repeats, relative to the median) is its noise.

* A cell whose canary after differs from its canary before by more than :func:`changed_threshold` of its own noise
  (at least 3 %) has every point flagged ``machine_speed_changed`` (the points measured meanwhile).
* ``run.json["canary"]``: ``median_s`` and ``per_iteration_s`` (medians over every repetition of the run),
  ``rel_spread`` (the median of the measurements' own spreads) and every measurement with its repetition times.
  ``servingbench compare`` tests the two runs' repetitions against each other (Mann-Whitney) and says
  "inconclusive: the machines differed by X %" when they differ.  Chosen over normalising by the canary: a canary of
  one workload does not predict how a different workload (a server, its network stack) slows down, so dividing by it
  would hide the change instead of showing it.

Measured on the development VM (idle, 25 back-to-back repetitions of ~100 ms): the time of one repetition varies
with a coefficient of variation of 7 % (this workload), 14 % (a pure-Python loop) and 13 % (a memory-bound sum),
weakly correlated with each other: the VM's speed moves at the 100 ms scale, so one repetition says little and the
run-level comparison pools every repetition (98 for a run of 7 cells).  Before the work was fixed, the iteration
count was calibrated per run, and run medians of ~100 ms compared different amounts of work (75-126 ms for the
same per-iteration speed).

Run as ``python -m servingbench.measure.canary`` (the harness does this): a line ``go`` on stdin runs one
measurement and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

REPS = 7
#: one repetition's work: fixed, so every run times the same thing (~100 ms on the 2-core development VM)
ITERATIONS = 700
MIN_THRESHOLD = 0.03


def _work(n: int) -> float:
    import torch

    x = _work.x  # type: ignore[attr-defined]
    w = _work.w  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for _ in range(n):
        x = torch.relu(x @ w)
        x = x / (x.norm() + 1.0)
    return time.perf_counter() - t0


def _serve() -> int:
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    _work.x = torch.randn(64, 256, generator=g)  # type: ignore[attr-defined]
    _work.w = torch.randn(256, 256, generator=g) / 16  # type: ignore[attr-defined]
    _work(50)  # warm-up
    n = ITERATIONS
    for line in sys.stdin:
        if line.strip() != "go":
            break
        times = [_work(n) for _ in range(REPS)]
        med = statistics.median(times)
        ordered = sorted(times)
        # Robust spread: second-fastest to second-slowest (one preempted repetition does not count as noise).
        print(json.dumps({"iterations": n, "times_s": times, "median_s": med, "per_iteration_s": med / n,
                          "rel_spread": (ordered[-2] - ordered[1]) / med}), flush=True)
    return 0


class Canary:
    """One canary process for a run, pinned to ``cpus`` (the server's set); ``measure()`` while no server runs."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        from servingbench.runtime.supervisor import default_signals, marker_env

        # Marked as the harness's: `servingbench cleanup` finds it if the harness dies mid-measurement.
        self.proc = subprocess.Popen([sys.executable, "-m", "servingbench.measure.canary"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True, preexec_fn=default_signals,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **marker_env("canary")})
        if cpus:
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
            except OSError:
                pass
        self.samples: list[dict[str, Any]] = []

    def measure(self, label: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the canary process died")
        out = {"label": label, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **json.loads(line)}
        self.samples.append(out)
        return out

    def summary(self) -> dict[str, Any]:
        """What run.json keeps: the run's canary median, its own noise, and every measurement."""
        meds = [s["median_s"] for s in self.samples]
        per = per_iteration_times(self.samples)
        return {"median_s": statistics.median(meds) if meds else None,
                "per_iteration_s": statistics.median(per) if per else None, "repetitions": len(per),
                "rel_spread": statistics.median(s["rel_spread"] for s in self.samples) if meds else None,
                "drift": (max(meds) - min(meds)) / statistics.median(meds) if meds else None,
                "samples": self.samples}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Canary":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def per_iteration_times(samples: Any) -> list[float]:
    """Every repetition of every measurement in ``samples`` as seconds per iteration (measurements of runs whose
    iteration count differs are comparable this way); malformed entries are skipped."""
    out: list[float] = []
    for s in samples if isinstance(samples, list) else []:
        n = s.get("iterations") if isinstance(s, dict) else None
        if not isinstance(n, (int, float)) or n <= 0:
            continue
        out += [t / n for t in s.get("times_s") or [] if isinstance(t, (int, float)) and t > 0]
    return out


def per_measurement_times(samples: Any) -> list[float]:
    """One value per measurement in ``samples``: the median of its repetitions, in seconds per iteration.

    The repetitions of one measurement are taken back to back (~0.7 s in all) and share the machine's state of that
    moment, so they are not independent samples of the run's machine speed; measurements taken minutes apart are
    closer to it.  Measured on the development VM (8 runs of 20 measurements): the measurements of one run vary with a
    coefficient of variation of 8-24 %, the repetitions inside one measurement by about a third of that."""
    out: list[float] = []
    for s in samples if isinstance(samples, list) else []:
        per = per_iteration_times([s])
        if per:
            out.append(statistics.median(per))
    return out


def changed_threshold(before: dict[str, Any], after: dict[str, Any]) -> float:
    """How far apart two canaries may be and still be the same machine speed: twice the larger of their own
    spreads, and at least 3 %."""
    return max(MIN_THRESHOLD, 2 * max(before["rel_spread"], after["rel_spread"]))


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The drift between two canaries and whether it exceeds the canaries' own noise."""
    drift = after["median_s"] / before["median_s"] - 1
    limit = changed_threshold(before, after)
    return {"before_s": before["median_s"], "after_s": after["median_s"], "drift": drift, "threshold": limit,
            "changed": abs(drift) > limit}


if __name__ == "__main__":
    sys.exit(_serve())
