"""runtime: docker and the images, tested without a Docker engine (this machine has only the client).

What is checked here: the ``docker run`` command line generated for every adapter's real LaunchSpec (prepared into a
tmp dir, not started): host network, --init, --rm, unique name, mounts that exist and cover every path the server
reads, translated interpreter paths that exist in the host venv the image mirrors, environment by name only, GPU
flags; the real docker client parses every generated argv (it fails only at connecting to the missing engine); the
harness hook end to end with a stand-in ``docker`` that runs the container command here with *only* the passed
environment; the compose files (docker-compose config when present) and the Dockerfiles (every COPY source exists,
every build arg is declared).  What needs an engine (building images, running them, GPUs) is listed in
docs/containers.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import docker_standin
import pytest
import yaml

from servingbench.runtime import containers
from servingbench.adapters import registry
from servingbench.contract import LaunchSpec, ReadyProbe, Secrets
from servingbench.runtime.containers import DockerRuntime, Mount, docker_run, translate
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.scenarios.schema import DeploymentConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGE = "servingbench/test:cpu"
VALUED = docker_standin.VALUED  # options of `docker run` that take a value (the ones docker_run emits)
HOST_PREFIX = str(Path(sys.executable).parent.parent)


# ---- helpers -----------------------------------------------------------------------------------------------------
def parse_run(argv: list[str]) -> tuple[dict[str, list[str]], list[str], str, list[str]]:
    """``docker run`` argv -> (valued options, flags, image, container command)."""
    assert argv[1] == "run", argv
    opts: dict[str, list[str]] = {}
    flags: list[str] = []
    i = 2
    while argv[i].startswith("-"):
        if argv[i] in VALUED:
            opts.setdefault(argv[i], []).append(argv[i + 1])
            i += 2
        else:
            flags.append(argv[i])
            i += 1
    return opts, flags, argv[i], argv[i + 1:]


def abs_paths(token: str) -> list[str]:
    """Absolute paths inside one argv token: ``/a/b``, ``--flag=/a/b``, ``/a:/b`` lists."""
    value = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
    return [p for p in re.split(r"[:,]", value) if p.startswith("/")]


def under(path: str, mounts: list[Mount]) -> bool:
    return any(Path(path) == m.path or Path(path).is_relative_to(m.path) for m in mounts)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    from servingbench.models import build_artifacts, get_model

    return build_artifacts(get_model("mlp"))


def prepared(name: str, art, tmp_path: Path, secrets: Secrets = Secrets(), device: str = "cpu", **cfg):
    """A real deployment of ``name``, prepared and launched into ``tmp_path`` but not started."""
    adapter = registry.get(name)
    dep = make_deployment(name, DeploymentConfig(**cfg), [art], device)
    adapter.validate(dep)
    live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", secrets)
    live.workdir.mkdir(parents=True)
    adapter.prepare(dep, live.ctx)
    return live, adapter.launch(dep, live.ctx)


def client_parses(argv: list[str]) -> None:
    """The real docker client accepts the argv: with no engine it must fail at connecting, not at parsing."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/servingbench-test.sock"}
    p = subprocess.run([docker, *argv[1:]], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 125 and "Cannot connect to the Docker daemon" in p.stderr, (p.returncode, p.stderr)


# ---- pure pieces -------------------------------------------------------------------------------------------------
def test_translate_rewrites_prefixes_at_path_boundaries():
    m = {"/w/.venv": "/opt/venv"}
    assert translate("/w/.venv/bin/python", m) == "/opt/venv/bin/python"
    assert translate("--backend-directory=/w/.venv/lib/x", m) == "--backend-directory=/opt/venv/lib/x"
    assert translate("/a/lib:/w/.venv/lib/p.libs:/b", m) == "/a/lib:/opt/venv/lib/p.libs:/b"
    assert translate("/w/.venv", m) == "/opt/venv"
    assert translate("/w/.venv2/bin/python", m) == "/w/.venv2/bin/python"  # another directory
    assert translate("/x/w/.venv/bin", m) == "/x/w/.venv/bin"  # not a prefix


def spec(**kw) -> LaunchSpec:
    base = dict(argv=[f"{HOST_PREFIX}/bin/python", "/srv/app.py"], cwd=Path("/srv"), ready=ReadyProbe(),
                env={**os.environ, "OMP_NUM_THREADS": "3", "SECRET_KEY": "s3cr3t-value",
                     "LD_LIBRARY_PATH": f"/usr/lib:{HOST_PREFIX}/lib/x.libs"},
                stop_signal=signal.SIGINT, grace_s=7.5, name="srv")
    return LaunchSpec(**{**base, **kw})


def test_docker_run_argv():
    s = spec()
    out = docker_run(s, image=IMAGE, name="sb-x-1", mounts=[Mount(Path("/srv"), read_only=False)],
                     path_map={HOST_PREFIX: "/opt/venv"}, user="1000:1000", cpus={3, 1}, gpus=None)
    opts, flags, image, cmd = parse_run(out.spec.argv)
    assert {"--rm", "--init"} <= set(flags) and image == IMAGE
    assert opts["--network"] == ["host"] and opts["--name"] == ["sb-x-1"] and opts["--pull"] == ["never"]
    assert opts["--stop-signal"] == ["SIGINT"] and opts["--stop-timeout"] == ["8"] and opts["--user"] == ["1000:1000"]
    assert opts["--cpuset-cpus"] == ["1,3"] and "--gpus" not in opts and opts["--workdir"] == ["/srv"]
    assert cmd == ["/opt/venv/bin/python", "/srv/app.py"]
    env = dict(e.partition("=")[::2] for e in opts["-e"] if "=" in e)
    by_name = [e for e in opts["-e"] if "=" not in e]
    assert env["PATH"].startswith("/opt/venv/bin:") and env["HOME"] == "/tmp"
    assert env["LD_LIBRARY_PATH"] == "/usr/lib:/opt/venv/lib/x.libs"
    assert {"OMP_NUM_THREADS", "SECRET_KEY", "SERVINGBENCH_MARKER", "SERVINGBENCH_HARNESS_PID"} <= set(by_name)
    assert not any(k in by_name for k in ("HOME", "PATH", "PWD")), by_name  # host-only variables stay out
    assert "s3cr3t-value" not in " ".join(out.spec.argv)  # values travel in the client's environment
    assert out.spec.env["SECRET_KEY"] == "s3cr3t-value"
    assert not out.spec.signal_group and out.spec.grace_s > s.grace_s and out.spec.ready == s.ready
    assert out.cleanup == ["docker", "rm", "-f", "sb-x-1"]
    client_parses(out.spec.argv)


def test_group_signal_goes_to_the_container_process_group_and_gpus():
    out = docker_run(spec(signal_group=True), image=IMAGE, name="n", mounts=[], path_map={}, gpus="all")
    opts, *_ = parse_run(out.spec.argv)
    assert "TINI_KILL_PROCESS_GROUP=1" in opts["-e"] and opts["--gpus"] == ["all"]
    client_parses(out.spec.argv)


def test_mounts_dedupe_and_only_existing_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    got = containers._dedupe([Mount(tmp_path / "a"), Mount(tmp_path / "a" / "b"), Mount(tmp_path / "a")])
    assert got == [Mount(tmp_path / "a")]
    got = containers._dedupe([Mount(tmp_path / "a"), Mount(tmp_path / "a" / "b", read_only=False)])
    assert Mount(tmp_path / "a" / "b", read_only=False) in got and len(got) == 2


def test_remove_container_tolerates_a_gone_container(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('Error response from daemon: No such container: '"
                    f" + sys.argv[-1], file=sys.stderr)\nsys.exit(1)\n")
    fake.chmod(0o755)
    assert containers.remove_container([str(fake), "rm", "-f", "x"]) == ""
    assert "exit" in containers.remove_container([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert containers.remove_container(["/nonexistent/docker", "rm", "-f", "x"])  # reported, not raised


def test_suite_runtime_fields(tmp_path):
    from servingbench.scenarios.loader import ScenarioError, load_suite

    text = ("name: t\nframeworks: [litserve, triton]\nmodels: [mlp]\nfeatures: [auth]\nruntime: docker\n"
            "images: {triton: servingbench/triton:ngc}\n")
    (tmp_path / "s.yaml").write_text(text)
    suite = load_suite(tmp_path / "s.yaml")
    assert DockerRuntime.for_suite(suite, "triton").image == "servingbench/triton:ngc"
    assert DockerRuntime.for_suite(suite, "litserve").image == "servingbench/litserve:cpu"
    (tmp_path / "s.yaml").write_text(text.replace("runtime: docker\n", ""))
    assert DockerRuntime.for_suite(load_suite(tmp_path / "s.yaml"), "litserve") is None
    (tmp_path / "s.yaml").write_text(text.replace("runtime: docker", "runtime: podman"))
    with pytest.raises(ScenarioError, match="runtime"):
        load_suite(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(text + "images: {mosec: x}\n".replace("images", "interpreters"))
    with pytest.raises(ScenarioError, match="interpreters names framework 'mosec'"):
        load_suite(tmp_path / "s.yaml")


# ---- every adapter's real launch, wrapped ------------------------------------------------------------------------
MANIFEST_SKIP = {"command.txt", containers.LAUNCH_FILE}  # human-readable commands / the launch record itself


@pytest.mark.parametrize("name", registry.builtin_names())
def test_every_adapter_launch_runs_in_a_container(name, mlp, tmp_path):
    live, specs = prepared(name, mlp, tmp_path)
    runtime = DockerRuntime(image=IMAGE)
    launches = runtime.wrap(specs, live.deployment, live.ctx, cpus={0})
    mounts = runtime.mounts(live.deployment, live.ctx)
    assert Mount(live.workdir, read_only=False) in mounts
    assert all(m.path.exists() for m in mounts)
    names = set()
    for launch, original in zip(launches, specs):
        opts, flags, image, cmd = parse_run(launch.spec.argv)
        names.add(opts["--name"][0])
        assert live.marker[-12:] in opts["--name"][0] and f"servingbench.marker={live.marker}" in opts["--label"]
        assert {"--rm", "--init"} <= set(flags) and opts["--network"] == ["host"] and image == IMAGE
        assert opts["--user"] == [f"{os.getuid()}:{os.getgid()}"] and "--gpus" not in opts
        assert opts["--stop-signal"] == [signal.Signals(original.stop_signal).name]
        assert under(opts["--workdir"][0], mounts)
        for v in opts["-v"]:
            host, inside = v.split(":")[:2]
            assert host == inside and Path(host).exists(), v
        if name == "triton":  # through `containers exec`, so an NGC image can swap in its own tritonserver
            assert cmd[:5] == ["/opt/venv/bin/python", "-m", "servingbench.runtime.containers", "exec", "--"]
            cmd = cmd[5:]
        assert cmd == [translate(a, {HOST_PREFIX: "/opt/venv"}) for a in original.argv]
        # Every path the command names: the image's venv (mirrors the host venv, built from the same lock), a
        # mounted path, or a container-private scratch path the server creates itself.
        for token in cmd:
            for p in abs_paths(token):
                if p.startswith("/opt/venv/"):
                    assert Path(HOST_PREFIX + p[len("/opt/venv"):]).exists(), f"{name}: {p} not in the venv"
                elif Path(p).exists():
                    assert under(p, mounts), f"{name}: {p} is not mounted"
                else:
                    assert p.startswith(("/tmp/", "/dev/shm/")), f"{name}: {p} exists nowhere"
        env = dict(e.partition("=")[::2] for e in opts["-e"])
        assert env["PATH"].startswith("/opt/venv/bin:")
        for k, v in env.items():
            if v == "":  # by name: the value must be in the client's environment (or set by the supervisor)
                assert k in launch.spec.env or k.startswith("SERVINGBENCH_"), k
                for p in abs_paths(launch.spec.env.get(k, "")):  # ... and the paths it names must be there too
                    assert under(p, mounts) or p.startswith("/tmp/") or not Path(p).exists(), (k, p)
        assert launch.cleanup == ["docker", "rm", "-f", opts["--name"][0]]
        client_parses(launch.spec.argv)
    assert len(names) == len(launches)
    # Paths written into the manifests are read inside the container as they are: each must be mounted.
    for f in live.workdir.rglob("*"):
        if f.is_file() and f.name not in MANIFEST_SKIP and f.suffix in (".json", ".yaml", ".pbtxt", ".txt"):
            for p in re.findall(r"(?<![\w.])(/[\w.@+-]+(?:/[\w.@+-]+)+)", f.read_text()):
                if Path(p).exists():
                    ok = under(p, mounts) or (f.name == "ray_driver.json" and p.startswith(HOST_PREFIX))
                    assert ok, f"{f.name} names {p}, not mounted"  # (the Ray driver runs its own venv's `ray`)


def test_cuda_secrets_and_token(mlp, tmp_path):
    from servingbench.runtime.secrets import SecretStore

    with SecretStore() as store:
        secrets = store.make(auth=True, tls=True)
        live, specs = prepared("litserve", mlp, tmp_path, secrets, device="cuda", auth=True, tls=True)
        [launch] = DockerRuntime(image=IMAGE).wrap(specs, live.deployment, live.ctx)
        opts, *_ = parse_run(launch.spec.argv)
        assert opts["--gpus"] == ["all"]
        assert f"{store.dir}:{store.dir}:ro" in opts["-v"]  # the per-run key and certificates, read-only
        assert "LIT_SERVER_API_KEY" in opts["-e"]  # by name
        assert secrets.token not in " ".join(launch.spec.argv)
        record = containers.launch_record(specs, live.deployment, live.ctx)
        assert secrets.token not in json.dumps(record)
        assert record["servers"][0]["env"]["LIT_SERVER_API_KEY"] == containers.TOKEN_PLACEHOLDER
        client_parses(launch.spec.argv)


def test_launch_file_and_serve_command(mlp, tmp_path):
    live, specs = prepared("triton", mlp, tmp_path)
    path = containers.write_launch_file(live.workdir, specs, live.deployment, live.ctx)
    record = json.loads(path.read_text())
    assert record["venv_prefix"] == HOST_PREFIX and record["ports"] == live.ctx.ports.assigned()
    argv, env, cwd = containers.serve_command(record, prefix="/opt/venv", environ={"PATH": "/usr/bin"})
    assert argv[0].startswith("/opt/venv/lib/") and argv[0].endswith("/tritonserver") and cwd == str(live.workdir)
    assert env["PATH"] == "/opt/venv/bin:/usr/bin" and "/opt/venv/" in env["LD_LIBRARY_PATH"]
    argv, env, _ = containers.serve_command(record, prefix="/opt/venv", triton_root="/opt/tritonserver", environ={})
    assert argv[0] == "/opt/tritonserver/bin/tritonserver" and env["LD_LIBRARY_PATH"] == "/opt/tritonserver/lib"
    assert "--backend-directory=/opt/tritonserver/backends" in argv
    assert "--cache-directory=/opt/tritonserver/caches" in argv
    assert f"--model-repository={live.workdir / 'model_repository'}" in argv
    two = {**record, "servers": record["servers"] * 2}
    with pytest.raises(SystemExit, match="--name"):
        containers.serve_command(two, environ={})


def test_serve_command_needs_the_token(mlp, tmp_path):
    from servingbench.runtime.secrets import SecretStore

    with SecretStore() as store:
        live, specs = prepared("litserve", mlp, tmp_path, store.make(auth=True, tls=False), auth=True)
        record = containers.launch_record(specs, live.deployment, live.ctx)
    with pytest.raises(SystemExit, match="SERVINGBENCH_TOKEN"):
        containers.serve_command(record, environ={})
    _, env, _ = containers.serve_command(record, environ={"SERVINGBENCH_TOKEN": "tok"})
    assert env["LIT_SERVER_API_KEY"] == "tok"


# ---- the harness hook, end to end, with a stand-in docker client -------------------------------------------------
@pytest.mark.server
@pytest.mark.parametrize("name", registry.builtin_names())
def test_live_deployment_through_the_runtime_hook(name, mlp, tmp_path, no_leftovers):
    """LiveDeployment wraps, starts, verifies and stops through the runtime; the server gets only the -e env."""
    log = tmp_path / "docker.log"
    fake = docker_standin.write(tmp_path / "bin", log)
    # image_prefix = the host venv: the "image" is this machine, so the container command runs here unchanged.
    runtime = DockerRuntime(image=IMAGE, docker=str(fake), image_prefix=HOST_PREFIX)
    adapter = registry.get(name)
    dep = make_deployment(name, DeploymentConfig(), [mlp], "cpu")
    adapter.validate(dep)
    live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), runtime=runtime,
                          startup_timeout=240)
    with live:
        assert all(v["ok"] for v in live.verification.values())
        assert all(argv[0] == str(fake) for argv in live.launch_argv)
        assert (live.workdir / containers.LAUNCH_FILE).is_file()
    assert not live.cleanup_commands
    runs, removals = docker_standin.read_log(log)
    assert len(runs) == len(removals) == len(live.launch_argv)
    assert all(r[:2] == ["rm", "-f"] for r in removals)
    for r in live.stop_reports:
        assert not r.survivors and not r.ports_held, r


# ---- compose files and Dockerfiles -------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_there_are_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"servingbench.Dockerfile", "triton-ngc.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_and_declares_its_args(path):
    ins = dockerfile_instructions(path)
    assert ins[0][0] in ("ARG", "FROM") and any(i == "FROM" for i, _ in ins)
    declared = {re.split(r"[= ]", a)[0] for i, a in ins if i == "ARG"}
    builtin_env = {"PATH", "HOME"}
    env_set = {m for i, a in ins if i == "ENV" for m in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", a)}
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for instr, args in ins:
        for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", args):
            assert var in declared | env_set | builtin_env, f"{path.name}: {instr} uses undeclared ${var}"
        if instr == "COPY":
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: no such file in the build context"
                assert src.split("/")[0] in allowed, f"{path.name}: COPY {src} is excluded by the .dockerignore"
    # The installer the images run is this repository's, with options it knows.
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "servingbench.runtime.isolation create" in run
    from servingbench.runtime import isolation

    source = Path(isolation.__file__).read_text()
    for opt in re.findall(r"(--[a-z-]+)", run.split("servingbench.runtime.isolation create", 1)[1].split("&&")[0]):
        assert f'add_argument("{opt}"' in source, f"{path.name}: servingbench.runtime.isolation create has no {opt}"


ENSURE_COMPOSE = ROOT / "scripts" / "ensure_compose.sh"


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The compose client: `docker compose` (v2) or docker-compose (v1), installed by scripts/ensure_compose.sh when
    missing (`make test` runs it first); no client is a failure, not a skip."""
    proc = subprocess.run(["bash", str(ENSURE_COMPOSE)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"no docker compose client and {ENSURE_COMPOSE} could not install one:\n{proc.stderr[-3000:]}")
    found = proc.stdout.strip().splitlines()[-1]
    return ["docker", "compose"] if found == "docker compose" else [found]


def bind_mounts(volumes: list) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's volumes in either syntax ("src:dst[:ro|:rw]" or type: bind)."""
    out = []
    for v in volumes:
        if isinstance(v, str):
            src, dst, *mode = v.split(":")
            out.append((src, dst, mode == ["ro"]))
        else:
            assert v["type"] == "bind", v
            out.append((v["source"], v["target"], bool(v.get("read_only", False))))
    return out


def compose_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "wd").mkdir(exist_ok=True)
    return {**os.environ, "WORKDIR": str(tmp_path / "wd"), "SB_CACHE": str(tmp_path), "SB_UID": "1000",
            "SB_GID": "1000"}


def expand(value, env):
    """Compose interpolation (${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}) as far as these files use it."""
    def one(m):
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if op == ":?":
            assert env.get(name), arg
            return env[name]
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        return env.get(name, "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-|-|:\?)?([^}]*)\}", one, value) if isinstance(value, str) else value


def test_compose_services_build_and_mount_what_they_need(tmp_path):
    env = compose_env(tmp_path)
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    frameworks = set(registry.builtin_names())
    assert frameworks | {"triton-ngc"} == set(base["services"]) == set(gpu["services"])
    for name, svc in base["services"].items():
        assert svc["network_mode"] == "host" and svc["init"] is True and svc["profiles"] == [name]
        assert svc["entrypoint"][-2:] == ["servingbench.runtime.containers", "serve"]
        build = svc["build"]
        dockerfile = (DOCKER / build["context"]).resolve() / build["dockerfile"]
        assert dockerfile.is_file() and (DOCKER / build["context"]).resolve() == ROOT
        declared = {re.split(r"[= ]", a)[0] for i, a in dockerfile_instructions(dockerfile) if i == "ARG"}
        for layer in (build, gpu["services"][name].get("build", {})):
            assert set(layer.get("args", {})) <= declared, (name, layer.get("args"), declared)
        if name in frameworks:
            assert build["args"]["FRAMEWORK"] == name
        # Long syntax only: a missing source fails the start instead of becoming a root-owned empty directory.
        assert all(isinstance(v, dict) and "create_host_path" not in v.get("bind", {}) for v in svc["volumes"])
        vols = bind_mounts([{k: expand(x, env) for k, x in v.items()} for v in svc["volumes"]])
        assert (env["WORKDIR"], env["WORKDIR"], False) in vols and (env["SB_CACHE"], env["SB_CACHE"], True) in vols
        assert expand(svc["command"][0], env) == env["WORKDIR"]
        devices = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert base["services"]["litserve"]["stop_signal"] == "SIGINT"


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]])
def test_compose_config_resolves_the_files(files, compose, tmp_path):
    """`docker compose config` (v2 plugin) or `docker-compose config` (v1) validate and resolve the files (no engine
    needed).  Every profile is named: v2 leaves services of inactive profiles out of `config`."""
    env = compose_env(tmp_path)
    names = sorted(yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"])
    args = [a for f in files for a in ("-f", str(DOCKER / f))] + [a for n in names for a in ("--profile", n)]
    p = subprocess.run([*compose, *args, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    config = yaml.safe_load(p.stdout)
    assert set(config["services"]) == set(registry.builtin_names()) | {"triton-ngc"} == set(names)
    gpu = len(files) == 2
    for name, svc in config["services"].items():
        mounts = bind_mounts(svc["volumes"])
        assert (env["WORKDIR"], env["WORKDIR"], False) in mounts and (env["SB_CACHE"], env["SB_CACHE"], True) in mounts
        assert svc["command"] == [env["WORKDIR"]] and svc["network_mode"] == "host" and svc["init"] is True
        assert svc["user"] == "1000:1000" and svc["profiles"] == [name]
        assert svc["image"].endswith(":ngc" if name == "triton-ngc" else ":cuda" if gpu else ":cpu"), svc["image"]
        if gpu:
            [dev] = svc["deploy"]["resources"]["reservations"]["devices"]
            assert dev["driver"] == "nvidia" and dev["count"] in ("all", -1) and dev["capabilities"] == ["gpu"]
        else:
            assert "deploy" not in svc
    p = subprocess.run([*compose, *args, "config"], capture_output=True, text=True,
                       env={k: v for k, v in env.items() if k != "WORKDIR"}, timeout=60)
    assert p.returncode != 0 and "WORKDIR" in p.stderr  # a missing deployment is an error, not an empty mount


def test_up_script(tmp_path, mlp, compose):
    """docker/up.sh reads the framework from launch.json and resolves the compose configuration (--dry-run)."""
    assert subprocess.run(["bash", "-n", str(DOCKER / "up.sh")]).returncode == 0
    live, specs = prepared("mosec", mlp, tmp_path)
    containers.write_launch_file(live.workdir, specs, live.deployment, live.ctx)
    p = subprocess.run([str(DOCKER / "up.sh"), str(live.workdir), "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    config = yaml.safe_load(p.stdout)
    assert "mosec" in config["services"]
    assert (str(live.workdir), str(live.workdir), False) in bind_mounts(config["services"]["mosec"]["volumes"])
