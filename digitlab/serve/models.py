"""The runs a server answers with: found once at startup, each behind one call that takes numpy arrays.

`Engine` hides the runtime: PyTorch (the run's safetensors) or ONNX Runtime (RUN/model.onnx, exported
on first use). Inputs and outputs follow digitlab.export.IO_NAMES for both, so the app never branches
on the runtime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from digitlab import pretrained, runfolder
from digitlab.engine import run as runs
from digitlab.errors import DigitlabError
from digitlab.export import IO_NAMES, FlatOutputs, onnx_session

TASKS = ("recognize", "denoise", "compare")
RUNTIMES = ("torch", "onnx")


def newest_run(task: str, root: Path | None = None) -> Path | None:
    """The newest finished run of a task (model.safetensors and metrics.json present), by mtime."""
    folder = (root or runs.default_runs_root()) / task
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if (p / "model.safetensors").is_file() and (p / "metrics.json").is_file()]
    return max(done, key=lambda p: (p / "model.safetensors").stat().st_mtime, default=None)


@dataclass
class Engine:
    """One loaded run: `__call__(*arrays (B,1,28,28) float32) -> tuple of output arrays`."""

    task: str
    run: Path
    runtime: str
    meta: dict
    metrics: dict
    _call: object = field(repr=False, default=None)

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._call(*arrays)

    def describe(self) -> dict:
        keep = ("test_acc", "test_loss", "test_psnr", "test_ssim", "test_kind_acc", "test_auc", "test_eer",
                "val_acc", "params", "flops_per_image", "epochs_run", "train_seconds")
        return {"task": self.task, "run": str(self.run), "name": self.run.name, "model": self.meta.get("model"),
                "model_args": self.meta.get("model_args", {}), "params": self.meta.get("params"),
                "runtime": self.runtime,
                "metrics": {k: v for k, v in self.metrics.items() if k in keep or k.startswith("test_")
                            and isinstance(v, (int, float))}}


def load_engine(task: str, run: str | Path, runtime: str = "torch") -> Engine:
    run = Path(run)
    model, meta = runfolder.load_model(run, task=task)
    metrics = runfolder.read_metrics(run)
    if runtime == "onnx":
        session = onnx_session(run)
        names = IO_NAMES[task][0]

        def call(*arrays):
            return tuple(session.run(None, dict(zip(names, arrays))))
    else:
        flat, lock = FlatOutputs(model, task).eval(), threading.Lock()

        def call(*arrays):
            # Serialised: torch already uses every thread for one call, and concurrent
            # calls into one module would only fight over them.
            with lock, torch.inference_mode():
                out = flat(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
            return tuple(t.float().numpy() for t in (out if isinstance(out, tuple) else (out,)))
    return Engine(task, run, runtime, meta, metrics, call)


NEWEST = "newest"  # --TASK newest: the newest finished run under the runs root


def choose_run(task: str, chosen: str | Path | None, root: Path | None = None) -> Path | None:
    """The run given; "newest": the newest finished run of the task; None: the shipped model, if any."""
    if str(chosen) == NEWEST:
        found = newest_run(task, root)
        if found is None:
            raise DigitlabError(f"--{task} newest: no finished {task} run under {(root or runs.default_runs_root())}",
                                f"train one with `digitlab train {task}`, or leave --{task} out for the shipped model")
        return found
    if chosen is not None:
        return Path(chosen)
    try:
        return pretrained.path(task)
    except DigitlabError:
        return None


def load_engines(chosen: dict[str, str | Path | None], runtime: str = "torch",
                 root: Path | None = None) -> tuple[dict[str, Engine], dict[str, str]]:
    """Load the chosen run of each task (see choose_run); returns (engines, {task: why missing})."""
    if runtime not in RUNTIMES:
        raise DigitlabError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
    engines, missing = {}, {}
    for task in TASKS:
        run = choose_run(task, chosen.get(task), root)
        if run is None:
            missing[task] = f"no {task} model: train one with `digitlab train {task}`, then restart the server"
            continue
        engines[task] = load_engine(task, run, runtime)
    return engines, missing
