"""Live progress (issue 19): the ETA learns from finished points and cells; the live file and the summary table."""

from __future__ import annotations

import json

from rich.console import Console

from servingbench.progress import Eta, PlainProgress, fmt_duration, live_text, read_live, summary_table


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_starts_from_the_priors_then_learns_from_finished_points():
    clock = Clock()
    eta = Eta([("a", 2), ("b", 2)], ["a/probe:auth"], point_s=10.0, clock=clock)
    # 4 points x 10 s + 2 cells x 15 s overhead + 1 probe x 20 s
    assert eta.total_points == 4
    assert eta.remaining_s() == 4 * 10 + 2 * 15 + 20
    eta.cell_started("a")
    clock.t = 5.0  # 5 s of start-up
    for _ in range(2):
        eta.point_started()
        clock.t += 3.0  # points are faster than the prior
        eta.point_finished("a")
    clock.t += 1.0
    eta.cell_finished("a")
    # learned: 3 s per point, 6 s of overhead per cell
    assert eta.point_s() == 3.0
    assert eta.overheads == [6.0]
    assert eta.remaining_s() == 2 * 3 + 1 * 6 + 20


def test_a_cell_that_measured_fewer_points_than_planned_takes_its_actual_count():
    clock = Clock()
    eta = Eta([("slo", 9), ("b", 1)], [], point_s=2.0, clock=clock)
    eta.cell_started("slo")
    for _ in range(4):  # the search converged after 4 probes
        eta.point_started()
        clock.t += 2.0
        eta.point_finished("slo")
    eta.cell_finished("slo")
    assert eta.total_points == 5
    assert eta.done_points == 4


def test_the_running_point_counts_part_way_and_resumed_cells_count_as_done():
    clock = Clock()
    eta = Eta([("a", 1), ("b", 1)], [], point_s=10.0, clock=clock)
    eta.cell_finished("a", resumed=True)
    assert eta.done_points == 1
    eta.cell_started("b")
    eta.point_started()
    clock.t = 4.0
    assert eta.remaining_s() == 10.0 - 4.0


def test_read_live_returns_the_last_complete_line_and_keeps_partial_ones(tmp_path):
    f = tmp_path / "live.jsonl"
    assert read_live(f, 0) == (None, 0)  # not written yet
    f.write_text(json.dumps({"window": 0, "throughput_rps": 100.0, "p99_s": 0.004, "errors": 0}) + "\n"
                 + json.dumps({"window": 1, "throughput_rps": 120.0, "p99_s": 0.005, "errors": 1}) + "\n"
                 + '{"window": 2, "throughp')
    line, off = read_live(f, 0)
    assert line["window"] == 1
    assert read_live(f, off) == (None, off)  # the torn line waits for its newline
    assert live_text(line) == "window 2: 120 rps, p99 5.0 ms, errors 1"
    assert live_text(None) == "warming up"


def test_fmt_duration():
    assert [fmt_duration(s) for s in (None, 0, 42, 185, 3725)] == ["?", "0s", "42s", "3m05s", "1h02m"]


def test_plain_progress_prints_the_plan_and_progress_lines():
    console = Console(record=True, width=200, force_terminal=False)
    p = PlainProgress(console)
    p.plan(cells=[("mosec/default", 2)], probes=[], point_s=5.0)
    p.cell_started("mosec/default")
    for _ in range(2):
        p.point_started("mosec/default", "closed mlp concurrency 8")
        p.point_finished("mosec/default", throughput_rps=100.0, p99_s=0.01, valid=True)
    p.cell_finished("mosec/default", "ok")
    text = console.export_text()
    assert "plan: 1 cell(s), 2 load point(s)" in text
    assert "progress: 2/2 points, 1/1 cells" in text and "ETA 0s" in text


def test_summary_table_counts_valid_points_and_the_best_valid_throughput():
    pts = [{"cell": "a", "validity": {"valid": True}, "metrics": {"throughput_rps": 100.0, "latency_s": {"p99": 0.01}}},
           {"cell": "a", "validity": {"valid": False}, "metrics": {"throughput_rps": 900.0, "latency_s": {"p99": 0.5}}},
           {"cell": "a", "validity": {"valid": True}, "metrics": {"throughput_rps": 200.0, "latency_s": {"p99": 0.02}}}]
    console = Console(record=True, width=200)
    console.print(summary_table(pts, {"a": "ok", "b": "failed"}))
    text = console.export_text()
    assert "2/3" in text and "200 rps" in text and "20.0 ms" in text and "900" not in text
    assert "failed" in text
