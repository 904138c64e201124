"""Choosing the torch device of a command (``--device``), and recording what a result was computed on."""

from __future__ import annotations

import os
import platform

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked (ValueError naming --device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str | None = None) -> dict[str, object]:
    """What a number depends on beyond code, config and seed: written beside results (evaluation.json,
    metrics.json). On a CPU, float results change with the thread count and the CPU model (the order of
    floating-point sums in the math kernels), so two machines agree only within a tolerance."""
    info: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
