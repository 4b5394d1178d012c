"""Start a private loopback Ray head, deploy ``serve_config.yaml`` on it, wait for SIGTERM, shut everything down.

Run: ``python -m servingbench.adapters.servers.rayserve_driver ray_driver.json`` (the harness's command; the
equivalent by hand is in ``command.txt``).  ``ray_driver.json`` holds the ``ray start`` command (every port pinned
to 127.0.0.1) or, with ``address``, an existing cluster to deploy onto.

Private head: ``ray start --head --block`` runs as our child; we attach with ``ray.init(address=...)`` and deploy the
config file the way ``serve run serve_config.yaml`` does (declaratively).  On an existing cluster a declarative
deploy would delete everyone else's applications, so there each application is ``serve.run`` imperatively and on
stop only our applications are deleted (and Serve shut down only if no application is left).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def main(path: str) -> int:
    with open(path) as f:
        cfg = json.load(f)
    os.environ.pop("RAY_ADDRESS", None)  # never attach to a cluster named by the environment
    import ray
    import yaml
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    stop = threading.Event()

    def on_signal(*_):
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    head = None
    if cfg.get("ray_start"):
        # The `ray` CLI of the environment running this driver (the same venv or container image as `import ray`).
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        head = subprocess.Popen([ray_cli if os.path.isfile(ray_cli) else cfg["ray_start"][0], *cfg["ray_start"][1:]])
    address = cfg.get("address") or f"127.0.0.1:{cfg['gcs_port']}"
    deadline = time.monotonic() + 120
    while True:
        if stop.is_set() or (head is not None and head.poll() is not None):
            print("stopped before Ray was up" if stop.is_set() else f"ray start exited with {head.returncode}")
            _stop_head(head)
            return 0 if stop.is_set() else 1
        try:
            ray.init(address=address, namespace="serve", log_to_driver=True)
            break
        except SystemExit:  # Ray's own SIGTERM handler, active while ray.init runs
            stop.set()
        except (ConnectionError, RuntimeError) as e:
            if time.monotonic() > deadline:
                _stop_head(head)
                raise
            print(f"waiting for the Ray head at {address}: {e}", flush=True)
            time.sleep(0.5)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):  # ray.init installs its own handlers, even when it fails
                signal.signal(sig, on_signal)

    with open(cfg["serve_config"]) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    http_options = {**config.http_options.model_dump(),  # as `serve run` merges them
                    "location": ProxyLocation._to_deployment_mode(config.proxy_location).value}
    client = serve_api.serve_start(http_options=http_options)
    apps = [a.name for a in config.applications]
    if head is not None:
        client.deploy_apps(config, _blocking=False)  # what `serve run serve_config.yaml` does
    else:
        from ray._common.utils import import_attr

        for a in config.applications:
            serve.run(serve_api.call_user_app_builder_with_args_if_necessary(import_attr(a.import_path), a.args),
                      name=a.name, route_prefix=a.route_prefix, blocking=False, logging_config=a.logging_config)
    print(f"deployed {apps}", flush=True)

    while not stop.wait(0.5):
        if head is not None and head.poll() is not None:
            print(f"the Ray head exited with {head.returncode}", flush=True)
            return 1
    try:
        if head is None:
            for name in apps:
                serve.delete(name)
        if head is not None or not serve.status().applications:  # nobody else's apps: no idle proxy left
            serve.shutdown()
        ray.shutdown()
    finally:
        _stop_head(head)
    return 0


def _stop_head(head: subprocess.Popen | None) -> None:
    if head is not None and head.poll() is None:
        head.terminate()  # `ray start --block` stops its raylet/GCS/agents on SIGTERM
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            head.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
