"""Shared timing for the benchmark scripts: warm up, time N steps, read peak memory.

Peak memory is `torch.cuda.max_memory_allocated` on CUDA (reset after the warm-up) and the
process's peak RSS on the CPU (so each measurement should run in its own process).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> dict:
    """Seconds per step, peak memory in MiB, and names of the device and memory measure."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / iters
    if device.type == "cuda":
        return {"seconds": seconds, "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "mem_kind": "CUDA max allocated", "device": torch.cuda.get_device_name(device)}
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB
            "mem_kind": "process peak RSS", "device": f"CPU ({torch.get_num_threads()} threads)"}
