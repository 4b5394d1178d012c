"""The input pool of a cell: pre-encoded request bodies and their expected outputs, per (model, batch)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from servingbench.deploy.live import LiveDeployment


class InputPool:
    """Pre-encoded request bodies and in-process expected outputs per (model, batch), built once per cell."""

    def __init__(self, live: LiveDeployment) -> None:
        self.live = live
        self._cache: dict[tuple[str, int, int], tuple[list[str], Path, dict]] = {}

    def get(self, art, batch: int, pool: int, workdir: Path) -> tuple[list[str], Path, dict]:
        key = (art.name, batch, pool)
        if key not in self._cache:
            from servingbench.models.preprocess import load_preprocessor
            from servingbench.models.runtime import load_runtime

            spec = art.spec()
            rt = load_runtime(art.dir, fmt="eager", device="cpu", threads=1)
            pre = load_preprocessor(art.dir, server=False)  # an image or text payload: the servers' preprocessing
            bodies, expected, headers = [], [], {}
            for i in range(pool):
                x = spec.example_inputs(batch, seed=1000 + i)  # distinct JPEG files / texts per body
                req = self.live.codec.request(spec, x, self.live.secrets)
                bodies.append(base64.b64encode(req.body).decode())
                headers = dict(req.headers)
                expected.append(rt.predict(x if pre is None else pre(x)))
                path, method = self.live.url(req), req.method
            exp_path = workdir / f"expected-{art.name}-b{batch}-p{pool}.npy"
            np.save(exp_path, np.stack(expected))
            self._cache[key] = (bodies, exp_path, {"url": path, "method": method, "headers": headers,
                                                   "rtol": spec.rtol, "atol": spec.atol})
        return self._cache[key]
