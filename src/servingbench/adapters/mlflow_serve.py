"""MLflow: each zoo model saved as an MLflow model (``MLmodel``) and served by ``mlflow models serve``, one server each.

The module is not called ``mlflow.py``: that would shadow the ``mlflow`` package inside this package's imports.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Literal

from pydantic import Field

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Deployment, JsonCodec, LaunchSpec, ReadyProbe, RunContext,
    UnsupportedDeployment, server_env, write_command_file,
)

APP = "mlflow.pyfunc.scoring_server.app:app"
# One server per model, each on its own port ``http-<model>``.
CODEC = JsonCodec(path="/invocations", output_key="predictions", port="http-{model}")


class MLflowOptions(AdapterOptions):
    serialization_format: Literal["pt2", "pickle"] | None = Field(
        None, description="'pt2' (torch.export) or 'pickle'; unset: pt2 for eager models (pickle where torch.export "
                          "fails), pickle for torchscript", json_schema_extra={"framework_default": "pt2"})
    timeout_s: int = Field(60, ge=1, le=3600, description="MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT: per-request "
                           "timeout")


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
    Options = MLflowOptions
    docs_claims = {
        "multi_model": "no: one model per `mlflow models serve` (not native: one server per model)",
        "manifest": "partly: the MLmodel file describes the model, not the server (flags on the CLI)",
        "tls": "no flags on `mlflow models serve`; the scoring app is a FastAPI app that uvicorn serves with TLS",
        "batching": "no (a request may carry a batch)", "response_cache": "no", "model_cache": "no",
        "auth": "no", "grpc": "no", "gpu": "no serving flag (the pytorch flavor loads on the saved device)",
        "load_unload": "no",
        "metrics": "no (the tracking server has --expose-prometheus; models serve does not)",
        "streaming": ("no: the scoring server routes only /ping, /health, /version and /invocations, which returns one "
                      "buffered response (mlflow/pyfunc/scoring_server/__init__.py); PythonModel.predict_stream is not "
                      "served over HTTP (mlflow issue 12439)"),
    }

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        if deployment.tls == "mutual":
            raise UnsupportedDeployment("mlflow: the TLS path does not require client certificates")
        fmt = self.options_of(deployment).serialization_format
        if fmt == "pt2" and deployment.model_format == "torchscript":
            raise UnsupportedDeployment("mlflow: pt2 cannot export a TorchScript module; use serialization_format "
                                        "'pickle' or model_format 'eager'")

    # ---- manifests -----------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        formats = {m.name: self._save(m, deployment, ctx.workdir / m.name) for m in deployment.models}
        (ctx.workdir / "serialization_formats.json").write_text(json.dumps(formats, indent=2))
        env = {k: v for k, v in self._env(deployment, ctx, deployment.models[0].name).items() if k in _SHOWN_ENV}
        env.pop("__pyfunc_model_path__", None)
        write_command_file(ctx, [self._argv(deployment, ctx, m.name) for m in deployment.models], env,
                           comment="with the benchmark venv's bin first on PATH (the CLI execs `uvicorn` from PATH)")

    def _save(self, art, deployment: Deployment, path: Path) -> str:
        """Save one zoo model with mlflow.pytorch; returns the serialization format used."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        from servingbench.models.runtime import load_runtime

        if art.metadata().get("payload", "tensor") != "tensor":
            return self._save_payload(art, deployment, path)
        rt = load_runtime(art.dir, fmt=deployment.model_format, device="cpu", threads=deployment.threads)
        x = art.reference()[0][:2]  # batch >= 2: with a batch-1 example torch.export fixes the batch dimension
        sig = infer_signature(x, rt.predict(x))
        fmt = self.options_of(deployment).serialization_format
        fmt = fmt or ("pickle" if deployment.model_format == "torchscript" else "pt2")
        reqs = _pip_requirements()
        try:
            mlflow.pytorch.save_model(rt.module, str(path), signature=sig, input_example=x, serialization_format=fmt,
                                      pip_requirements=reqs)
        except Exception:
            if fmt != "pt2" or self.options_of(deployment).serialization_format:
                raise
            import shutil

            shutil.rmtree(path, ignore_errors=True)  # torch.export could not trace this model
            fmt = "pickle"
            mlflow.pytorch.save_model(rt.module, str(path), signature=sig, input_example=x, serialization_format=fmt,
                                      pip_requirements=reqs)
        return fmt

    @staticmethod
    def _save_payload(art, deployment: Deployment, path: Path) -> str:
        """An image or text payload model: a pyfunc whose ``predict`` preprocesses, then runs the zoo model
        (``servers/mlflow_payload.py``); the pytorch flavor would take only tensors."""
        import mlflow.pyfunc

        from servingbench.adapters.servers.mlflow_payload import PayloadModel

        mlflow.pyfunc.save_model(str(path), python_model=PayloadModel(), model_config={
            "artifact_dir": str(Path(art.dir).resolve()), "model_format": deployment.model_format,
            "threads": deployment.threads}, pip_requirements=_pip_requirements("pillow", "tokenizers"))
        return "pyfunc"

    # ---- processes ---------------------------------------------------------------------------------------------
    def _env(self, deployment: Deployment, ctx: RunContext, model: str) -> dict[str, str]:
        # `mlflow models serve` runs `bash -c "exec uvicorn ..."`: the venv's bin must come first on PATH.
        env = server_env(ctx, deployment.threads, MKL_NUM_THREADS=str(deployment.threads),
                         MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=str(self.options_of(deployment).timeout_s))
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
    def codec(self, deployment: Deployment) -> JsonCodec:
        return CODEC


_SHOWN_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "__pyfunc_model_path__")


def _pip_requirements(*extra: str) -> list[str]:
    """The saved model's requirements, stated instead of inferred: MLflow infers them by loading the model in a
    subprocess (~4 s a model on 2 cores), and `mlflow models serve --env-manager local` never installs them.
    The versions are this environment's (torch without its local label, e.g. ``+cpu``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("torch", "numpy", *extra):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out
