"""NVIDIA Triton Inference Server: the real ``tritonserver`` binary, a generated model repository, KServe V2 over HTTP.

The module is not called ``triton``: torch._dynamo takes any importable/cwd ``triton`` for OpenAI Triton.

The admin key (``auth``) is the one secret any adapter passes on a command line: tritonserver (2.45, the
nvidia-pytriton wheel) reads ``--http-restricted-api`` / ``--grpc-restricted-protocol`` only from argv (getopt_long;
no options file, no environment variable), so while an ``auth`` cell runs, every local user can read the key from
``/proc/<pid>/cmdline``.  What bounds it: the key is per run (``SecretStore``) and useless once the cell's server
stops; the server listens on loopback only; the key is redacted from ``command.txt``, ``launch.json`` and the
results (the cell record's ``argv``), and tritonserver never logs it (checked up to ``--log-verbose=3``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import signal
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path

from typing import Literal

from pydantic import Field

from servingbench.adapters import v2
from servingbench.contract import (
    Adapter, AdapterOptions, AdapterUnavailable, Capability, Deployment, LaunchSpec, ReadyProbe, RequestSpec,
    RunContext, Secrets, UnsupportedDeployment, server_env, sse_tokens,
)
from servingbench.models.artifacts import REF_BATCH

MODEL_PY = Path(__file__).parent / "servers" / "triton_python_model.py"
# One name pair for every backend: the libtorch backend requires the ``<name>__<index>`` convention.
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"
STREAM_SUFFIX, STREAM_OUTPUT = "_stream", "TOKEN"  # a generative model's decoupled twin and its output
RESTRICTED = "inference,model-repository,model-config,statistics,shared-memory,trace,logging"


@dataclass(frozen=True)
class Server:
    """Where a Triton installation's pieces are."""

    binary: Path
    backends: Path
    caches: Path
    lib_path: tuple[str, ...] = ()

    def has_backend(self, name: str) -> bool:
        return (self.backends / name / f"libtriton_{name}.so").is_file()


class TritonOptions(AdapterOptions):
    backend: Literal["python", "libtorch"] = Field(
        "python", description="python (model.py running the zoo model with torch) or libtorch (TorchScript; needs a "
                              "Triton with the pytorch backend, e.g. the NGC container: see server_root)")
    server_root: str | None = Field(None, min_length=1, description="a Triton installation (bin/, backends/, "
                                    "caches/, e.g. /opt/tritonserver); unset: the wheel's tritonserver")
    model_control_mode: Literal["explicit", "none"] = Field(
        "explicit", description="explicit: models listed with --load-model, repository load/unload API on; none: "
                                "all models at start, no load/unload", json_schema_extra={"framework_default": "none"})
    cache_size_bytes: int = Field(104857600, ge=1, le=2**40, description="size of the local response cache")
    preferred_batch_sizes: list[int] | None = Field(None, min_length=1, description="dynamic_batching "
                                                    "preferred_batch_size list in rows (unset: [max_batch_size])")
    max_batch_rows: int | None = Field(None, ge=1, le=1_000_000, description="config max_batch_size: largest "
                                       "request and merged batch in rows (unset: max(64, max_batch_size))")
    max_queue_size: int | None = Field(None, ge=1, le=1_000_000, description="dynamic_batching default_queue_policy "
                                       "max_queue_size: requests beyond this many queued are rejected at once "
                                       "(Triton's default: unbounded). It needs the dynamic batcher: with "
                                       "max_batch_size 1 set max_batch_rows: 1 too, or queued requests are merged")
    binary_inputs: bool = Field(True, description="send inputs with the binary tensor extension (as tritonclient "
                                "does); false: JSON lists")
    exit_timeout_s: int = Field(3, ge=0, le=3600, description="--exit-timeout-secs: how long a stop waits for open "
                                "client connections, in-flight requests and model unloading together",
                                json_schema_extra={"framework_default": 30})
    log_verbose: int = Field(0, ge=0, le=10, description="--log-verbose level")


class TritonAdapter(Adapter):
    """Triton with the Python backend (any host) or the libtorch backend (NVIDIA containers).

    Knobs: ``workers`` -> ``instance_group.count`` per model (each Python-backend instance is its own stub
    process); ``threads`` -> torch intra-op threads per instance; ``max_batch_size > 1`` -> ``dynamic_batching``
    (``preferred_batch_size`` = max_batch_size rows, ``max_queue_delay_microseconds`` = batch_timeout); ``cache`` ->
    the local response cache; ``auth`` -> restricted HTTP/gRPC APIs with header ``admin-key``; ``tls`` -> gRPC TLS
    only (protocol: grpc; this build's HTTP endpoint has no TLS); ``device: cuda`` -> ``KIND_GPU`` instances.

    Triton counts batches in rows (the first dimension), not requests: the config's ``max_batch_size`` is the
    largest request accepted and the bound on merged batches (``max_batch_rows``).  Inputs travel with the binary
    tensor extension, as tritonclient sends them by default (measured here: 5x smaller bodies for cnn, ~10-25 %
    less server CPU per request than JSON lists); outputs come back as JSON (small, and decodable from the body
    alone).  ``binary_inputs: false`` sends JSON lists instead.
    The exact command line (token redacted) is written to ``<workdir>/command.txt``.
    """

    name = "triton"
    distribution = "nvidia-pytriton"
    capabilities = frozenset({
        Capability.MULTI_MODEL, Capability.RESPONSE_CACHE, Capability.BATCHING, Capability.MANIFEST,
        Capability.AUTH, Capability.GRPC, Capability.GPU, Capability.LOAD_UNLOAD, Capability.METRICS,
        Capability.STREAMING,
    })
    Options = TritonOptions
    docs_claims = {
        "multi_model": "yes: one model repository, many models",
        "response_cache": "yes: response_cache { enable: true } with the local or redis cache",
        "batching": "yes: dynamic_batching (preferred sizes, max queue delay), sequence batching",
        "manifest": "yes: model repository with config.pbtxt",
        "auth": "partial: restricted API groups keyed by a header (--http-restricted-api)",
        "tls": "gRPC only (--grpc-use-ssl, mutual with --grpc-use-ssl-mutual); HTTP TLS is expected from a proxy",
        "grpc": "yes: KServe V2 gRPC",
        "gpu": "yes: instance_group KIND_GPU",
        "load_unload": "yes: --model-control-mode=explicit and /v2/repository/models/NAME/load|unload",
        "metrics": "yes: Prometheus /metrics on --metrics-port",
        "model_cache": "no",
        "streaming": ("yes: a decoupled Python-backend model (model_transaction_policy { decoupled: true }) behind "
                      "POST /v2/models/{m}/generate_stream (server-sent events)"),
    }

    # ---- environment -----------------------------------------------------------------------------------------
    def check_available(self) -> None:
        super().check_available()
        self.server()

    def server(self, options: TritonOptions | None = None, python: str | None = None) -> Server:
        """The Triton installation to run: ``server_root`` or the wheel's binary with a prepared backend dir.

        ``python``: the interpreter whose nvidia-pytriton wheel to use (``ctx.python``; default: the harness's).
        """
        if options is not None and options.server_root:
            root = Path(options.server_root)
            if not (root / "bin" / "tritonserver").is_file():
                raise AdapterUnavailable(f"triton: no bin/tritonserver under server_root {root}")
            return Server(root / "bin" / "tritonserver", root / "backends", root / "caches", (str(root / "lib"),))
        return _wheel_server(python or sys.executable)

    def validate(self, deployment: Deployment) -> None:
        # TLS is gRPC-only here: checked below, not by the base class.
        super().validate(dataclasses.replace(deployment, tls=False))
        if deployment.tls and deployment.protocol != "grpc":
            raise UnsupportedDeployment(
                "triton: this tritonserver build has no HTTPS; TLS is served on gRPC only (use protocol: grpc)")
        opts = self.options_of(deployment)
        if opts.backend == "libtorch" and not self.server(opts).has_backend("pytorch"):
            raise UnsupportedDeployment(
                f"triton: backend libtorch needs the pytorch backend, absent from {self.server(opts).backends} "
                "(the wheel ships only python; use an NGC tritonserver image and server_root)")
        payloads = [m.name for m in deployment.models if _meta(m).get("payload", "tensor") != "tensor"]
        if opts.backend == "libtorch" and payloads:
            raise UnsupportedDeployment(f"triton: models {payloads} take image or text payloads, preprocessed in "
                                        "Python: use backend python (libtorch runs only the TorchScript model)")
        rows = self._rows(deployment)
        sizes = opts.preferred_batch_sizes or [deployment.max_batch_size]
        if rows < deployment.max_batch_size or any(not 0 < n <= rows for n in sizes):
            raise UnsupportedDeployment(f"triton: max_batch_rows ({rows}) must be >= max_batch_size and every "
                                        f"preferred_batch_sizes entry ({sizes})")

    # ---- deployment -------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        repo = ctx.workdir / "model_repository"
        for art in deployment.models:
            version = repo / art.name / "1"
            version.mkdir(parents=True, exist_ok=True)
            if self.options_of(deployment).backend == "libtorch":
                shutil.copy(_torchscript(art), version / "model.pt")
            else:
                shutil.copy(MODEL_PY, version / "model.py")
            (repo / art.name / "config.pbtxt").write_text(self.config_pbtxt(deployment, art))
            if art.generative and self.options_of(deployment).backend != "libtorch":
                (repo / f"{art.name}{STREAM_SUFFIX}" / "1").mkdir(parents=True, exist_ok=True)
                shutil.copy(MODEL_PY, repo / f"{art.name}{STREAM_SUFFIX}" / "1" / "model.py")
                (repo / f"{art.name}{STREAM_SUFFIX}" / "config.pbtxt").write_text(self.stream_config(deployment, art))
        argv, env = self._command(deployment, ctx)
        token = ctx.secrets.token
        shown = " ".join(a if not token else a.replace(token, "$TRITON_ADMIN_KEY") for a in argv)
        extra = {k: env[k] for k in ("LD_LIBRARY_PATH", "PATH", "OMP_NUM_THREADS")}
        (ctx.workdir / "command.txt").write_text(
            "# start this deployment by hand (tokens redacted):\n"
            + " ".join(f"{k}={v}" for k, v in extra.items()) + f" \\\n  {shown}\n"
        )

    def config_pbtxt(self, deployment: Deployment, art) -> str:
        meta = _meta(art)
        libtorch = self.options_of(deployment).backend == "libtorch"
        kind = "KIND_GPU" if deployment.device == "cuda" else "KIND_CPU"
        lines = [f'name: "{art.name}"',
                 'platform: "pytorch_libtorch"' if libtorch else 'backend: "python"',
                 f"max_batch_size: {self._rows(deployment)}"]
        for key, tname in (("input", INPUT), ("output", OUTPUT)):
            spec = meta[key]
            ragged = ""
            if key == "input" and meta.get("payload", "tensor") != "tensor":
                # One JPEG file or text per row as NUL-padded bytes (v2.padded_items): the Python backend's stub
                # cannot read TYPE_STRING inputs with numpy 2.x (its BYTES deserialisation reads garbage lengths).
                spec, ragged = {"dtype": "uint8", "shape": [-1]}, " allow_ragged_batch: true"
            lines.append(f'{key} [ {{ name: "{tname}" data_type: TYPE_{v2.datatype(spec["dtype"])} '
                         f'dims: [ {", ".join(str(d) for d in spec["shape"])} ]{ragged} }} ]')
        lines.append(f"instance_group [ {{ kind: {kind} count: {deployment.workers} }} ]")
        opts = self.options_of(deployment)
        if deployment.max_batch_size > 1 or opts.max_queue_size:
            sizes = opts.preferred_batch_sizes or [deployment.max_batch_size]
            parts = [f"preferred_batch_size: [ {', '.join(map(str, sizes))} ]"] if deployment.max_batch_size > 1 else []
            parts.append(f"max_queue_delay_microseconds: "
                         f"{int(deployment.batch_timeout_ms * 1000) if deployment.max_batch_size > 1 else 0}")
            if opts.max_queue_size:
                parts.append(f"default_queue_policy {{ max_queue_size: {opts.max_queue_size} }}")
            lines.append(f"dynamic_batching {{ {' '.join(parts)} }}")
        if deployment.cache:
            lines.append("response_cache { enable: true }")
        if libtorch:
            params = {"INFERENCE_MODE": "true", "INTRA_OP_THREAD_COUNT": str(deployment.threads)}
        else:
            src = str(Path(__file__).resolve().parents[2])  # the servingbench package's sys.path entry
            params = {"artifact_dir": str(Path(art.dir).resolve()), "model_format": deployment.model_format,
                      "threads": str(deployment.threads), "sys_path": src}
        for k, v in params.items():
            lines.append(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}')
        return "\n".join(lines) + "\n"

    def stream_config(self, deployment: Deployment, art) -> str:
        """The decoupled twin ``<model>_stream`` of a generative model: no batching, one window of token ids in, one
        token per response out, the same Python model with ``stream: "true"``."""
        kind = "KIND_GPU" if deployment.device == "cuda" else "KIND_CPU"
        src = str(Path(__file__).resolve().parents[2])
        params = {"artifact_dir": str(Path(art.dir).resolve()), "model_format": deployment.model_format,
                  "threads": str(deployment.threads), "sys_path": src, "stream": "true"}
        lines = [f'name: "{art.name}{STREAM_SUFFIX}"', 'backend: "python"', "max_batch_size: 0",
                 "model_transaction_policy { decoupled: true }",
                 # Triton 2.45's generate endpoint reads only the first element of a numeric array (its
                 # ExactMappingInput passes the element count after dividing it down to 1): the prompt travels as
                 # a request parameter, and the required input is one number (the window length, checked).
                 f'input [ {{ name: "{INPUT}" data_type: TYPE_INT64 dims: [ 1 ] }} ]',
                 f'output [ {{ name: "{STREAM_OUTPUT}" data_type: TYPE_INT64 dims: [ 1 ] }} ]',
                 f"instance_group [ {{ kind: {kind} count: {deployment.workers} }} ]"]
        lines += [f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items()]
        return "\n".join(lines) + "\n"

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec | None:
        if self.options_of(deployment).backend == "libtorch":
            return None  # only the Python backend streams here
        ids = [int(t) for t in prompt]
        body = json.dumps({INPUT: len(ids), "parameters": {"max_tokens": int(max_tokens),
                                                           "prompt": " ".join(map(str, ids))}}).encode()
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   **self.codec(deployment).auth_headers(secrets)}
        return RequestSpec("POST", f"/v2/models/{model.name}{STREAM_SUFFIX}/generate_stream", body, headers)

    def stream_tokens(self, chunks):
        def extract(record):
            if "error" in record:
                raise ValueError(f"Triton: {record['error']}")
            tok = record[STREAM_OUTPUT]  # a one-element tensor comes as a scalar
            return [int(t) for t in tok] if isinstance(tok, list) else [int(tok)]

        return sse_tokens(chunks, extract)

    def _rows(self, deployment: Deployment) -> int:
        return self.options_of(deployment).max_batch_rows or max(64, deployment.max_batch_size)

    def _command(self, deployment: Deployment, ctx: RunContext) -> tuple[list[str], dict[str, str]]:
        opts = self.options_of(deployment)
        server = self.server(opts, ctx.python)
        ports = ctx.ports
        argv = [
            str(server.binary),
            f"--model-repository={ctx.workdir / 'model_repository'}",
            f"--backend-directory={server.backends}",
            f"--cache-directory={server.caches}",
            f"--http-address={ctx.host}", f"--http-port={ports['http']}",
            f"--grpc-address={ctx.host}", f"--grpc-port={ports['grpc']}",
            f"--metrics-address={ctx.host}", f"--metrics-port={ports['metrics']}",
            "--allow-gpu-metrics=false" if deployment.device == "cpu" else "--allow-gpu-metrics=true",
            f"--exit-timeout-secs={opts.exit_timeout_s}",
            f"--log-verbose={opts.log_verbose}",
            # Python-backend shared memory regions carry this prefix; a killed server leaves them in /dev/shm.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix(ctx)}",
        ]
        if opts.model_control_mode == "explicit":
            argv.append("--model-control-mode=explicit")
            argv += [f"--load-model={a.name}" for a in deployment.models]
            argv += [f"--load-model={a.name}{STREAM_SUFFIX}" for a in deployment.models
                     if a.generative and opts.backend != "libtorch"]
        if deployment.cache:
            argv.append(f"--cache-config=local,size={opts.cache_size_bytes}")
        if deployment.auth:
            if not ctx.secrets.token:
                raise UnsupportedDeployment("triton: auth requested but the run has no token")
            # argv only: tritonserver has no file or environment form of these options (see the module docstring).
            argv.append(f"--http-restricted-api={RESTRICTED}:admin-key={ctx.secrets.token}")
            argv.append(f"--grpc-restricted-protocol={RESTRICTED}:admin-key={ctx.secrets.token}")
        if deployment.tls:
            s = ctx.secrets
            argv += ["--grpc-use-ssl=true", f"--grpc-server-cert={s.server_cert}", f"--grpc-server-key={s.server_key}"]
            if deployment.tls == "mutual":
                argv += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={s.ca_cert}"]
        # The Python-backend stub takes its environment from the first python3 on PATH (PYTHONPATH is ignored).
        env = server_env(ctx, deployment.threads)
        env["LD_LIBRARY_PATH"] = ":".join([*server.lib_path, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return argv, env

    @staticmethod
    def shm_prefix(ctx: RunContext) -> str:
        return f"sbtis{(ctx.marker or uuid.uuid5(uuid.NAMESPACE_URL, str(ctx.workdir)).hex)[:12]}_"

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        argv, env = self._command(deployment, ctx)
        exit_timeout = self.options_of(deployment).exit_timeout_s
        return [LaunchSpec(
            argv=argv, env=env, cwd=ctx.workdir,
            ready=ReadyProbe(path="/v2/health/ready"),  # health stays open under --http-restricted-api
            # SIGTERM: Triton first waits for *open HTTP connections* (an idle keep-alive client counts), then
            # unloads models, both within --exit-timeout-secs; when the time runs out it exits at once and the
            # Python-backend stubs leave their shared-memory regions behind (cleanup_globs removes them).
            stop_signal=signal.SIGTERM, signal_group=False,  # the stubs follow their parent
            grace_s=exit_timeout + 10.0,
            cleanup_globs=(f"/dev/shm/{self.shm_prefix(ctx)}*",),
            name="triton",
        )]

    def overload_limits(self) -> dict:
        # A 32-request queue (Triton rejects beyond it: HTTP 503 / gRPC UNAVAILABLE).  The queue policy lives in the
        # dynamic batcher, so queued requests may be merged; batches are capped at the verification's reference
        # batch (REF_BATCH rows: one row per batch would refuse the reference batch and the deployment never verifies).
        return {"max_queue_size": 32, "max_batch_rows": REF_BATCH}

    # ---- requests (pure) -----------------------------------------------------------------------------------------
    def metrics_request(self, deployment: Deployment) -> RequestSpec:
        return RequestSpec("GET", "/metrics", b"", {}, port="metrics")

    def codec(self, deployment: Deployment) -> v2.V2Codec:
        return v2.V2Codec(INPUT, OUTPUT, binary=self.options_of(deployment).binary_inputs, auth_header="admin-key",
                          stats=True, payload_datatype="UINT8")  # image / text payloads: see config_pbtxt

    # ---- hooks for the feature probes -----------------------------------------------------------------------
    open_paths = ("/v2/health/live", "/v2/health/ready")  # outside --http-restricted-api
    native_manifest = ("model_repository/*/config.pbtxt",)

    def manifest_command(self, deployment: Deployment, ctx: RunContext) -> list[str]:
        """``tritonserver --model-repository <workdir>/model_repository ...``: the repository is the manifest."""
        return self._command(deployment, ctx)[0]

    def grpc_infer(self, deployment: Deployment, ctx: RunContext, model, batch):
        """Inference over this deployment's gRPC endpoint (TLS and the protocol key when the deployment has them)."""
        target, kw = self._grpc_target(deployment, ctx)
        return v2.grpc_infer(target, model, batch, INPUT, OUTPUT, headers=self.grpc_headers(ctx.secrets), **kw)

    def grpc_client(self, deployment: Deployment, ctx: RunContext):
        """A ``tritonclient.grpc.InferenceServerClient`` for this deployment (TLS / mutual TLS when it is on).

        With auth, pass :meth:`grpc_headers` to every call.  Tensors are named ``INPUT__0`` / ``OUTPUT__0``.
        """
        import tritonclient.grpc as grpcclient

        target, kw = self._grpc_target(deployment, ctx)
        return grpcclient.InferenceServerClient(target, **kw)

    def _grpc_target(self, deployment: Deployment, ctx: RunContext) -> tuple[str, dict]:
        if not deployment.tls:
            return f"127.0.0.1:{ctx.ports['grpc']}", {}
        s = ctx.secrets
        kw = {"ssl": True, "root_certificates": str(s.ca_cert)}
        if deployment.tls == "mutual":
            kw.update(private_key=str(s.client_key), certificate_chain=str(s.client_cert))
        # "localhost": the per-run certificate names localhost and 127.0.0.1; gRPC verifies the host name.
        return f"localhost:{ctx.ports['grpc']}", kw

    def grpc_headers(self, secrets: Secrets | None) -> dict[str, str]:
        return {"triton-grpc-protocol-admin-key": secrets.token} if secrets and secrets.token else {}


# ---- the wheel's tritonserver --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _wheel_server(python: str = sys.executable) -> Server:
    """Lay the nvidia-pytriton tritonserver out as pytriton does (pytriton/triton.py, server/triton_server.py).

    The Python backend looks for ``triton_python_backend_stub`` next to ``libtriton_python.so``; the wheel keeps
    one stub per Python version apart, so a backend directory is assembled once per version in the cache dir
    (outside the deployment's workdir, which is copied into results).
    """
    from importlib.metadata import version

    if python != sys.executable:  # another venv's wheel (suite `interpreters:`): ask that interpreter
        from servingbench.runtime.isolation import distribution_version, interpreter_facts

        facts = interpreter_facts(python)
        pkg, py, libdir = Path(facts["purelib"]) / "pytriton", facts["version"], facts["libdir"]
        wheel_version = distribution_version(python, "nvidia-pytriton")
        if wheel_version is None or not pkg.is_dir():
            raise AdapterUnavailable(f"triton: nvidia-pytriton is not installed for {python}")
    else:
        # Locate, never import: `import pytriton` loads tritonclient.grpc, whose protobuf symbols clash with
        # MLServer's ("duplicate symbol 'inference.ServerLiveRequest'") in a harness process that uses both adapters.
        found = importlib.util.find_spec("pytriton")
        if found is None or not found.submodule_search_locations:
            raise AdapterUnavailable("triton: nvidia-pytriton is not installed (pip install nvidia-pytriton)")
        pkg = Path(list(found.submodule_search_locations)[0])
        py, libdir = f"{sys.version_info[0]}.{sys.version_info[1]}", sysconfig.get_config_var("LIBDIR")
        wheel_version = version("nvidia-pytriton")
    dist = pkg / "tritonserver"
    stub = dist / "python_backend_stubs" / py / "triton_python_backend_stub"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file() or not stub.is_file():
        raise AdapterUnavailable(f"triton: the nvidia-pytriton wheel at {dist} has no tritonserver binary or no "
                                 f"Python-backend stub for Python {py}")
    cache = Path(os.environ.get("SERVINGBENCH_CACHE") or Path.home() / ".cache" / "servingbench")
    backends = cache / f"tritonserver-backends-pytriton{wheel_version}-py{py}"
    if not (backends / "python" / "triton_python_backend_stub").is_file():
        tmp = cache / f".tmp-{uuid.uuid4().hex}"
        shutil.copytree(dist / "backends", tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(backends)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    libs = [str(pkg.parent / "nvidia_pytriton.libs")]
    # The stub links libpython3.x: make it find the serving interpreter's, not a system one of another patch level.
    if libdir:
        libs.insert(0, libdir)
    return Server(binary, backends, dist / "caches", tuple(libs))


def _meta(art) -> dict:
    return json.loads(Path(art.meta).read_text())


def _torchscript(art) -> Path:
    path = getattr(art, "torchscript", None)
    if path is None:
        raise UnsupportedDeployment(f"triton: model {art.name} has no TorchScript artifact (backend libtorch)")
    return Path(path)
