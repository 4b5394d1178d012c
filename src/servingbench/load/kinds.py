"""One runner per workload kind.  Adding a kind = a schema class (``kind: ...``) + a runner registered here.

A runner gets the cell's :class:`CellRun` (the live deployment, the suite, where to write) and one workload, and
appends its records; it decides which load points exist and how each is measured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from servingbench import records
from servingbench.deploy.live import LiveDeployment
from servingbench.load.plan import PointPlan
from servingbench.load.point import WarmGenerator, run_point
from servingbench.load.pool import InputPool

Progress = Callable[[str], None]


def emit(progress: Any, event: str, **data: Any) -> None:
    """Structured progress for a live display: calls ``progress.<event>(**data)`` when the observer defines it (a
    plain callable such as ``print`` gets the text lines only).  Events: ``plan``, ``cell_started``,
    ``point_started``, ``point_finished``, ``cell_finished`` (``servingbench.progress``)."""
    fn = getattr(progress, event, None)
    if callable(fn):
        fn(**data)

#: Flags that make an SLO probe be measured once more before it counts (they are about the machine, not the rate).
RETRY_FLAGS = frozenset({"interference", "machine_speed_changed", "unstable"})
#: ... and at most this many probes of one search are measured again (the quick suite's six searches retried 0-4
#: probes each on a VM with steal bursts; the retries of one search took up to a minute)
MAX_SEARCH_RETRIES = 2


#: an SLO probe is lengthened to reach its ``min_requests`` at its rate, up to this many seconds of windows
MAX_PROBE_WINDOWS_S = 60.0
#: ... with this margin: Poisson arrivals and a generator a few % behind its schedule land a probe sized exactly at
#: ``min_requests`` below it half the time (measured: 569 of 600 at 100 rps)
PROBE_COUNT_MARGIN = 1.2


def probe_measurement(m: Any, rate: float) -> Any:
    """The measurement of an SLO probe at ``rate``: the workload's, with windows long enough that the probe's
    expected request count reaches ``min_requests`` (with :data:`PROBE_COUNT_MARGIN`), at most
    :data:`MAX_PROBE_WINDOWS_S` of windows in all.  A p99 claim rests on a number of requests, not on a duration: at
    a fixed duration the low rates a search halves to could never pass.

    The *windows* are lengthened, not multiplied: the stability rule compares the last ``windows`` windows, and a
    window of a few dozen requests has a p50 and a throughput that move by 20-30 % on their own (sampling noise, not
    the server), so fifteen 2 s windows at 12.5 rps never all agreed within 15 % (Ray Serve's probes, quick suite).
    The workload's slack beyond its windows (``max_duration``) is kept as whole windows, at most one of the new
    length (a probe that does not settle is not measured for minutes)."""
    import math

    need_s = min(PROBE_COUNT_MARGIN * m.min_requests / max(rate, 1e-9), MAX_PROBE_WINDOWS_S)
    if need_s <= m.windows * m.window + 1e-9:
        return m
    window = math.ceil(need_s / m.windows / 0.5 - 1e-9) * 0.5  # to the half second
    extra = min(1, int(max(0.0, m.max_duration - m.windows * m.window) // m.window))
    return m.model_copy(update={"window": window, "max_duration": (m.windows + extra) * window})


def worth_retrying(flags: Any) -> bool:
    """Whether an SLO probe's flags say something about the machine rather than the rate, so that measuring it once
    more is worth it: only flags of :data:`RETRY_FLAGS`, or ``generator_bound`` together with ``interference`` (the
    generator lagged because something else held its core or the hypervisor took it: steal bursts on a virtual
    machine, not the generator's ceiling)."""
    flags = set(flags or ())
    if not flags:
        return False
    if "generator_bound" in flags and "interference" in flags:
        flags.discard("generator_bound")
    return flags <= RETRY_FLAGS
ABOVE_LIMIT = 1.05  # a point above 105 % of its in-process limit is flagged (the limit's own noise is a few %)


@dataclass
class CellRun:
    """Everything a workload runner needs from its cell."""

    live: LiveDeployment
    suite: Any  # scenarios.schema.Suite
    pool: InputPool | None
    generator_cpus: set[int] | None
    scratch: Path
    log_dir: Path
    results: Any  # results.RunResults
    base: dict[str, Any]  # records.cell_base(...)
    progress: Progress
    generator_ceiling_rps: float | None = None  # from the run's generator calibration
    repeat: int = 0  # which repeat of the suite this server lifetime is (repeats restart the server)
    limits: list[dict[str, Any]] = field(default_factory=list)  # this cell's in-process limit records
    pending: list[dict[str, Any]] = field(default_factory=list)  # records of this cell, written at its end
    points: int = 0
    answered: int = 0  # points with any successful request
    started: int = 0  # generator runs started (live-progress file names)
    warm: WarmGenerator | None = None  # the next point's generator, started ahead (set while the cell measures)

    def measure(self, w: Any, load: dict[str, float], repeat: int, group: list[str],
                measurement: Any = None) -> dict[str, Any]:
        """Run one load point of ``w`` for the models in ``group`` (``measurement``: instead of the workload's)."""
        from servingbench.runtime.supervisor import raise_if_stop_requested

        raise_if_stop_requested()  # a stop signal whose KeyboardInterrupt was swallowed somewhere
        self.started += 1
        live = self.scratch / f"live-{self.base['cell'].replace('/', '_')}-{self.started}.jsonl"
        plan = PointPlan(w, load, measurement or self.suite.measurement_for(w), repeat, group, self.suite.generator,
                         generator_ceiling_rps=self.generator_ceiling_rps, live=str(live))
        emit(self.progress, "point_started", cell=self.base["cell"], label=f"{w.name} {'+'.join(group)} "
             + " ".join(f"{k} {v:g}" for k, v in load.items()), live=live)
        return run_point(self.live, plan, self.pool, self.generator_cpus, self.scratch, self.log_dir, self.warm)

    def record(self, rec: dict[str, Any], line: str) -> None:
        """Keep a record of this cell (written by :meth:`flush` when the cell ends) and show its line."""
        if rec.get("type") == "point":
            self._check_limit(rec)
            self.points += 1
            self.answered += bool(rec["metrics"].get("throughput_rps"))
        self.pending.append(rec)
        self.progress(line)
        if rec.get("type") == "point":
            emit(self.progress, "point_finished", cell=self.base["cell"],
                 throughput_rps=rec["metrics"].get("throughput_rps"), p99_s=rec["metrics"]["latency_s"].get("p99"),
                 valid=rec["validity"]["valid"])

    def _check_limit(self, rec: dict[str, Any]) -> None:
        """A server faster than the same model in-process on the same cores is a measurement problem, not a win."""
        if len(rec["models"]) != 1 or not self.limits:
            return
        lim = next((r for r in self.limits if r["model"] == rec["models"][0] and r["batch"] == rec["batch"]), None)
        got = rec["metrics"].get("samples_per_s")
        if lim is None or not got or got <= ABOVE_LIMIT * lim["samples_per_s"]:
            return
        v = rec["validity"]
        v["flags"].append("above_inprocess_limit")
        v["valid"] = False
        v.setdefault("reasons", {})["above_inprocess_limit"] = (
            f"{got:.0f} samples/s > the in-process limit {lim['samples_per_s']:.0f} on the same cores")

    def flush(self, machine_speed_changed: bool = False) -> None:
        """Write this cell's records; with ``machine_speed_changed`` (the canary moved during the cell) every point
        is flagged."""
        for rec in self.pending:
            if machine_speed_changed and rec.get("type") == "point":
                rec["validity"]["flags"].append("machine_speed_changed")
                rec["validity"]["valid"] = False
            self.results.append(rec)
        self.pending.clear()

    def all_points_failed(self) -> bool:
        """True when the cell measured points and none answered a request successfully."""
        return self.points > 0 and self.answered == 0

    def groups(self, w: Any) -> list[list[str]]:
        """Model groups a workload measures: one model at a time, unless weights ask for mixed traffic."""
        models = w.models or [mm.name for mm in self.suite.models]
        return [models] if (w.weights and len(models) > 1) else [[n] for n in models]


class WorkloadRunner(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def run(self, cell: CellRun, w: Any) -> None:
        """Measure every load point of ``w`` and append the records."""


class LevelsRunner(WorkloadRunner):
    """Fixed load levels (closed-loop concurrencies or open-loop rates), each repeated ``measurement.repeats``."""

    def __init__(self, kind: str, key: str, levels: str) -> None:
        self.kind, self.key, self.levels = kind, key, levels

    def run(self, cell: CellRun, w: Any) -> None:
        if cell.repeat >= cell.suite.measurement_for(w).repeats:
            return
        rep = cell.repeat
        for group in cell.groups(w):
            for level in getattr(w, self.levels):
                load = {self.key: level}
                point = cell.measure(w, load, rep, group)
                cell.record(records.point_record(cell.base, w, group, load, rep, point),
                            records.point_line(cell.base["cell"], w.name, group, load, rep, point))


class ShapeRunner(WorkloadRunner):
    """One generator run through every stage of a shape; one point record per stage."""

    kind = "shape"

    def run(self, cell: CellRun, w: Any) -> None:
        if cell.repeat >= cell.suite.measurement_for(w).repeats:
            return
        rep = cell.repeat
        for group in cell.groups(w):
            out = cell.measure(w, {"stages": len(w.stages)}, rep, group)
            for st in out["stages"]:
                load = st.pop("load")
                del st["users"]  # in the load
                cell.record(records.point_record(cell.base, w, group, load, rep, st, shape=w.shape),
                            records.point_line(cell.base["cell"], w.name, group, load, rep, st))


class SloRunner(WorkloadRunner):
    """Highest arrival rate whose p99 meets the SLO (claimed at the workload's confidence) and whose error rate is
    within bounds; every probe is recorded as a point with its verdict, the server drained before each probe."""

    kind = "slo_search"

    def run(self, cell: CellRun, w: Any) -> None:
        if cell.repeat >= cell.suite.measurement_for(w).repeats:
            return
        for group in cell.groups(w):
            self._search(cell, w, group)

    def _search(self, cell: CellRun, w: Any, group: list[str]) -> None:
        from servingbench.measure.stats import ProbeOutcome, slo_machine_limited, slo_search

        slo, n = cell.suite.slo, 0
        floor = idle_floor(cell.live, group) if w.drain else None

        def probe(rate: float, attempt: int) -> ProbeOutcome:
            nonlocal n
            drain = drain_server(cell.live, group, floor) if floor is not None else None
            load = {"rate": round(rate, 3)}
            point = cell.measure(w, load, cell.repeat, group, probe_measurement(cell.suite.measurement_for(w), rate))
            outcome = probe_outcome(point, slo.p99)
            point["slo_probe"] = {"drain": drain, "offered_rps": outcome.offered_rps, "attempt": attempt,
                                  "goodput_rps": outcome.goodput_rps, "over_target": outcome.over_target}
            cell.record(records.point_record(cell.base, w, group, load, cell.repeat, point, step=n),
                        records.point_line(cell.base["cell"], w.name, group, load, cell.repeat, point))
            n += 1
            return outcome

        retries = 0

        def measure(rate: float) -> ProbeOutcome:
            # A probe flagged only for the machine (other work on its cores, a speed change) or for not settling
            # says nothing about the rate: it is measured once more; a second flagged probe counts as it is.  At
            # most MAX_SEARCH_RETRIES per search: a machine that keeps flagging probes is busy, and more retries
            # would only lengthen the run (the flagged probes count as failures, visibly).
            nonlocal retries
            outcome = probe(rate, 1)
            if worth_retrying(outcome.flags) and retries < MAX_SEARCH_RETRIES:
                retries += 1
                outcome = probe(rate, 2)
            return outcome

        res = slo_search(measure, slo.p99, max_error_rate=slo.max_error_rate, start_rate=w.start_rate,
                         max_rate=w.max_rate, rel_precision=w.precision, max_steps=w.max_steps,
                         confidence=w.confidence, confirm=w.confirm, dispersion=w.dispersion, min_rate=w.min_rate)
        rec = records.slo_record(cell.base, w, group, slo, res)
        rec.update(confirmed=res.confirmed, generator_limited=res.generator_limited, idle_floor_s=floor,
                   retried_probes=retries,
                   method={"confidence": w.confidence, "dispersion": w.dispersion, "confirm": w.confirm,
                           "drain": w.drain, "max_retries": MAX_SEARCH_RETRIES})
        rec["machine_limited"] = slo_machine_limited(rec)
        answer = "none" if res.max_rate is None else f"{res.max_rate:.0f} rps"
        if res.generator_limited:
            answer = "unmeasured (generator-limited)" if res.max_rate is None else f">= {answer} (generator-limited)"
        elif rec["machine_limited"]:
            answer = "unmeasured" if res.max_rate is None else f">= {answer} (machine-limited)"
        cell.record(rec, f"{cell.base['cell']} {w.name} {'+'.join(group)}: throughput at SLO {answer} ({res.reason})")


def probe_outcome(point: dict[str, Any], p99_target_s: float) -> Any:
    """A measured point as the SLO search sees it: p99, errors, requests over the target (errors count as over),
    flags, goodput (answers within the target per second) and the offered rate (sends per second)."""
    from servingbench.measure.stats import LatencyHistogram, ProbeOutcome

    mt = point["metrics"]
    hist = LatencyHistogram.from_dict(point["histogram"])
    dur = mt["duration_s"] or 0.0
    over = hist.count_above(p99_target_s) + (mt["errors"] or 0)
    within = hist.count - hist.count_above(p99_target_s)
    return ProbeOutcome(
        p99_s=mt["latency_s"].get("p99"), error_rate=mt["error_rate"], requests=mt["requests"], over_target=over,
        flags=list(point["validity"]["flags"]), goodput_rps=within / dur if dur else None,
        offered_rps=mt["requests"] / dur if dur else None,
    )


def _sequential(live: LiveDeployment, group: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        art = live.deployment.model(group[i % len(group)])
        spec = art.spec()
        _, _, dt = live.send(spec, spec.example_inputs(1, seed=7000 + i), timeout=30)
        out.append(dt)
    return out


def idle_floor(live: LiveDeployment, group: list[str], n: int = 20) -> float:
    """Median latency of ``n`` sequential requests on an idle server: what "drained" comes back to."""
    import statistics

    return statistics.median(_sequential(live, group, n))


def drain_server(live: LiveDeployment, group: list[str], floor: float, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until the server's backlog from the previous probe is gone: three sequential requests in a row within
    ``max(2 x floor, floor + 1 ms)``, or the timeout (then ``drained: false``; the probe still runs)."""
    import time

    limit = max(2 * floor, floor + 1e-3)
    t0 = time.perf_counter()
    ok = sent = 0
    while ok < 3 and time.perf_counter() - t0 < timeout_s:
        dt = _sequential(live, group, 1)[0]
        sent += 1
        ok = ok + 1 if dt <= limit else 0
    return {"drained": ok >= 3, "seconds": time.perf_counter() - t0, "requests": sent, "limit_s": limit}


#: kind (the ``kind:`` of a workload in a suite) -> its runner
RUNNERS: dict[str, WorkloadRunner] = {
    "closed_loop": LevelsRunner("closed_loop", "concurrency", "concurrency"),
    "open_loop": LevelsRunner("open_loop", "rate", "rates"),
    "shape": ShapeRunner(),
    "slo_search": SloRunner(),
}
