"""What every benchmark record carries: code version, machine, and a place under benchmarks/."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from digitlab import __version__, io


def environment() -> dict:
    import torch  # here: `digitlab bench --help` must not import torch

    return {
        "digitlab": __version__, "git": _git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def save_record(name: str, record: dict, out: Path | None = None) -> Path:
    path = out or Path("benchmarks") / f"{name}.json"
    io.write_json(path, {"benchmark": name, "environment": environment(), **record})
    return path


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
