"""Versions, device and machine, so a number can be traced to where it was measured."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch

from .common import REPO, Plan


def environment(plan: Plan) -> dict[str, Any]:
    """The `environment` entry of the results JSON."""
    import onnxruntime
    import timm

    cuda = torch.cuda.is_available()
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    return {
        "cpu_smoke": plan.smoke,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "gpu_count": torch.cuda.device_count(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
        "tensorrt": trt_version,
        "cpu_count": os.cpu_count(),
        "git": _git_revision(),
    }


def _git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
