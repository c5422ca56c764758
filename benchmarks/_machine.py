"""What a benchmark ran on, for its saved figures: times and their ratios move with the CPU
(a run on an AMD EPYC without AVX-512 took 2.3-3.4x as long as the saved figures from an earlier
machine, and some ratios moved with it), and ``platform.processor()`` says only ``x86_64``."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu() -> str:
    """The CPU's model name and the cores this process may use, e.g. ``AMD EPYC, 2 cores``."""
    name = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        name = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")), name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"
