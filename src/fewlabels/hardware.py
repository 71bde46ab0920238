"""What a result was measured on: CPU model and count, torch threads, GPU and versions (for results files and
each run's summary.json)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_environment(jobs: int, threads: int | None) -> dict[str, Any]:
    """The machine as a dict (saved with benchmark grids): CPU, CPUs, torch threads, parallel jobs, GPU, versions."""
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_count": cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "jobs": jobs,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def hardware_line() -> str:
    """One line for results files: CPU model and count, torch threads, GPU, torch version."""
    env = machine_environment(1, None)
    gpu = f"GPU {env['gpu']}" if env["gpu"] else "no GPU"
    return f"{env['cpu']} ({env['cpu_count']} CPUs), {env['torch_threads']} torch threads, {gpu}; torch {env['torch']}"
