"""Issue 16: a user's own model (a TorchScript file the user saved) served by a real framework through
``servingbench run``: artifacts built from the file, the server verified against outputs computed in-process from
the same file, then measured."""

from __future__ import annotations

import json
import subprocess
import sys

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


@pytest.mark.parametrize("framework", ["mosec"])  # one framework: the artifacts path is the same for all
def test_a_user_torchscript_model_is_verified_and_measured(tmp_path, no_leftovers, monkeypatch, framework):
    monkeypatch.setenv("SERVINGBENCH_CACHE", str(tmp_path / "cache"))
    torch.jit.save(torch.jit.script(UserNet().eval()), tmp_path / "usernet.pt")
    (tmp_path / "suite.yaml").write_text(f"""\
name: byo
frameworks: [{framework}]
models:
  - name: usernet
    torchscript: usernet.pt
    input: {{shape: [24], dtype: float32, low: -1, high: 1}}
measurement: {{warmup: 0.5s, window: 1s, windows: 2, max_duration: 4s, min_requests: 20, tolerance: 0.5}}
workloads:
  - {{name: closed, kind: closed_loop, concurrency: [2]}}
""")
    r = subprocess.run([sys.executable, "-m", "servingbench.cli", "run", str(tmp_path / "suite.yaml"), "--out",
                        str(tmp_path / "results"), "--plain"], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    run = next((tmp_path / "results").iterdir())
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
    cell = next(x for x in recs if x["type"] == "cell")
    assert cell["status"] == "ok" and cell["verification"]["usernet"]["ok"], cell.get("verification")
    point = next(x for x in recs if x["type"] == "point")
    assert point["model"] == "usernet" and point["metrics"]["errors"] == 0 and point["metrics"]["requests"] > 0
