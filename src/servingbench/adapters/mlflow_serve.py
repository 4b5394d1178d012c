"""MLflow: each zoo model saved as an MLflow model (``MLmodel``) and served by ``mlflow models serve``, one server each.

The module is not called ``mlflow.py``: that would shadow the ``mlflow`` package inside this package's imports.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

from servingbench.adapters import _json
from servingbench.adapters.base import (
    Adapter, Capability, Deployment, LaunchSpec, ReadyProbe, RequestSpec, RunContext, Secrets, UnsupportedDeployment,
)

APP = "mlflow.pyfunc.scoring_server.app:app"


class MLflowAdapter(Adapter):
    """MLflow adapter (``mlflow models serve --env-manager local``).

    Knobs: ``workers`` (uvicorn workers, ``-w``), ``threads`` (OMP_NUM_THREADS of the scoring process),
    ``model_format`` (``eager`` -> pt2 export, ``torchscript`` -> the scripted module, pickle format), ``tls``
    (the same scoring app under uvicorn with ``--ssl-keyfile/--ssl-certfile``; ``mlflow models serve`` has no TLS
    flags).  multi_model: not native (one server per model, each on its own port ``http-<model>``).
    Requests: ``{"inputs": [...]}`` to ``/invocations`` -> ``{"predictions": [...]}``.
    """

    name = "mlflow"
    distribution = "mlflow"
    capabilities = frozenset({Capability.TLS, Capability.MANIFEST})
    native_manifest = ("*/MLmodel",)
    options_doc = {
        "serialization_format": "'pt2' (torch.export; MLflow's default) or 'pickle'; default: pt2 for eager "
                                "models (pickle where torch.export fails), pickle for torchscript",
        "timeout_s": "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT: per-request timeout (default 60)",
    }
    docs_claims = {
        "multi_model": "no: one model per `mlflow models serve` (not native: one server per model)",
        "manifest": "partly: the MLmodel file describes the model, not the server (flags on the CLI)",
        "tls": "no flags on `mlflow models serve`; the scoring app is a FastAPI app that uvicorn serves with TLS",
        "batching": "no (a request may carry a batch)", "response_cache": "no", "model_cache": "no",
        "auth": "no", "grpc": "no", "gpu": "no serving flag (the pytorch flavor loads on the saved device)",
        "load_unload": "no",
    }

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        if deployment.tls == "mutual":
            raise UnsupportedDeployment("mlflow: the TLS path does not require client certificates")
        fmt = deployment.options.get("serialization_format")
        if fmt not in (None, "pt2", "pickle"):
            raise UnsupportedDeployment(f"mlflow: options.serialization_format is {fmt!r}; valid: 'pt2', 'pickle'")
        if fmt == "pt2" and deployment.model_format == "torchscript":
            raise UnsupportedDeployment("mlflow: pt2 cannot export a TorchScript module; use serialization_format "
                                        "'pickle' or model_format 'eager'")

    # ---- manifests -----------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        self.validate(deployment)
        formats = {m.name: self._save(m, deployment, ctx.workdir / m.name) for m in deployment.models}
        (ctx.workdir / "serialization_formats.json").write_text(json.dumps(formats, indent=2))
        lines = ["# with the benchmark venv's bin first on PATH (the CLI execs `uvicorn` from PATH)"]
        for m in deployment.models:
            env = {k: v for k, v in self._env(deployment, ctx, m.name).items() if k in _SHOWN_ENV}
            lines.append(shlex.join([f"{k}={v}" for k, v in env.items()] + self._argv(deployment, ctx, m.name)))
        (ctx.workdir / "command.txt").write_text("\n".join(lines) + "\n")

    def _save(self, art, deployment: Deployment, path: Path) -> str:
        """Save one zoo model with mlflow.pytorch; returns the serialization format used."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        from servingbench.models.runtime import load_runtime

        rt = load_runtime(art.dir, fmt=deployment.model_format, device="cpu", threads=deployment.threads)
        x = art.reference()[0][:2]  # batch >= 2: with a batch-1 example torch.export fixes the batch dimension
        sig = infer_signature(x, rt.predict(x))
        fmt = deployment.options.get("serialization_format")
        fmt = fmt or ("pickle" if deployment.model_format == "torchscript" else "pt2")
        try:
            mlflow.pytorch.save_model(rt.module, str(path), signature=sig, input_example=x, serialization_format=fmt)
        except Exception:
            if fmt != "pt2" or deployment.options.get("serialization_format"):
                raise
            import shutil

            shutil.rmtree(path, ignore_errors=True)  # torch.export could not trace this model
            fmt = "pickle"
            mlflow.pytorch.save_model(rt.module, str(path), signature=sig, input_example=x, serialization_format=fmt)
        return fmt

    # ---- processes ---------------------------------------------------------------------------------------------
    def _env(self, deployment: Deployment, ctx: RunContext, model: str) -> dict[str, str]:
        env = ctx.base_env(
            OMP_NUM_THREADS=str(deployment.threads), MKL_NUM_THREADS=str(deployment.threads),
            MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=str(int(deployment.options.get("timeout_s", 60))),
        )
        # `mlflow models serve` runs `bash -c "exec uvicorn ..."`: the venv's bin must come first on PATH.
        env["PATH"] = os.pathsep.join([str(Path(ctx.python).parent), env.get("PATH", "")])
        if deployment.tls:
            env["__pyfunc_model_path__"] = str(ctx.workdir / model)  # what `mlflow models serve` sets for uvicorn
        return env

    def _argv(self, deployment: Deployment, ctx: RunContext, model: str) -> list[str]:
        port = str(ctx.ports[f"http-{model}"])
        if deployment.tls:
            return [ctx.python, "-m", "uvicorn", "--host", ctx.host, "--port", port,
                    "--workers", str(deployment.workers), "--ssl-keyfile", str(ctx.secrets.server_key),
                    "--ssl-certfile", str(ctx.secrets.server_cert), APP]
        mlflow = str(Path(ctx.python).parent / "mlflow")
        return [mlflow, "models", "serve", "-m", str(ctx.workdir / model), "-h", ctx.host, "-p", port,
                "--env-manager", "local", "-w", str(deployment.workers)]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        return [LaunchSpec(
            argv=self._argv(deployment, ctx, m.name),
            env=self._env(deployment, ctx, m.name),
            cwd=ctx.workdir,
            ready=ReadyProbe(path="/ping", port=f"http-{m.name}"),
            # SIGTERM to the CLI: it forwards to uvicorn, whose children die with it (PDEATHSIG).
            stop_signal=signal.SIGTERM,
            signal_group=False,
            grace_s=10.0,
            name=f"mlflow-{m.name}",
        ) for m in deployment.models]

    def manifest_command(self, deployment: Deployment, ctx: RunContext) -> list[str] | None:
        """``mlflow models serve -m <dir>``: the MLmodel folder alone (plain HTTP: the CLI has no TLS flags)."""
        if deployment.tls:
            return None
        return self._argv(deployment, ctx, deployment.models[0].name)

    # ---- requests ------------------------------------------------------------------------------------------------
    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        return RequestSpec(method="POST", path="/invocations", body=_json.encode_inputs(batch),
                           headers={"Content-Type": "application/json"}, port=f"http-{model.name}")

    def decode(self, model, status, body):
        return _json.decode_outputs(model, status, body, key="predictions")


_SHOWN_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "__pyfunc_model_path__")
