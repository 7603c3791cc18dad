"""Training configuration: typed defaults in one place, YAML presets, flat `key=value` overrides.

A preset is a YAML file of overrides (digitlab/presets/NAME.yaml, or any path). Nested dicts
(`model_args`, `augment`, `task_args`) are addressed with dots: `--set augment.rotate=10`.
The resolved config is saved as config.json in every run directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from digitlab.errors import DigitlabError

TASKS = ("recognize", "denoise", "compare")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")
DICT_FIELDS = ("model_args", "augment", "task_args")


@dataclass
class TrainConfig:
    task: str = "recognize"
    model: str = "digitnet"
    model_args: dict = field(default_factory=dict)   # passed to the model constructor
    activation: str | None = None                    # shortcut for model_args.activation
    dataset: str = "mnist"
    data_dir: str | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9          # sgd, rmsprop
    nesterov: bool = False         # sgd
    weight_decay: float = 0.0
    schedule: str = "none"
    step_size: int = 5             # step: epochs between decays
    gamma: float = 0.5             # step: decay factor
    warmup_frac: float = 0.25      # onecycle: fraction of steps warming up
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-5
    label_smoothing: float = 0.0
    grad_clip: float = 0.0         # max global grad norm, 0 = off
    ema: float = 0.0               # per-step decay of a moving average of the weights, which is
                                   # then what is evaluated and saved; 0 = off (e.g. 0.995)
    augment: dict = field(default_factory=dict)      # AugmentConfig fields
    task_args: dict = field(default_factory=dict)    # options only one task understands
    # data split and selection (benchmarks.md: 55,000 / 5,000, seeded once)
    val_size: int = 5000
    split_seed: int = 0
    subset: float = 1.0            # fraction of the training split to use (quick studies)
    seed: int = 0
    patience: int = 0              # early stop after this many epochs without improvement; 0 = off
    target: float | None = None    # stop once the validation metric reaches this
    # machine
    device: str = "auto"           # auto: cuda, then mps, then cpu
    threads: int = 0               # torch CPU threads; 0 = torch's default
    amp: bool = True               # mixed precision on CUDA only
    compile: bool = False          # torch.compile the model
    progress: bool = True          # tqdm progress bar
    tensorboard: bool = True
    figures: bool = True

    def model_kwargs(self) -> dict:
        args = dict(self.model_args)
        if self.activation is not None:
            args["activation"] = self.activation
        return args

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return apply_overrides(cls(), values)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def apply_overrides(cfg: TrainConfig, values: dict) -> TrainConfig:
    """Return a copy of cfg with `values` applied; keys may be dotted (augment.rotate)."""
    data = cfg.to_dict()
    known = set(field_names())
    for key, value in values.items():
        top, _, rest = key.partition(".")
        if top not in known:
            raise DigitlabError(
                f"unknown config key {key!r}",
                f"use one of: {', '.join(sorted(known))} (nested: {', '.join(DICT_FIELDS)}.NAME)",
            )
        if rest:
            if top not in DICT_FIELDS:
                raise DigitlabError(f"config key {top!r} has no sub-keys (got {key!r})",
                                    f"write {top}=VALUE")
            data[top] = {**data[top], rest: value}
        elif top in DICT_FIELDS and isinstance(value, dict):
            data[top] = {**data[top], **value}
        else:
            data[top] = value
    out = TrainConfig(**data)
    validate(out)
    return out


def validate(cfg: TrainConfig) -> None:
    def bad(what: str, fix: str):
        raise DigitlabError(f"invalid config: {what}", fix)

    if cfg.task not in TASKS:
        bad(f"task {cfg.task!r}", f"use one of {', '.join(TASKS)}")
    if cfg.optimizer not in OPTIMIZERS:
        bad(f"optimizer {cfg.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        bad(f"schedule {cfg.schedule!r}", f"use one of {', '.join(SCHEDULES)}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            bad(f"{name} = {getattr(cfg, name)!r}", f"set {name} to a positive integer")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        bad(f"lr = {cfg.lr!r}", "set lr to a positive number, e.g. lr=1e-3")
    if not 0 < cfg.subset <= 1:
        bad(f"subset = {cfg.subset}", "use a fraction in (0, 1]")
    if not (isinstance(cfg.ema, (int, float)) and 0 <= cfg.ema < 1):
        bad(f"ema = {cfg.ema!r}", "use 0 (off) or a decay in (0, 1), e.g. ema=0.995")
    if cfg.patience < 0:
        bad(f"patience = {cfg.patience}", "use 0 (off) or a positive number of epochs")
    for name in DICT_FIELDS:
        if not isinstance(getattr(cfg, name), dict):
            bad(f"{name} must be a mapping", f"write {name}.KEY=VALUE")


def parse_set(items: list[str]) -> dict:
    """Parse `key=value` strings; values are YAML (so 1e-3, true, [32, 64] work)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DigitlabError(f"bad --set {item!r}", "write --set key=value, e.g. --set lr=0.01")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise DigitlabError(f"bad value in --set {item!r}: {exc}", "quote the value") from None
    return out


def list_presets() -> list[str]:
    folder = resources.files("digitlab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict:
    """A preset by name (digitlab/presets/NAME.yaml) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("digitlab") / "presets" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise DigitlabError(f"unknown preset {name_or_path!r}",
                                f"use one of: {', '.join(list_presets())}, or a path to a .yaml file")
        text = res.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DigitlabError(f"preset {name_or_path!r} is not valid YAML: {exc}", "fix the file") from None
    if not isinstance(values, dict):
        raise DigitlabError(f"preset {name_or_path!r} must be a mapping of config keys",
                            "write key: value lines")
    return values


def resolve(task: str, preset: str | None, overrides: dict) -> TrainConfig:
    """Defaults < preset (or the task's default preset) < explicit overrides."""
    values = load_preset(preset or DEFAULT_PRESETS[task])
    if values.get("task", task) != task:
        raise DigitlabError(f"preset {preset!r} is for task {values['task']!r}, not {task!r}",
                            f"pick a {task} preset: {', '.join(p for p in list_presets() if p.startswith(task))}")
    return apply_overrides(TrainConfig(task=task), {**values, **overrides, "task": task})


DEFAULT_PRESETS = {"recognize": "recognize-fast", "denoise": "denoise-fast", "compare": "compare-small"}


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
