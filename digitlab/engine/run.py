"""Writing a run directory: config, history, metrics, weights and how to rebuild the model.
Reading it (and the checks that go with reading) lives in digitlab.runfolder.

    RUN/config.json        resolved TrainConfig
    RUN/history.jsonl      one JSON object per finished epoch
    RUN/metrics.json       final metrics (test measured once, at the end)
    RUN/model.safetensors  best weights (no pickle)
    RUN/model.json         {"task", "model", "model_args", "params", ...}: enough to rebuild it
    RUN/checkpoint.pt      resumable state, rewritten atomically after every epoch
    RUN/tb/                TensorBoard events
    RUN/figures/*.png
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from digitlab import io
from digitlab.config import TrainConfig
from digitlab.models import registry
from digitlab.runfolder import check_run_dir, load_config, load_model, read_history  # noqa: F401 (re-exported)


def default_runs_root() -> Path:
    return Path(os.environ.get("DIGITLAB_RUNS", "runs"))


def new_run_dir(cfg: TrainConfig, root: Path | None = None, name: str | None = None) -> Path:
    """runs/<task>/<YYYYmmdd-HHMMSS>-<model>-s<seed>, made unique with a suffix if taken."""
    root = (root or default_runs_root()) / cfg.task
    base = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-s{cfg.seed}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    path.mkdir(parents=True)
    return path


def write_history(run: Path, history: list[dict]) -> None:
    """Rewritten whole (atomically) each epoch so a kill never leaves a torn line."""
    io.write_text(Path(run) / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def save_model(run: Path, model: nn.Module, cfg: TrainConfig, extra: dict | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with io.atomic_path(Path(run) / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    meta = {"task": cfg.task, "model": cfg.model, "model_args": cfg.model_kwargs(),
            "params": registry.count_params(model), "input": "(B,1,28,28) float in [0,1], white ink on black",
            **(extra or {})}
    io.write_json(Path(run) / "model.json", meta)


def save_checkpoint(run: Path, state: dict) -> None:
    with io.atomic_path(Path(run) / "checkpoint.pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(run: Path) -> dict | None:
    path = Path(run) / "checkpoint.pt"
    if not path.exists():
        return None
    # weights_only: a restricted unpickler that only rebuilds tensors and plain containers.
    return torch.load(path, map_location="cpu", weights_only=True)
