"""A study file: a base config plus a grid (or list) of overrides, repeated over seeds.

    name: r2-optimizer
    task: recognize
    preset: recognize-fast          # optional; without one, trials start from TrainConfig's defaults
    base: {model: resnet_r2, epochs: 10}
    grid: {optimizer: [adam, sgd, rmsprop]}     # or trials: [{label: ..., key: value}, ...]
    seeds: [0, 1, 2]
    metric: acc                     # the history/metrics suffix compared (val_acc, test_acc)
    mode: max                       # max (default) or min
    quick: {epochs: 1, subset: 0.05, seeds: [0]}   # --quick: a smoke version
    labels: {"optimizer=adam": Adam}            # optional display names
    claim: {source: R2, text: "Adam beats SGD and RMSprop", best: optimizer=adam}   # optional: what the
                                    # source report found; the study report says whether it agrees

Expanding it gives a fixed, ordered list of trial specs; each has a stable `key` that names its
run directory and identifies it in the Optuna database.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from digitlab import config, io
from digitlab.errors import DigitlabError

KNOWN_KEYS = {"name", "task", "description", "preset", "base", "grid", "trials", "seeds", "metric",
              "mode", "quick", "labels", "claim"}
CLAIM_KEYS = {"source", "text", "best"}


@dataclass
class TrialSpec:
    key: str               # run directory name and Optuna identity, e.g. "optimizer-adam-s0"
    label: str             # the setting, shared by its seeds, e.g. "optimizer=adam"
    seed: int
    overrides: dict        # everything applied on top of the preset, seed and CLI values included


@dataclass
class StudySpec:
    name: str
    task: str
    preset: str | None = None
    description: str = ""
    base: dict = field(default_factory=dict)
    settings: list[tuple[str, dict]] = field(default_factory=list)   # (label, overrides)
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: str = "acc"
    mode: str = "max"
    quick: dict = field(default_factory=dict)
    quick_seeds: list[int] | None = None   # `quick: {seeds: [0]}`: fewer seeds for the quick version
    claim: dict = field(default_factory=dict)   # {source, text, best}: what the source report found

    def trials(self, extra: dict | None = None) -> list[TrialSpec]:
        """Settings x seeds, in file order; `extra` (CLI --epochs/--subset/--set) wins over all."""
        out, used = [], set()
        for label, setting in self.settings:
            for seed in self.seeds:
                key = f"{slug(label)}-s{seed}"
                n = 2
                while key in used:
                    key, n = f"{slug(label)}-{n}-s{seed}", n + 1
                used.add(key)
                overrides = merge(merge(merge(self.base, setting), {"seed": seed}), extra or {})
                out.append(TrialSpec(key, label, seed, overrides))
        return out

    def resolve(self, trial: TrialSpec) -> config.TrainConfig:
        """TrainConfig defaults < preset (only if the study names one) < base < setting < CLI."""
        if self.preset:
            return config.resolve(self.task, self.preset, trial.overrides)
        return config.apply_overrides(config.TrainConfig(task=self.task), {**trial.overrides, "task": self.task})


def merge(low: dict, high: dict) -> dict:
    """high over low; nested sections (model_args, augment, task_args) merge key by key."""
    out = dict(low)
    for key, value in high.items():
        if key in config.DICT_FIELDS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def slug(text: str) -> str:
    """A file-name-safe version of a label: 'optimizer=adam, lr=0.01' -> 'optimizer-adam_lr-0.01'."""
    text = re.sub(r"\s*,\s*", "_", text.strip()).replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.-")[:80] or "trial"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def load(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise DigitlabError(f"study file {path} not found", "pass a YAML file such as configs/studies/r2-optimizer.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DigitlabError(f"{path} is not valid YAML: {exc}", "fix the file") from None
    if not isinstance(data, dict):
        raise DigitlabError(f"{path} must be a mapping", "see configs/studies/*.yaml for the format")
    return from_dict(data, str(path))


def from_dict(data: dict, where: str = "study") -> StudySpec:
    def bad(problem: str, fix: str):
        raise DigitlabError(f"{where}: {problem}", fix)

    unknown = set(data) - KNOWN_KEYS
    if unknown:
        bad(f"unknown keys {sorted(unknown)}", f"use only {', '.join(sorted(KNOWN_KEYS))}")
    if data.get("task") not in config.TASKS:
        bad(f"task {data.get('task')!r}", f"set task to one of {', '.join(config.TASKS)}")
    if ("grid" in data) == ("trials" in data):
        bad("needs exactly one of `grid` or `trials`", "write grid: {key: [values]} or trials: [{...}]")
    labels = data.get("labels") or {}
    settings: list[tuple[str, dict]] = []
    if "grid" in data:
        grid = data["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            bad("grid must map config keys to non-empty lists", "write grid: {lr: [0.1, 0.01]}")
        for combo in itertools.product(*grid.values()):
            setting = dict(zip(grid, combo))
            label = ", ".join(f"{k}={_value_text(v)}" for k, v in setting.items())
            settings.append((str(labels.get(label, label)), setting))
    else:
        trials = data["trials"]
        if not isinstance(trials, list) or not trials or not all(isinstance(t, dict) for t in trials):
            bad("trials must be a non-empty list of mappings", "write trials: [{label: base, lr: 0.01}]")
        for item in trials:
            setting = {k: v for k, v in item.items() if k != "label"}
            label = item.get("label") or ", ".join(f"{k}={_value_text(v)}" for k, v in setting.items()) or "base"
            settings.append((str(label), setting))
    seen = [label for label, _ in settings]
    if len(set(seen)) != len(seen):
        bad("two settings share a label", "give each trial a distinct `label`")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        bad(f"seeds {seeds!r}", "write seeds: [0, 1, 2]")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        bad(f"mode {mode!r}", "use max or min")
    claim = data.get("claim")
    if claim is not None and (not isinstance(claim, dict) or set(claim) - CLAIM_KEYS or not claim.get("text")):
        bad(f"claim {claim!r}", "write claim: {source: R1, text: what the report found, best: LABEL (optional)}")
    claim = claim or {}
    if claim.get("best") is not None and str(claim["best"]) not in seen:
        bad(f"claim best {claim['best']!r} is not a setting", f"use one of the labels: {', '.join(seen)}")
    spec = StudySpec(
        name=str(data.get("name") or Path(where).stem), task=data["task"], preset=data.get("preset"),
        description=str(data.get("description", "")), base=dict(data.get("base") or {}),
        settings=settings, seeds=seeds, metric=str(data.get("metric", "acc")).removeprefix("val_"),
        mode=mode, quick={k: v for k, v in (data.get("quick") or {}).items() if k != "seeds"},
        quick_seeds=(data.get("quick") or {}).get("seeds"), claim=dict(claim))
    return spec


def write_plan(folder: Path, spec: StudySpec, trials: list[TrialSpec], source: str) -> None:
    """STUDY/study.json: the expanded trial list every worker runs and the report shows."""
    plan = {"spec": {k: v for k, v in dataclasses.asdict(spec).items() if k != "settings"},
            "source": source, "trials": [dataclasses.asdict(t) for t in trials]}
    io.write_json(folder / "study.json", plan)


def read_plan(folder: Path) -> tuple[StudySpec, list[TrialSpec]]:
    plan = io.read_json(folder / "study.json")
    spec = StudySpec(**{k: v for k, v in plan["spec"].items() if k != "settings"})
    return spec, [TrialSpec(**t) for t in plan["trials"]]
