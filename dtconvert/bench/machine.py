"""What a benchmark ran on: the CPUs, the system, and the versions of every runtime that timed it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

VERSIONED_TOOLS = ("torch", "executorch", "ai-edge-litert", "tensorflow", "coremltools", "numpy")


def machine_info() -> dict:
    """What the numbers were measured on: CPUs, CPU model, OS, Python and runtime versions."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    tools = {}
    for name in VERSIONED_TOOLS:
        try:
            tools[name] = version(name)
        except PackageNotFoundError:
            pass
    from dtconvert import __version__

    environment = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    return {
        "cpus": os.cpu_count() or 1,
        "usable_cpus": usable,
        "load_average_1_5_15": load_average(),
        "environment": environment,
        "cpu_model": model,
        "system": platform.platform(),
        "python": platform.python_version(),
        "dtconvert": __version__,
        "tools": tools,
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded: recorded before and after a run."""
    return [round(v, 2) for v in os.getloadavg()]
