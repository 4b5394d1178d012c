"""What machine and software produced a result (recorded with every run, after pyperf's metadata)."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[dict[str, Any]]:
    """GPUs through NVML when present (nvidia-ml-py), else nvidia-smi, else none."""
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                    "driver": pynvml.nvmlSystemGetDriverVersion(),
                }
            )
        return out
    except Exception:  # noqa: BLE001
        pass
    if shutil.which("nvidia-smi"):
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout
            return [dict(zip(("index", "name", "memory", "driver"), (c.strip() for c in l.split(","))))
                    for l in text.splitlines() if l.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def lock_hash(root: Path | None = None) -> str | None:
    root = root or Path(__file__).resolve().parents[3]
    lock = root / "requirements.lock"
    if lock.is_file():
        return hashlib.sha256(lock.read_bytes()).hexdigest()
    return None


def _v(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def capture(frameworks: list[str] | None = None) -> dict[str, Any]:
    from servingbench.adapters import registry

    fw_versions = {}
    for name in frameworks or registry.names():
        try:
            fw_versions[name] = registry.get_class(name)().framework_version()
        except Exception as e:  # noqa: BLE001
            fw_versions[name] = f"unavailable: {e}"
    vm = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "cpu_freq_mhz": getattr(psutil.cpu_freq(), "current", None) if psutil.cpu_freq() else None,
        "memory_total_bytes": vm.total,
        "memory_available_bytes": vm.available,
        "gpus": _gpus(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": {
            d: _v(d)
            for d in ("servingbench", "torch", "numpy", "locust", "pandas", "matplotlib", "psutil", "pydantic",
                      "tritonclient", "uvloop", "fastapi", "uvicorn")
        },
        "frameworks": fw_versions,
        "lock_sha256": lock_hash(),
        "loadavg_at_start": list(os.getloadavg()),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "CI")},
    }
