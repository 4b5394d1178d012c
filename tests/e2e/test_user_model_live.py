"""Issue 16: a user's own model (a TorchScript file and a ``torch.export`` ``.pt2`` file the user saved) served by
every framework and both baselines through ``servingbench run``: artifacts built from each file, the servers verified
against outputs computed in-process from the same file, then measured."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.server


class UserNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(), torch.nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _save_user_files(ts: Path, pt2: Path) -> None:
    """The user's model saved as a TorchScript file and as a ``torch.export`` program with a dynamic batch."""
    net = UserNet().eval()
    torch.jit.save(torch.jit.script(net), ts)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(net, (torch.randn(2, 24),), dynamic_shapes={"x": {0: batch}}), pt2)


FRAMEWORKS = ["litserve", "mosec", "mlserver", "triton", "rayserve", "mlflow", "fastapi", "fastapi-blocking"]


@pytest.mark.timeout(1200)  # eight servers in one run: 137 s on an idle 2-core VM (session 11)
def test_user_torchscript_and_export_files_are_verified_and_measured_everywhere(tmp_path, no_leftovers, monkeypatch):
    """Issue 16's done-when: a TorchScript file and a ``.pt2`` file written here (outside the zoo) go through
    verification and a short suite on all six frameworks and both baselines, in one ``servingbench run``."""
    monkeypatch.setenv("SERVINGBENCH_CACHE", str(tmp_path / "cache"))
    _save_user_files(tmp_path / "usernet.pt", tmp_path / "usernet.pt2")
    (tmp_path / "suite.yaml").write_text(f"""\
name: byo
frameworks: [{", ".join(FRAMEWORKS)}]
models:
  - name: user_ts
    torchscript: usernet.pt
    input: {{shape: [24], dtype: float32, low: -1, high: 1}}
  - name: user_pt2
    export: usernet.pt2
    input: {{shape: [24], dtype: float32, low: -1, high: 1}}
inprocess_limit: false  # not asserted here: ~5 s a cell
measurement: {{warmup: 0.3s, window: 0.5s, windows: 2, max_duration: 3s, min_requests: 10, tolerance: 0.5}}
workloads:
  - {{name: closed, kind: closed_loop, concurrency: [2], weights: {{user_ts: 1, user_pt2: 1}}}}  # one mixed point
""")
    r = subprocess.run([sys.executable, "-m", "servingbench.cli", "run", str(tmp_path / "suite.yaml"), "--out",
                        str(tmp_path / "results"), "--plain"], capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL)
    run = next((tmp_path / "results").iterdir())
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
    cells = {x["framework"]: x for x in recs if x["type"] == "cell"}
    assert set(cells) == set(FRAMEWORKS), (sorted(cells), r.stderr[-3000:])
    for fw, cell in cells.items():
        assert cell["status"] == "ok", (fw, cell.get("reason"), r.stderr[-2000:])
        assert {m: v["ok"] for m, v in cell["verification"].items()} == {"user_ts": True, "user_pt2": True}, fw
    points = [x for x in recs if x["type"] == "point"]
    assert not [x for x in recs if x["type"] == "inprocess"]  # inprocess_limit: false
    measured = {(x["framework"], *sorted(x["models"])) for x in points
                if x["metrics"]["errors"] == 0 and x["metrics"]["requests"] > 0}
    assert measured == {(fw, "user_pt2", "user_ts") for fw in FRAMEWORKS}, measured
    for x in points:  # the mixed point reached both files' models
        assert set(x["metrics"]["per_model_latency_s"]) == {"user_ts", "user_pt2"}, x["framework"]
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.timeout(300)
def test_servingbench_verify_takes_user_model_files(tmp_path, no_leftovers, monkeypatch):
    """``servingbench verify FW -m FILE --input-shape ...``: a user's TorchScript and ``.pt2`` files served (under
    their file names) and checked against outputs computed in-process from the same files."""
    monkeypatch.setenv("SERVINGBENCH_CACHE", str(tmp_path / "cache"))
    _save_user_files(tmp_path / "user_ts.pt", tmp_path / "user_pt2.pt2")
    r = subprocess.run([sys.executable, "-m", "servingbench.cli", "verify", "litserve", "-m", "user_ts.pt",
                        "-m", "user_pt2.pt2", "--input-shape", "24"], capture_output=True, text=True, timeout=240,
                       stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for name in ("user_ts", "user_pt2"):  # the table's row: model, ok, max abs err, tolerance
        assert re.search(rf"\b{name}\b\W+yes\W", r.stdout), r.stdout
    assert "litserve: verify passed" in r.stdout
