"""Reading a run folder: the one place that knows its files and checks them.

    RUN/config.json        resolved TrainConfig
    RUN/history.jsonl      one JSON object per finished epoch
    RUN/metrics.json       final metrics (test measured once, at the end)
    RUN/model.safetensors  best weights (no pickle)
    RUN/model.json         {"task", "model", "model_args", "params", ...}: enough to rebuild the model

The shipped pretrained models (digitlab/pretrained/<task>/) are run folders too. Writing lives in
digitlab.engine.run. torch is imported only by `load_model`, so the CLI and reports stay light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from digitlab import io
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    import torch

    from digitlab.config import TrainConfig

TASKS = ("recognize", "denoise", "compare")


def check_run_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise DigitlabError(f"{path} does not exist",
                            "check the path: pass a folder made by `digitlab train`, e.g. runs/recognize/<name>")
    if not (path / "config.json").is_file():
        raise DigitlabError(f"{path} is not a digitlab run directory (no config.json)",
                            "pass a folder made by `digitlab train`, e.g. runs/recognize/<name>")
    return path


def read_json_file(path: Path, what: str) -> dict:
    """A run file that must be a JSON object; a damaged one is a clear error, not a traceback."""
    try:
        data = io.read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DigitlabError(f"cannot read {what} {path}: {exc}",
                            "the file is damaged; restore it or train the run again") from None
    if not isinstance(data, dict):
        raise DigitlabError(f"{what} {path} is not a JSON object", "restore it or train the run again")
    return data


def load_config(run: str | os.PathLike) -> "TrainConfig":
    from digitlab.config import TrainConfig

    path = check_run_dir(run) / "config.json"
    try:
        return TrainConfig.from_dict(read_json_file(path, "config"))
    except DigitlabError as exc:
        raise DigitlabError(f"{path}: {exc.problem}", exc.fix) from None


def read_metrics(run: str | os.PathLike) -> dict:
    """RUN/metrics.json, or {} while the run has not finished."""
    path = Path(run) / "metrics.json"
    return read_json_file(path, "metrics") if path.is_file() else {}


def read_history(run: str | os.PathLike) -> list[dict]:
    """Epoch records from RUN/history.jsonl ([] if none yet); a torn last line is dropped."""
    path = Path(run) / "history.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a kill mid-write (history is rewritten atomically, but older runs were not)
            raise DigitlabError(f"{path} line {i + 1} is not valid JSON", "repair or delete the broken line") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def read_model_meta(run: str | os.PathLike, task: str | None = None) -> dict:
    """RUN/model.json, checked to be a model of `task` when given."""
    run = check_run_dir(run)
    meta_path = run / "model.json"
    if not meta_path.is_file() or not (run / "model.safetensors").is_file():
        raise DigitlabError(f"run {run} has no saved model (model.safetensors / model.json missing)",
                            "let training finish, or resume it with `digitlab train --resume RUN`")
    meta = read_json_file(meta_path, "model description")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_args", {}), dict):
        raise DigitlabError(f"{meta_path} does not name a model", "restore the file or train the run again")
    if task is not None and meta.get("task") != task:
        raise DigitlabError(f"{run} is a {meta.get('task')!r} run, not a {task!r} run",
                            f"pass a run made by `digitlab train {task}`")
    return meta


def load_model(run: str | os.PathLike, device: "str | torch.device" = "cpu",
               task: str | None = None) -> tuple["torch.nn.Module", dict]:
    """Rebuild a run's model from model.json and load its safetensors weights (eval mode)."""
    from safetensors.torch import load_file

    from digitlab.models import registry

    meta = read_model_meta(run, task)
    weights = Path(run) / "model.safetensors"
    try:
        model = registry.create(meta["model"], **meta.get("model_args", {}))
        model.load_state_dict(load_file(str(weights), device=str(device)))
    except DigitlabError as exc:  # e.g. an unknown model name: say which file named it
        raise DigitlabError(f"{Path(run) / 'model.json'}: {exc.problem}", exc.fix) from None
    except Exception as exc:  # corrupt file, mismatched architecture, bad model_args
        raise DigitlabError(f"cannot load the model of {run}: {exc}",
                            "the files are damaged or from another model; retrain or restore them") from None
    return model.to(device).eval(), meta
