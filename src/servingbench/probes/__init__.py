"""Feature probes: test each framework's claims against the real server and record the evidence.

A probe starts the deployments it needs, sends real requests, and writes a verdict with evidence:

* ``supported``: the feature works natively and the evidence shows it;
* ``partial``: it works with a caveat the evidence names (e.g. multi-model as one server per model);
* ``not_supported``: the framework has no such feature; the evidence shows what happens instead;
* ``failed``: the adapter claims it, but the probe saw it fail;
* ``not_run``: the probe could not run here (e.g. no GPU), with the reason.

Verdicts never come from the adapter's declared capabilities alone: a declared capability is only a claim.
"""

from __future__ import annotations

import contextlib
import glob
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import requests

from servingbench.adapters import registry
from servingbench.contract import CONTRACT_CLAIMS, PROBES, Adapter, Capability, Secrets, UnsupportedDeployment
from servingbench.measure.resources import tree_memory
from servingbench.measure.stats import LatencyHistogram

#: What the comparison survey this project started from says (only where docs/frameworks.md records it).
SURVEY_CLAIMS: dict[tuple[str, str], str] = {
    ("rayserve", "manifest"): "no manifest",
    ("mosec", "batching"): "yes (dynamic batching, CPU/GPU pipelining)",
}


@dataclass
class Verdict:
    feature: str
    verdict: str
    evidence: list[Any] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class ProbeContext:
    """What a probe needs: the adapter, artifacts, secrets and a way to start deployments.

    ``python`` and ``runtime`` are the cell's, as ``run_cell`` passes them: the framework's own interpreter (suite
    ``interpreters:``) and a :class:`~servingbench.runtime.containers.DockerRuntime` (suite ``runtime: docker``), or None for
    the harness's interpreter and local processes.  Every deployment a probe starts uses both.
    """

    def __init__(self, framework: str, artifacts: dict[str, Any], secrets_store, workdir: Path, log_dir: Path,
                 server_cpus: set[int] | None, device: str = "cpu", startup_timeout: float = 180.0,
                 python: str | None = None, runtime: Any = None) -> None:
        self.framework = framework
        self.adapter: Adapter = registry.get(framework)
        self.artifacts = artifacts
        self.store = secrets_store
        self.workdir = workdir
        self.log_dir = log_dir
        self.server_cpus = server_cpus
        self.device = device
        self.startup_timeout = startup_timeout
        self.python = python
        self.runtime = runtime
        self._n = 0

    @contextlib.contextmanager
    def deploy(self, models: list[str] | None = None, launch_override: Callable | None = None,
               on_created: Callable[[Any], None] | None = None, **cfg: Any) -> Iterator[Any]:
        """Start a deployment (DeploymentConfig fields as keyword arguments); stop it on exit.  ``on_created``
        sees the LiveDeployment before its servers are spawned (the readiness probe watches from spawn)."""
        from servingbench.deploy.live import LiveDeployment, make_deployment
        from servingbench.scenarios.schema import DeploymentConfig

        self._n += 1
        label = f"{cfg.pop('label', 'probe')}-{self._n}"
        dcfg = DeploymentConfig(label=label, **cfg)
        arts = [self.artifacts[m] for m in (models or ["mlp"])]
        dep = make_deployment(self.framework, dcfg, arts, self.device)
        self.adapter.validate(dep)
        secrets = self.store.make(auth=dep.auth, tls=bool(dep.tls))
        adapter = self.adapter
        if launch_override is not None:
            adapter = _Override(self.adapter, launch_override)
        live = LiveDeployment(adapter, dep, self.workdir / label, self.log_dir / label, secrets,
                              server_cpus=self.server_cpus, startup_timeout=self.startup_timeout,
                              python=self.python, runtime=self._runtime_for(dep.device))
        if on_created is not None:
            on_created(live)
        with live:
            yield live

    def _runtime_for(self, device: str) -> Any:
        """The cell's runtime; the gpu probe's cuda deployment takes the ``:cuda`` tag of a default ``:cpu`` image."""
        if self.runtime is None or device != "cuda":
            return self.runtime
        import dataclasses

        from servingbench.runtime import containers

        if self.runtime.image == containers.default_image(self.framework, "cpu"):
            return dataclasses.replace(self.runtime, image=containers.default_image(self.framework, "cuda"))
        return self.runtime

    def spec(self, name: str = "mlp"):
        return self.artifacts[name].spec()


class _Override:
    """The adapter with ``launch`` replaced (the manifest probe starts from the framework's own CLI)."""

    def __init__(self, inner: Adapter, launch: Callable) -> None:
        self._inner = inner
        self.launch = launch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def latency(live, spec, n: int = 200, same_input: bool = False) -> dict[str, float]:
    """Sequential requests (one in flight): the per-request latency a single client sees."""
    h = LatencyHistogram()
    xs = [spec.example_inputs(1, seed=i) for i in range(1 if same_input else 16)]
    for i in range(n):
        status, body, dt = live.send(spec, xs[i % len(xs)])
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status} during the latency measurement: {body[:200]!r}")
        h.record(dt)
    return {"n": n, "p50_s": h.percentile(50), "p99_s": h.percentile(99), "mean_s": h.mean()}


def _status_of(live, req, headers: dict | None = None, verify: Any = None) -> tuple[int | str, bytes]:
    try:
        kw = {} if verify is None else {"verify": verify}
        r = live.http.request(req.method, live.url(req), data=req.body,
                                  headers=headers if headers is not None else dict(req.headers), timeout=30, **kw)
        return r.status_code, r.content
    except requests.RequestException as e:
        return type(e).__name__, str(e).encode()[:200]


def _correct(live, spec, x: np.ndarray, out: np.ndarray) -> bool:
    from servingbench.models.runtime import load_runtime

    art = live.deployment.model(spec.name)
    exp = load_runtime(art.dir, fmt="eager", threads=1).predict(x)
    return out.shape == exp.shape and bool(np.allclose(out, exp, rtol=spec.rtol, atol=spec.atol))


# ---- probes ------------------------------------------------------------------------------------------------------
def probe_multi_model(ctx: ProbeContext) -> list[Verdict]:
    names = list(ctx.artifacts)
    mm = Verdict("multi_model", "failed")
    lu = Verdict("load_unload", "not_supported")
    with ctx.deploy(models=[names[0]], label="single") as one:
        single_mem = tree_memory(one.processes())
    with ctx.deploy(models=names, label="multi") as live:
        mem = tree_memory(live.processes())
        servers = len(live.servers)
        mm.evidence.append(f"{len(names)} models {names} deployed; {servers} server process tree(s)")
        mm.evidence.append({"verification": {k: v["max_abs_err"] for k, v in live.verification.items()}})
        mm.metrics = {"models": len(names), "servers": servers, "pss_bytes": mem["pss_bytes"],
                      "single_model_pss_bytes": single_mem["pss_bytes"],
                      "pss_ratio_vs_single": mem["pss_bytes"] / max(1, single_mem["pss_bytes"])}
        per_model = {n: latency(live, ctx.spec(n), n=50) for n in names}
        mm.metrics["per_model_latency"] = per_model
        mm.evidence.append(f"memory PSS {mem['pss_bytes'] / 2**20:.0f} MiB for {len(names)} models vs "
                           f"{single_mem['pss_bytes'] / 2**20:.0f} MiB for one")
        if servers == 1:
            mm.verdict = "supported"
        else:
            mm.verdict, mm.reason = "partial", f"not native: one server per model ({servers} servers)"
        # load / unload at run time
        other, target = names[0], names[-1]
        req = live.codec.repository_request("unload", target, live.secrets)
        if req is None:
            lu.reason = "the framework has no load/unload API"
            lu.evidence.append("no repository API: models are fixed at start")
        else:
            lu.verdict = "failed"
            t0 = time.perf_counter()
            st, body = _status_of(live, req)
            t_unload = time.perf_counter() - t0
            lu.evidence.append(f"POST {req.path} -> {st} in {t_unload * 1e3:.0f} ms")
            spec_t, spec_o = ctx.spec(target), ctx.spec(other)
            x = spec_t.example_inputs(1)
            gone, body_gone, _ = live.send(spec_t, x)
            lu.evidence.append(f"inference on unloaded {target!r} -> HTTP {gone}: {body_gone[:120]!r}")
            xo = spec_o.example_inputs(1)
            still = live.infer(spec_o, xo)
            lu.evidence.append(f"{other!r} still served correctly meanwhile: {_correct(live, spec_o, xo, still)}")
            req_load = live.codec.repository_request("load", target, live.secrets)
            t0 = time.perf_counter()
            st2, _ = _status_of(live, req_load)
            t_load = time.perf_counter() - t0
            lu.evidence.append(f"POST {req_load.path} -> {st2} in {t_load * 1e3:.0f} ms")
            back = live.infer(spec_t, x)
            ok_back = _correct(live, spec_t, x, back)
            lu.evidence.append(f"inference on reloaded {target!r} correct: {ok_back}")
            lu.metrics = {"unload_s": t_unload, "load_s": t_load, "unloaded_status": gone}
            if st == 200 and not 200 <= gone < 300 and st2 == 200 and ok_back:
                lu.verdict = "supported"
            else:
                lu.reason = "unload/load did not behave as documented (see evidence)"
    return [mm, lu]


def _cache_run(ctx: ProbeContext, live, spec) -> dict[str, Any]:
    hot = latency(live, spec, n=300, same_input=True)
    cold = latency(live, spec, n=100, same_input=False)
    x = spec.example_inputs(1, seed=0)
    ok = _correct(live, spec, x, live.infer(spec, x))
    stats = None
    req = live.codec.cache_stats_request(spec.name, live.secrets)
    if req is not None:
        st, body = _status_of(live, req)
        stats = live.codec.parse_cache_stats(spec.name, st if isinstance(st, int) else 0, body)
    return {"repeated": hot, "distinct": cold, "correct": ok, "server_stats": stats}


def _alternating(live, specs, n: int = 60) -> dict[str, float]:
    """Requests alternating between models: with an LRU too small for them, every request loads a model."""
    h = LatencyHistogram()
    xs = {s.name: s.example_inputs(1) for s in specs}
    for i in range(n):
        spec = specs[i % len(specs)]
        status, body, dt = live.send(spec, xs[spec.name])
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status} for {spec.name}: {body[:200]!r}")
        h.record(dt)
    return {"p50_s": h.percentile(50), "p99_s": h.percentile(99)}


def probe_model_cache(ctx: ProbeContext, v: Verdict) -> None:
    """An LRU of models: alternating two models is fast when both fit, slow (a load per request) when one fits."""
    knob = "max_models_per_replica"
    if knob not in ctx.adapter.Options.model_fields:
        v.verdict, v.reason = "not_run", f"the adapter has no {knob!r} option to size its model cache"
        return
    names = [n for n in ctx.artifacts if n != "cnn"][:2] or list(ctx.artifacts)[:2]
    specs = [ctx.spec(n) for n in names]
    res = {}
    for size in (len(names), 1):
        with ctx.deploy(models=names, label=f"modelcache-{size}", cache=True,
                        options={ctx.framework: {knob: size}}) as live:
            _alternating(live, specs, n=10)  # load both once
            res[size] = _alternating(live, specs)
            x = specs[0].example_inputs(1)
            res[f"correct_{size}"] = _correct(live, specs[0], x, live.infer(specs[0], x))
    fits, evicts = res[len(names)]["p50_s"], res[1]["p50_s"]
    v.metrics = {"alternating_p50_s_cache_fits": fits, "alternating_p50_s_cache_of_one": evicts,
                 "load_penalty_x": evicts / max(fits, 1e-9)}
    v.evidence.append(f"alternating {names}: LRU of {len(names)} -> p50 {fits * 1e3:.2f} ms; LRU of 1 -> "
                      f"p50 {evicts * 1e3:.2f} ms (x{evicts / max(fits, 1e-9):.1f}: a model load per request)")
    ok = res[f"correct_{len(names)}"] and res["correct_1"]
    if not ok:
        v.verdict, v.reason = "failed", "answers from the model cache differ from the reference"
    elif evicts > 1.5 * fits:
        v.verdict = "supported"
    else:
        v.verdict, v.reason = "partial", "models load on demand, but eviction shows no load cost"


def probe_caching(ctx: ProbeContext) -> list[Verdict]:
    caps = ctx.adapter.capabilities
    out = []
    for feature, cap in (("response_cache", Capability.RESPONSE_CACHE), ("model_cache", Capability.MODEL_CACHE)):
        v = Verdict(feature, "not_supported")
        if cap not in caps:
            v.reason = f"{ctx.framework} declares no {feature}"
        out.append(v)
    if Capability.MODEL_CACHE in caps:
        probe_model_cache(ctx, out[1])
    claimed = [v for v in out if v.reason == "" and v.feature == "response_cache"]
    if Capability.MODEL_CACHE in caps and not claimed:
        return out
    if not claimed:
        # Evidence for "none": repeated identical requests are not faster than distinct ones.
        with ctx.deploy(label="nocache") as live:
            r = _cache_run(ctx, live, ctx.spec())
        for v in out:
            v.evidence.append(f"no cache option; repeated-input p50 {r['repeated']['p50_s'] * 1e3:.2f} ms vs "
                              f"distinct {r['distinct']['p50_s'] * 1e3:.2f} ms")
            v.metrics = r
        return out
    spec = ctx.spec()
    with ctx.deploy(label="cache-off") as off:
        r_off = _cache_run(ctx, off, spec)
    with ctx.deploy(label="cache-on", cache=True) as on:
        r_on = _cache_run(ctx, on, spec)
    speedup = r_off["repeated"]["p50_s"] / max(r_on["repeated"]["p50_s"], 1e-9)
    for v in claimed:
        v.metrics = {"off": r_off, "on": r_on, "speedup_p50_repeated": speedup}
        v.evidence.append(f"repeated identical input p50: cache off {r_off['repeated']['p50_s'] * 1e3:.2f} ms, "
                          f"on {r_on['repeated']['p50_s'] * 1e3:.2f} ms (x{speedup:.2f})")
        v.evidence.append(f"cached answers verified against the reference: {r_on['correct']}")
        stats = r_on["server_stats"]
        if stats is not None:
            v.evidence.append(f"server's own counters: {stats}")
        if not r_on["correct"]:
            v.verdict, v.reason = "failed", "cached answer differs from the reference"
        elif stats is not None and stats.get("hits", 0) > 0:
            v.verdict = "supported"
            v.metrics["hit_ratio"] = stats["hits"] / max(1, stats["hits"] + stats.get("misses", 0))
        elif stats is not None:
            v.verdict, v.reason = "failed", "cache on, but the server counted no hits"
        elif speedup > 1.2:
            v.verdict, v.reason = "supported", "no counters exposed; hits inferred from latency"
        else:
            v.verdict = "partial"
            v.reason = "the cache option is accepted and answers stay correct, but neither counters nor latency show hits"
    return out


def _verdict_if_claimed(ctx: ProbeContext, feature: str, cap: Capability, unclaimed: str) -> tuple[Verdict, bool]:
    """The feature's verdict to fill, and whether the adapter claims it (if not: ``not_supported``, the reason)."""
    v = Verdict(feature, "not_supported")
    claimed = cap in ctx.adapter.capabilities
    if not claimed:
        v.reason = unclaimed
    return v, claimed


def probe_batching(ctx: ProbeContext) -> list[Verdict]:
    v, claimed = _verdict_if_claimed(ctx, "batching", Capability.BATCHING,
                                     f"{ctx.framework} declares no server-side batching")
    if not claimed:
        return [v]
    import concurrent.futures as cf

    spec = ctx.spec()
    with ctx.deploy(label="batched", max_batch_size=8, batch_timeout="5ms") as live:
        xs = [spec.example_inputs(1, seed=i) for i in range(32)]
        with cf.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda x: live.infer(spec, x), xs))
        ok = all(_correct(live, spec, x, o) for x, o in zip(xs, outs))
        v.evidence.append(f"max_batch_size 8, 5 ms: 32 concurrent single-sample requests, all correct: {ok}")
        v.verdict = "supported" if ok else "failed"
        if not ok:
            v.reason = "batched answers differ from the reference (mixed-up rows?)"
    return [v]


def probe_manifest(ctx: ProbeContext) -> list[Verdict]:
    v = Verdict("manifest", "not_supported")
    adapter = ctx.adapter
    if not adapter.native_manifest:
        v.reason = "no native manifest; servingbench's deployment.json + generated server script reproduce it"
        v.evidence.append("provided by servingbench")
        return [v]

    def launch_from_manifest(deployment, rctx):
        specs = adapter.launch(deployment, rctx)
        argv = adapter.manifest_command(deployment, rctx)
        if argv is None:
            return specs
        import dataclasses

        return [dataclasses.replace(specs[0], argv=argv)] + list(specs[1:])

    with ctx.deploy(label="manifest", launch_override=launch_from_manifest) as live:
        files = sorted({str(Path(f).relative_to(live.workdir)) for pat in adapter.native_manifest
                        for f in glob.glob(str(live.workdir / pat), recursive=True)})
        argv = live.launch_argv[0]
        v.evidence.append({"started_with": argv, "manifest_files": files[:20]})
        v.evidence.append({"verification": {k: val["max_abs_err"] for k, val in live.verification.items()}})
        cmd = adapter.manifest_command(live.deployment, live.ctx)
        if cmd is None:
            v.verdict = "partial"
            v.reason = ("native manifest written and kept, but the framework's CLI cannot start it alone "
                        "(e.g. it needs a running cluster first; see command.txt in the manifest folder)")
        elif files:
            v.verdict = "supported"
        else:
            v.verdict, v.reason = "failed", "no manifest file found in the workdir"
    return [v]


def _plain_status(ctx: ProbeContext, spec, x) -> int | str:
    """Status of one inference request, no credentials, to a plain deployment (evidence for "none")."""
    with ctx.deploy(label="plain") as live:
        return _status_of(live, live.codec.request(spec, x, None))[0]


def _plain_latency(ctx: ProbeContext, spec) -> dict[str, float]:
    """Single-client latency of a plain deployment: the baseline for auth/TLS overhead."""
    with ctx.deploy(label="plain") as live:
        return latency(live, spec)


def _unclaimed(ctx: ProbeContext, v: Verdict, cap: Capability, reason: str, evidence: str) -> bool:
    """For an unclaimed security feature: the evidence that a plain request is served instead.  True if unclaimed."""
    if cap in ctx.adapter.capabilities:
        return False
    spec = ctx.spec()
    v.reason = reason
    v.evidence.append(evidence.format(_plain_status(ctx, spec, spec.example_inputs(1))))
    return True


def probe_auth(ctx: ProbeContext) -> list[Verdict]:
    v = Verdict("auth", "not_supported")
    spec = ctx.spec()
    x = spec.example_inputs(1)
    if _unclaimed(ctx, v, Capability.AUTH, "no native authentication", "unauthenticated inference request -> HTTP {} "
                  "(served)"):
        return [v]
    base = _plain_latency(ctx, spec)
    with ctx.deploy(label="auth", auth=True) as live:
        req_ok = live.codec.request(spec, x, live.secrets)
        req_none = live.codec.request(spec, x, None)
        req_wrong = live.codec.request(spec, x, Secrets(token="wrong-" + "x" * 20))
        st_none, _ = _status_of(live, req_none)
        st_wrong, _ = _status_of(live, req_wrong)
        st_ok, body_ok = _status_of(live, req_ok)
        correct = isinstance(st_ok, int) and _correct(live, spec, x, live.codec.decode(spec, st_ok, body_ok))
        v.evidence += [f"no credentials -> {st_none}", f"wrong credentials -> {st_wrong}",
                       f"right credentials -> {st_ok} (correct output: {correct})"]
        open_paths = {}
        for path in ctx.adapter.open_paths:
            r = _status_of(live, type(req_ok)("GET", path, b"", {}), headers={})
            open_paths[path] = r[0]
        if open_paths:
            v.evidence.append({"without credentials": open_paths})
        authed = latency(live, spec)
        v.metrics = {"no_credentials": st_none, "wrong_credentials": st_wrong, "right_credentials": st_ok,
                     "open_paths": open_paths, "p50_plain_s": base["p50_s"], "p50_auth_s": authed["p50_s"],
                     "overhead_p50_s": authed["p50_s"] - base["p50_s"]}
    rejected = all(isinstance(s, int) and 400 <= s < 500 for s in (st_none, st_wrong))
    if rejected and st_ok == 200 and correct:
        v.verdict = "supported"
    else:
        v.verdict, v.reason = "failed", "expected reject, reject, success (see evidence)"
    return [v]


def probe_tls(ctx: ProbeContext) -> list[Verdict]:
    v = Verdict("tls", "not_supported")
    spec = ctx.spec()
    x = spec.example_inputs(1)
    if _unclaimed(ctx, v, Capability.TLS, "no native TLS on the inference endpoint",
                  "plaintext HTTP inference -> {}"):
        return [v]
    base = _plain_latency(ctx, spec)
    with ctx.deploy(label="tls", tls=True) as live:
        url = live.base_url(live.codec.request(spec, x, live.secrets).port)
        out = live.infer(spec, x)  # verified against the per-run CA
        correct = _correct(live, spec, x, out)
        v.evidence.append(f"{url}: handshake verified with the per-run CA, correct output: {correct}")
        req = live.codec.request(spec, x, live.secrets)
        try:
            r = requests.post(url.replace("https://", "http://") + req.path, data=req.body, headers=dict(req.headers),
                              timeout=10)
            plain_result: Any = r.status_code
        except requests.RequestException as e:
            plain_result = type(e).__name__
        try:
            requests.post(url + req.path, data=req.body, headers=dict(req.headers), timeout=10, verify=True)
            unverified = "accepted by the system trust store (unexpected)"
        except requests.exceptions.SSLError:
            unverified = "rejected: certificate not trusted without the per-run CA"
        v.evidence += [f"plaintext to the TLS port -> {plain_result}", f"client without the CA -> {unverified}"]
        tls_lat = latency(live, spec)
        v.metrics = {"p50_plain_s": base["p50_s"], "p50_tls_s": tls_lat["p50_s"],
                     "overhead_p50_s": tls_lat["p50_s"] - base["p50_s"], "plaintext": plain_result}
    plaintext_rejected = plain_result != 200
    v.verdict = "supported" if correct and plaintext_rejected else "failed"
    if v.verdict == "failed":
        v.reason = "TLS answer wrong or plaintext accepted (see evidence)"
    # mutual TLS where the adapter accepts it
    try:
        with ctx.deploy(label="mtls", tls="mutual") as m:
            req = m.codec.request(spec, x, m.secrets)
            try:
                r = requests.post(m.url(req), data=req.body, headers=dict(req.headers), timeout=10,
                                  verify=str(m.secrets.ca_cert))
                no_cert: Any = r.status_code
            except requests.RequestException as e:
                no_cert = type(e).__name__
            with_cert = m.send(spec, x)[0]
            v.evidence.append(f"mutual TLS: without client cert -> {no_cert}, with -> {with_cert}")
            v.metrics["mutual"] = {"without_cert": no_cert, "with_cert": with_cert}
    except UnsupportedDeployment as e:
        v.evidence.append(f"mutual TLS: not offered ({e})")
    except Exception as e:  # noqa: BLE001
        v.evidence.append(f"mutual TLS: failed to start ({type(e).__name__}: {str(e).splitlines()[0]})")
    return [v]


def probe_grpc(ctx: ProbeContext) -> list[Verdict]:
    v, claimed = _verdict_if_claimed(ctx, "grpc", Capability.GRPC, f"{ctx.framework} has no gRPC inference endpoint")
    if not claimed:
        return [v]
    spec = ctx.spec()
    x = spec.example_inputs(4)
    with ctx.deploy(label="grpc") as live:
        try:
            out = ctx.adapter.grpc_infer(live.deployment, live.ctx, spec, x)
        except UnsupportedDeployment as e:
            v.verdict, v.reason = "not_run", f"the adapter claims gRPC but offers no client for the probe ({e})"
            return [v]
        ok = _correct(live, spec, x, out)
        v.evidence.append(f"V2 gRPC ModelInfer on 127.0.0.1:{live.ctx.ports['grpc']}: correct output {ok}")
    v.verdict = "supported" if ok else "failed"
    return [v]


def probe_gpu(ctx: ProbeContext) -> list[Verdict]:
    import torch

    v = Verdict("gpu", "not_run")
    if not torch.cuda.is_available():
        v.reason = "no CUDA device on this machine"
        return [v]
    if Capability.GPU not in ctx.adapter.capabilities:
        v.verdict, v.reason = "not_supported", "adapter declares no GPU placement"
        return [v]
    ctx.device = "cuda"
    try:
        with ctx.deploy(label="gpu") as live:
            v.evidence.append({"verification": {k: val["max_abs_err"] for k, val in live.verification.items()}})
            v.verdict = "supported"
    finally:
        ctx.device = "cpu"
    return [v]


class ReadinessWatcher(threading.Thread):
    """From the server's spawn, polls its readiness endpoint (the adapter's ``LaunchSpec.ready``) and a real
    inference request (batch 1 of the reference inputs) in turn, every ``interval_s``; ``samples`` holds
    ``(seconds since spawn, health ready?, inference state)`` with the state ``ok``, ``wrong`` or ``error: ...``."""

    def __init__(self, live: Any, spec: Any, interval_s: float = 0.02) -> None:
        super().__init__(name="readiness-watcher", daemon=True)
        self.live, self.spec, self.interval_s = live, spec, interval_s
        self.samples: list[tuple[float, bool, str]] = []
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.retried = 0  # inference retried on a fresh connection after a ConnectionError while health said ready
        self.details: dict[str, str] = {}  # the first message of each inference error kind, for the evidence

    def run(self) -> None:
        try:
            self._watch()
        except Exception as e:  # noqa: BLE001 - reported in the verdict
            self.error = f"{type(e).__name__}: {e}"

    def _watch(self) -> None:
        live = self.live
        while not live.servers and not self.stop_event.wait(0.002):
            pass
        if not live.servers:
            return
        server = live.servers[0]
        ready = server.spec.ready
        http = live.new_session()
        x, expected = live.deployment.model(self.spec.name).reference()
        x, expected = x[:1], expected[:1]
        req = live.codec.request(self.spec, x, live.secrets)
        health_url, infer_url = live.base_url(ready.port) + ready.path, live.url(req)
        while not self.stop_event.is_set():
            t = time.perf_counter() - (server.t_spawn or time.perf_counter())
            try:
                r = http.get(health_url, headers=dict(ready.headers), timeout=0.5)
                healthy = r.status_code == ready.status and (ready.body_contains is None
                                                             or ready.body_contains in r.text)
            except requests.RequestException:
                healthy = False
            state = self._infer(http, req, infer_url, expected)
            if healthy and state == "error: ConnectionError":
                # A pooled keep-alive connection the server dropped as the request went out is the client's race,
                # not the server's readiness: ask once more on a fresh connection (counted in ``retried``).
                http.close()
                self.retried += 1
                state = self._infer(http, req, infer_url, expected)
            self.samples.append((t, healthy, state))
            self.stop_event.wait(self.interval_s)

    def _infer(self, http: requests.Session, req: Any, url: str, expected: np.ndarray) -> str:
        """One inference request: ``ok``, ``wrong`` (a decoded answer off the reference) or ``error: ...``."""
        try:
            r = http.request(req.method, url, data=req.body, headers=dict(req.headers), timeout=2.0)
        except requests.RequestException as e:  # connection refused, reset, timeout
            kind = f"error: {type(e).__name__}"
            self.details.setdefault(kind, str(e)[:300])
            return kind
        if r.status_code >= 400:
            return f"error: HTTP {r.status_code}"
        try:
            got = self.live.codec.decode(self.spec, r.status_code, r.content)
        except Exception as e:  # noqa: BLE001 - an undecodable answer is not an answer
            return f"error: {type(e).__name__}"
        same = got.shape == expected.shape and np.allclose(got, expected, rtol=self.spec.rtol, atol=self.spec.atol)
        return "ok" if same else "wrong"

    def wait_settled(self, hold_s: float = 1.0, timeout_s: float = 30.0) -> bool:
        """Wait until health and inference have both been fine for ``hold_s``."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline and self.is_alive():
            ok = [t for t, h, st in self.samples if h and st == "ok"]
            bad = [t for t, h, st in self.samples if not (h and st == "ok")]
            if ok and ok[-1] - max([b for b in bad if b < ok[-1]] or [ok[0]]) >= hold_s:
                return True
            time.sleep(0.05)
        return False


def readiness_intervals(samples: list[tuple[float, bool, str]]) -> dict[str, Any]:
    """From watcher samples: when health first said ready, when inference first answered correctly, and the
    samples (and their time span) where health said ready but inference failed or answered wrongly."""
    health = next((t for t, h, _ in samples if h), None)
    correct = next((t for t, _, st in samples if st == "ok"), None)
    false_ready = [(t, st) for t, h, st in samples if h and st != "ok"]
    errors: dict[str, int] = {}
    for _, st in false_ready:
        errors[st] = errors.get(st, 0) + 1
    # The span runs from the first false-ready poll to the next poll that answered correctly (a single poll that
    # waited 2 s for its answer is a 2 s window, not 0 s); with no correct poll after it, to the last poll.
    span = 0.0
    if false_ready:
        after = [t for t, h, st in samples if t > false_ready[-1][0] and st == "ok"]
        span = (after[0] if after else samples[-1][0]) - false_ready[0][0]
    return {"health_ready_s": health, "first_correct_s": correct, "false_ready_samples": len(false_ready),
            "false_ready_span_s": span, "false_ready_kinds": errors, "samples": len(samples),
            "wrong_answers": sum(1 for _, st in false_ready if st == "wrong")}


def probe_readiness(ctx: ProbeContext) -> list[Verdict]:
    """Ready means ready: from spawn, is there any moment where the readiness endpoint says ready but inference
    fails or answers wrongly?  (Polling both every 20 ms until both have been fine for a second.)"""
    v = Verdict("readiness", "not_run")
    spec = ctx.spec()
    watchers: list[ReadinessWatcher] = []

    def watch(live: Any) -> None:
        watchers.append(ReadinessWatcher(live, spec))
        watchers[0].start()

    try:
        with ctx.deploy(on_created=watch) as live:
            if live.remote is not None:
                v.reason = "a remote target: its spawn is not observable"
                return [v]
            settled = watchers[0].wait_settled()
            # Stop watching while the server still runs: a poll that overlaps its shutdown would see health answer
            # and the next inference refused, a false "ready before it could answer" made by the probe itself.
            _stop_watchers(watchers)
    finally:
        _stop_watchers(watchers)
    w = watchers[0]
    m = readiness_intervals(w.samples)
    v.metrics = {k: val for k, val in m.items() if k != "false_ready_kinds"}
    v.metrics["retried_on_fresh_connection"] = w.retried
    ready = w.live.servers[0].spec.ready if w.live.servers else None
    where = f"GET {ready.path}" if ready else "the readiness endpoint"
    v.evidence.append(f"{m['samples']} polls of {where} and POST inference from spawn: health ready at "
                      f"{_sec(m['health_ready_s'])}, first correct answer at {_sec(m['first_correct_s'])}")
    if w.error or not settled:
        v.verdict, v.reason = "failed", w.error or "health and inference never both fine for 1 s within 30 s"
    elif m["false_ready_samples"]:
        v.verdict = "partial"
        v.reason = (f"ready before it could answer: {m['false_ready_samples']} poll(s) over "
                    f"{m['false_ready_span_s']:.2f} s where {where} said ready but inference "
                    f"{'answered wrongly' if m['wrong_answers'] else 'failed'}")
        v.evidence.append(f"inference while health said ready: {m['false_ready_kinds']}")
        v.evidence.extend(f"{k}: {w.details[k]}" for k in m["false_ready_kinds"] if k in w.details)
    else:
        v.verdict = "supported"
        v.evidence.append("no poll where health said ready and inference failed or answered wrongly")
    return [v]


def _stop_watchers(watchers: list[ReadinessWatcher]) -> None:
    for w in watchers:
        w.stop_event.set()
        w.join(5)


def _sec(t: float | None) -> str:
    return "never" if t is None else f"{t:.2f} s"


from servingbench.probes.drain import probe_drain  # noqa: E402 - these use Verdict, defined above
from servingbench.probes.metrics import probe_metrics  # noqa: E402
from servingbench.probes.overload import probe_overload  # noqa: E402
from servingbench.probes.streaming import probe_streaming  # noqa: E402

PROBE_FUNCS: dict[str, Callable[[ProbeContext], list[Verdict]]] = {
    "multi_model": probe_multi_model, "caching": probe_caching, "batching": probe_batching,
    "manifest": probe_manifest, "auth": probe_auth, "tls": probe_tls, "grpc": probe_grpc, "gpu": probe_gpu,
    "readiness": probe_readiness, "metrics": probe_metrics, "drain": probe_drain, "overload": probe_overload,
    "streaming": probe_streaming,
}


def run_probe(name: str, ctx: ProbeContext) -> list[dict[str, Any]]:
    """Run one probe and turn its verdicts into result records (a crash becomes ``failed`` with the trace)."""
    adapter = ctx.adapter
    try:
        verdicts = PROBE_FUNCS[name](ctx)
    except Exception as e:  # noqa: BLE001
        verdicts = [Verdict(f, "failed", [f"{type(e).__name__}: {e}"[:2000]], reason="the probe raised",
                            metrics={"traceback": traceback.format_exc(limit=6)}) for f in PROBES[name]]
    out = []
    for v in verdicts:
        claimed = v.feature in {c.value for c in (*adapter.capabilities, *CONTRACT_CLAIMS)}
        out.append({
            "type": "probe", "id": f"probe:{ctx.framework}:{v.feature}", "framework": ctx.framework,
            "feature": v.feature, "probe": name, "verdict": v.verdict, "reason": v.reason,
            "evidence": v.evidence, "metrics": v.metrics, "claimed": claimed,
            "docs_claim": adapter.docs_claims.get(v.feature, ""),
            "survey_claim": SURVEY_CLAIMS.get((ctx.framework, v.feature), ""),
            # A claim the probe refutes, or a feature that works fully although not claimed.
            "disagrees_with_claim": (claimed and v.verdict in ("not_supported", "failed"))
                                    or (not claimed and v.verdict == "supported"),
        })
    return out
