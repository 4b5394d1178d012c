"""Ray Serve adapter: the config manifest (pure), separate applications and multiplexing against a private Ray head
whose every listening port is pinned to loopback, and a stop that leaves no Ray process or session dir."""

from __future__ import annotations

import glob
import os
import time

import psutil
import pytest
import yaml

from servingbench.adapters import registry
from servingbench.contract import Ports, RunContext
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.runtime.supervisor import marked_processes
from servingbench.scenarios.schema import DeploymentConfig


def _deployment(zoo, models, **cfg):
    return make_deployment("rayserve", DeploymentConfig(**cfg), [zoo[m] for m in models], "cpu")


def test_config_file_is_the_manifest(zoo_artifacts, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from servingbench.models import get_model

    counter = iter(range(20000, 21000))
    adapter = registry.get("rayserve")
    dep = _deployment(zoo_artifacts, ["mlp", "encoder"], workers=2, max_batch_size=4, batch_timeout="2ms")
    ctx = RunContext(workdir=tmp_path, ports=Ports(lambda: next(counter)), marker="abc")
    adapter.prepare(dep, ctx)
    config = ServeDeploySchema.model_validate(yaml.safe_load((tmp_path / "serve_config.yaml").read_text()))
    assert config.http_options.host == "127.0.0.1" and config.http_options.port == ctx.ports["http"]
    assert [(a.name, a.route_prefix) for a in config.applications] == [("mlp", "/predict/mlp"),
                                                                        ("encoder", "/predict/encoder")]
    d = config.applications[0].deployments[0]
    assert d.num_replicas == 2 and d.max_ongoing_requests >= 64
    assert d.user_config == {"max_batch_size": 4, "batch_wait_timeout_s": 0.002}
    assert (tmp_path / "command.txt").read_text().count("serve run --address 127.0.0.1:") == 1
    spec = adapter.launch(dep, ctx)[0]
    assert spec.env["RAY_worker_niceness"] == "0" and "RAY_ADDRESS" not in spec.env
    assert not spec.signal_group and spec.cleanup_globs and len(spec.cleanup_globs[0]) < 40
    mlp = get_model("mlp")
    assert "serve_multiplexed_model_id" not in adapter.codec(dep).request(mlp, mlp.example_inputs(1)).headers


def _census(procs) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """pid -> (its title, its listening addresses) for every process of the deployment."""
    out = {}
    for p in procs:
        try:
            title = " ".join(p.cmdline())
            out[p.pid] = (title, [(c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                                  if c.status == psutil.CONN_LISTEN])
        except psutil.Error:
            continue
    return out


def _listening(census) -> dict[tuple[str, int], str]:
    return {a: title[:70] for title, addrs in census.values() for a in addrs}


def _replicas(census) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """The Serve replicas (``ray::ServeReplica:<app>:<deployment>`` while idle, ``...<method>`` while serving)."""
    return {pid: v for pid, v in census.items() if "ServeReplica" in v[0]}


def _replica_grpc(census, ours: set[int]) -> set[tuple[str, int]]:
    """Listeners of Serve replicas on ports we did not hand out: each replica's inter-deployment gRPC server."""
    return {a for _, addrs in _replicas(census).values() for a in addrs if a[1] not in ours}


def _show(census) -> str:
    return "\n".join(f"  pid {pid}: {title[:90]} listens on {addrs}" for pid, (title, addrs) in sorted(census.items()))


@pytest.mark.server
@pytest.mark.parametrize("multiplex", [False, True], ids=["applications-tls", "multiplex-batched"])
def test_two_models_verify_on_loopback_and_stop_clean(zoo_artifacts, tmp_path, multiplex):
    from servingbench.runtime.secrets import SecretStore
    from servingbench.models import get_model

    cfg = {"max_batch_size": 4} if multiplex else {"tls": True}
    dep = _deployment(zoo_artifacts, ["mlp", "encoder"], options={"rayserve": {"multiplex": multiplex}}, **cfg)
    adapter = registry.get("rayserve")
    adapter.validate(dep)
    with SecretStore() as store, LiveDeployment(
        adapter, dep, tmp_path / "deploy", tmp_path / "logs", store.make(auth=False, tls=not multiplex),
        startup_timeout=240,
    ) as live:
        assert set(live.verification) == {"mlp", "encoder"}
        assert live.base_url().startswith("http://" if multiplex else "https://")
        if multiplex:  # one application, models picked by header
            req = live.codec.request(get_model("encoder"), get_model("encoder").example_inputs(1))
            assert req.headers["serve_multiplexed_model_id"] == "encoder"
        ours = set(live.ctx.ports.assigned().values())
        want = 1 if multiplex else 2
        # A replica opens its gRPC server in _on_initialized, which may finish after the proxy already routes to
        # it: take the census once every replica's listener is up (or 60 s have passed, then assert on that one).
        deadline = time.monotonic() + 60
        while True:
            census = _census(live.processes())
            replicas = _replicas(census)
            up = [pid for pid, (_, addrs) in replicas.items() if any(a[1] not in ours for a in addrs)]
            if (len(replicas) >= want and len(up) == len(replicas)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        listening = _listening(census)
        assert listening, "no listening sockets found"
        # Every listener of the private head is loopback-only.  Every port is one we handed out, except each Serve
        # replica's inter-deployment gRPC server: Ray binds it to [::]:0 (hard-coded in
        # ray/serve/_private/replica.py, _on_initialized); rayserve_app rebinds it to 127.0.0.1:0.
        wild = {a: who for a, who in listening.items() if a[0] not in ("127.0.0.1", "::ffff:127.0.0.1")}
        assert not wild, f"listeners on other interfaces: {wild}\n{_show(census)}"
        replica_grpc = _replica_grpc(census, ours)
        assert len(replicas) == want and len(replica_grpc) == want, (
            f"{len(replicas)} replica process(es) and {len(replica_grpc)} replica gRPC listener(s), {want} expected;"
            f" ports we handed out: {sorted(ours)}\n{_show(census)}")
        unpinned = {a: who for a, who in listening.items() if a[1] not in ours and a not in replica_grpc}
        assert not unpinned, f"listeners on ports we did not hand out: {unpinned}\n{_show(census)}"
        temp_dir = live.servers[0].spec.cleanup_globs[0]
        assert glob.glob(os.path.join(temp_dir, "session_*"))
    assert not marked_processes(live.marker), "Ray processes survived the stop"
    assert not os.path.exists(temp_dir), "Ray temp/session dir left behind"
    for r in live.stop_reports:
        assert not r.survivors and not r.ports_held, r
