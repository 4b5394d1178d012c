"""Live progress of a suite run: a rich display in a terminal, plain lines elsewhere (CI logs, pipes, ``--plain``).

The suite runner calls its progress observer with text lines and, where the observer defines them, structured
events (``servingbench.load.kinds.emit``): ``plan`` (every cell with its planned load points, the feature probes,
a prior for one point's wall time), ``cell_started``, ``point_started`` (with the generator's live file: one JSON
line per finished window), ``point_finished``, ``cell_finished``.  :class:`Eta` turns them into an estimate of the
time left that learns from the points and cells already finished.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

#: priors before anything finished: a cell's start/verify/stop overhead and one feature probe's wall time (s)
CELL_OVERHEAD_PRIOR_S = 15.0
PROBE_PRIOR_S = 20.0


def fmt_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class Eta:
    """Time left in a run, from what has finished: remaining points x the median point time, remaining cells x
    the mean per-cell overhead (start, verification, stop), remaining probes x the mean probe time; the priors
    (the suite's measurement rules, :data:`CELL_OVERHEAD_PRIOR_S`, :data:`PROBE_PRIOR_S`) until there is data.
    A cell that measured fewer points than planned (an SLO search that converged early, a failed cell) takes its
    actual count.  ``clock`` is injectable for tests."""

    def __init__(self, cells: list[tuple[str, int]], probes: list[str], point_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.planned = dict(cells)
        self.probes = list(probes)
        self.point_prior = point_s
        self.done: dict[str, int] = {c: 0 for c in self.planned}  # points finished per cell
        self.finished: set[str] = set()
        self.point_times: list[float] = []
        self.overheads: list[float] = []
        self.probe_times: list[float] = []
        self.current: str | None = None
        self._cell_t0 = self._point_t0 = None
        self._cell_point_s = 0.0

    # -- events ---------------------------------------------------------------------------------------------------
    def cell_started(self, cell: str) -> None:
        self.current, self._cell_t0, self._cell_point_s = cell, self.clock(), 0.0

    def point_started(self) -> None:
        self._point_t0 = self.clock()

    def point_finished(self, cell: str) -> None:
        now = self.clock()
        if self._point_t0 is not None:
            self.point_times.append(now - self._point_t0)
            self._cell_point_s += now - self._point_t0
            self._point_t0 = None
        self.done[cell] = self.done.get(cell, 0) + 1

    def cell_finished(self, cell: str, resumed: bool = False) -> None:
        now = self.clock()
        if not resumed and self._cell_t0 is not None and cell == self.current:
            wall = now - self._cell_t0
            if cell in self.planned:
                self.overheads.append(max(0.0, wall - self._cell_point_s))
            else:
                self.probe_times.append(wall)
        if resumed and cell in self.planned:
            self.done[cell] = self.planned[cell]
        self.finished.add(cell)
        self.current, self._cell_t0, self._point_t0 = None, None, None

    # -- estimates ------------------------------------------------------------------------------------------------
    def cell_total(self, cell: str) -> int:
        """Planned points of ``cell``; its actual count once finished (or when it measured more than planned)."""
        done = self.done.get(cell, 0)
        return done if cell in self.finished else max(self.planned.get(cell, 0), done)

    @property
    def total_points(self) -> int:
        return sum(self.cell_total(c) for c in self.planned)

    @property
    def done_points(self) -> int:
        return sum(self.done.values())

    def point_s(self) -> float:
        return statistics.median(self.point_times) if self.point_times else self.point_prior

    def remaining_s(self) -> float:
        """Seconds left: the rest of the running point and cell, then every cell and probe not started."""
        left_points = self.total_points - self.done_points
        pending_cells = [c for c in self.planned if c not in self.finished and c != self.current]
        pending_probes = [p for p in self.probes if p not in self.finished and p != self.current]
        overhead = statistics.mean(self.overheads) if self.overheads else CELL_OVERHEAD_PRIOR_S
        probe = statistics.mean(self.probe_times) if self.probe_times else PROBE_PRIOR_S
        est = left_points * self.point_s() + len(pending_cells) * overhead + len(pending_probes) * probe
        if self._point_t0 is not None:  # the running point is part-way through
            est -= min(self.clock() - self._point_t0, self.point_s())
        if self.current in self.probes and self._cell_t0 is not None:
            est += max(0.0, probe - (self.clock() - self._cell_t0))
        return max(0.0, est)


def read_live(path: Path | None, offset: int) -> tuple[dict[str, Any] | None, int]:
    """The last complete line appended to a generator's live file since ``offset``; (None, offset) when none."""
    if path is None:
        return None, offset
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None, offset
    end = data.rfind(b"\n")
    if end < 0:
        return None, offset
    last = None
    for line in data[:end].splitlines():
        try:
            last = json.loads(line)
        except ValueError:
            continue
    return last, offset + end + 1


def live_text(line: dict[str, Any] | None) -> str:
    if not line:
        return "warming up"
    p99 = line.get("p99_s")
    return (f"window {line.get('window', 0) + 1}: {line.get('throughput_rps') or 0:,.0f} rps, p99 "
            + ("-" if p99 is None else f"{p99 * 1e3:.1f} ms") + f", errors {line.get('errors', 0)}")


class PlainProgress:
    """Line per event (a pipe, a CI log, ``--plain``): the suite's own lines, the plan, and after each cell how
    far the run is and the estimated time left."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.eta: Eta | None = None
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        self.console.print(msg, highlight=False)

    def plan(self, cells: list[tuple[str, int]], probes: list[str], point_s: float) -> None:
        self.eta = Eta(cells, probes, point_s)
        self.console.print(f"plan: {len(cells)} cell(s), {self.eta.total_points} load point(s) (SLO searches "
                           f"estimated), {len(probes)} feature probe(s); estimated {fmt_duration(self.eta.remaining_s())}",
                           highlight=False, markup=False)

    def cell_started(self, cell: str) -> None:
        if self.eta:
            self.eta.cell_started(cell)

    def point_started(self, cell: str, label: str, live: Path | None = None) -> None:
        if self.eta:
            self.eta.point_started()

    def point_finished(self, cell: str, **_: Any) -> None:
        if self.eta:
            self.eta.point_finished(cell)

    def cell_finished(self, cell: str, status: str, resumed: bool = False) -> None:
        if not self.eta:
            return
        self.eta.cell_finished(cell, resumed)
        if resumed:
            return
        e = self.eta
        cells_done = len([c for c in e.finished if c in e.planned or c in e.probes])
        self.console.print(
            f"progress: {e.done_points}/{e.total_points} points, {cells_done}/{len(e.planned) + len(e.probes)} "
            f"cells, elapsed {fmt_duration(time.monotonic() - self.t0)}, ETA {fmt_duration(e.remaining_s())}",
            highlight=False, markup=False)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class RichProgress(PlainProgress):
    """A terminal display: a bar for the suite and one for the current cell, each with its ETA, and the running
    point's live throughput / p99 (read from the generator's live file twice a second).  Text lines print above
    the bars."""

    def __init__(self, console: Console, refresh_s: float = 0.5) -> None:
        super().__init__(console)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                             refresh_per_second=4)
        self.suite_task: TaskID | None = None
        self.cell_task: TaskID | None = None
        self.point_task: TaskID | None = None
        self.refresh_s = refresh_s
        self._live: Path | None = None
        self._offset = 0
        self._label = ""
        self._lock = threading.RLock()  # the poll thread and the run's events change the same state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, msg: str) -> None:
        self.bars.console.print(msg, highlight=False)

    def __enter__(self) -> "RichProgress":
        self.bars.start()
        self._thread = threading.Thread(target=self._poll, name="servingbench-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.bars.stop()

    def plan(self, cells: list[tuple[str, int]], probes: list[str], point_s: float) -> None:
        with self._lock:
            super().plan(cells, probes, point_s)
            assert self.eta is not None
            self.suite_task = self.bars.add_task("suite", total=self.eta.total_points + len(probes), info="")
            self._update()

    def cell_started(self, cell: str) -> None:
        with self._lock:
            super().cell_started(cell)
            self._drop_point()
            if self.cell_task is not None:
                self.bars.remove_task(self.cell_task)
            total = self.eta.cell_total(cell) if self.eta and cell in self.eta.planned else 1
            self.cell_task = self.bars.add_task(cell, total=total, info="")
            self._update()

    def point_started(self, cell: str, label: str, live: Path | None = None) -> None:
        with self._lock:
            super().point_started(cell, label, live)
            self._live, self._offset, self._label = (Path(live) if live else None), 0, label
            if self.point_task is None:
                self.point_task = self.bars.add_task("", total=None, info="")
            self.bars.update(self.point_task, description=f"  {label}", info="warming up")

    def point_finished(self, cell: str, **kw: Any) -> None:
        with self._lock:
            super().point_finished(cell, **kw)
            self._drop_point()
            self._update()

    def cell_finished(self, cell: str, status: str, resumed: bool = False) -> None:
        with self._lock:
            if self.eta:
                self.eta.cell_finished(cell, resumed)
            self._drop_point()  # a point that raised never finished: its row goes with its cell
            if self.cell_task is not None and not resumed:
                self.bars.remove_task(self.cell_task)
                self.cell_task = None
            self._update()

    def _drop_point(self) -> None:
        self._live = None
        if self.point_task is not None:
            self.bars.remove_task(self.point_task)
            self.point_task = None

    def _update(self) -> None:
        e = self.eta
        if e is None or self.suite_task is None:
            return
        probes_done = len([p for p in e.probes if p in e.finished])
        self.bars.update(self.suite_task, total=e.total_points + len(e.probes), completed=e.done_points + probes_done,
                         info=f"ETA {fmt_duration(e.remaining_s())}")
        if self.cell_task is not None and e.current in e.planned:
            left = (e.cell_total(e.current) - e.done[e.current]) * e.point_s()
            self.bars.update(self.cell_task, total=e.cell_total(e.current), completed=e.done[e.current],
                             info=f"ETA {fmt_duration(left)}")

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                with self._lock:
                    line, self._offset = read_live(self._live, self._offset)
                    if line is not None and self.point_task is not None:
                        self.bars.update(self.point_task, info=live_text(line))
                    self._update()
            except Exception:  # noqa: BLE001 - a display glitch never stops the run or the display
                continue


def make_progress(console: Console, plain: bool = False) -> PlainProgress:
    """The rich display when the console writes to a terminal; line-per-event output with ``plain``, in CI
    (``$CI`` set) or when the output is a pipe or file (rich's ``FORCE_COLOR`` does not count as a terminal)."""
    isatty = getattr(console.file, "isatty", None)
    terminal = bool(isatty and isatty()) and not os.environ.get("CI")
    return RichProgress(console) if terminal and not plain else PlainProgress(console)


def summary_table(points: list[dict[str, Any]], statuses: dict[str, str]) -> Table:
    """The end-of-run table: per cell its status, valid/measured points and the best valid throughput (with the
    p99 at that point)."""
    table = Table(title="summary", title_justify="left")
    for col in ("cell", "status", "valid points", "best throughput", "p99 there"):
        table.add_column(col, justify="right" if col not in ("cell", "status") else "left")
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        by_cell.setdefault(p.get("cell", "?"), []).append(p)
    for cid, status in statuses.items():
        pts = by_cell.get(cid, [])
        valid = [p for p in pts if (p.get("validity") or {}).get("valid")]
        best = max(valid, key=lambda p: p["metrics"].get("throughput_rps") or 0, default=None)
        tput = best["metrics"].get("throughput_rps") if best else None
        p99 = best["metrics"].get("latency_s", {}).get("p99") if best else None
        table.add_row(cid, status, f"{len(valid)}/{len(pts)}" if pts else "-",
                      "-" if tput is None else f"{tput:,.0f} rps", "-" if p99 is None else f"{p99 * 1e3:.1f} ms")
    return table
