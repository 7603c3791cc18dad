"""Training configuration: typed defaults in one place, YAML presets, flat `key=value` overrides.

A preset is a YAML file of overrides (digitlab/presets/NAME.yaml, or any path). Nested dicts
(`model_args`, `augment`, `task_args`) are addressed with dots: `--set augment.rotate=10`.
The resolved config is saved as config.json in every run directory.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError

from digitlab.errors import DigitlabError

TASKS = ("recognize", "denoise", "compare")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")
DICT_FIELDS = ("model_args", "augment", "task_args")


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; read it as YAML 1.2 does: a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


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
    # data split and selection (55,000 / 5,000 on MNIST, seeded once: every run validates on the same images)
    val_size: int = 5000
    split_seed: int = 0
    subset: float = 1.0            # fraction of the training split to use (quick studies)
    seed: int = 0
    patience: int = 0              # early stop after this many epochs without improvement; 0 = off
    target: float | None = None    # stop once the validation metric reaches this
    # machine
    device: str = "auto"           # auto: cuda, then mps, then cpu
    threads: int = 0               # torch CPU threads; 0 = torch's default
    amp: bool = True               # mixed precision on CUDA (bf16 where supported, else fp16)
    cpu_amp: bool = False          # bf16 autocast on a CPU with native bf16 instructions (docs/speed.md)
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
            if not isinstance(data[top], dict):  # e.g. augment=null, then augment.rotate=10
                raise DigitlabError(f"invalid config: {top} = {data[top]!r} is not a mapping, so {key} cannot be set",
                                    f"drop {top}={data[top]!r}, or write {top}={{}}")
            data[top] = {**data[top], rest: value}
        elif top in DICT_FIELDS and isinstance(value, dict):
            data[top] = {**data[top], **value}
        else:
            data[top] = value
    out = TrainConfig(**data)
    validate(out)
    return out


# --- validation ---------------------------------------------------------------------------------
# Every field is checked (type, range, finiteness) before a run directory is made or a byte of data
# is read, so a typo fails in a second with one message instead of after an epoch, or never.
# pydantic does the type/range work (strict: `true` is no number, `2.5` no integer, `.inf` no
# learning rate); what needs the code's own vocabulary (models, augmentations, task options) is
# checked against that code below.

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # ints accepted, bools and strings not
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]


class _Schema(BaseModel):
    """The shape and ranges of a TrainConfig; mirrors its fields (a test checks they match)."""

    model_config = ConfigDict(extra="forbid")
    task: Literal[TASKS]  # type: ignore[valid-type]
    model: str
    model_args: dict[str, Any]
    activation: str | None
    dataset: str
    data_dir: str | None
    epochs: Annotated[Int, Field(ge=1)]
    batch_size: Annotated[Int, Field(ge=1)]
    eval_batch_size: Annotated[Int, Field(ge=1)]
    optimizer: Literal[OPTIMIZERS]  # type: ignore[valid-type]
    lr: Annotated[Num, Field(gt=0)]
    momentum: Fraction
    nesterov: StrictBool
    weight_decay: Annotated[Num, Field(ge=0)]
    schedule: Literal[SCHEDULES]  # type: ignore[valid-type]
    step_size: Annotated[Int, Field(ge=1)]
    gamma: Annotated[Num, Field(gt=0, le=1)]
    warmup_frac: Fraction
    plateau_factor: Annotated[Num, Field(gt=0, lt=1)]
    plateau_patience: Annotated[Int, Field(ge=0)]
    min_lr: Annotated[Num, Field(ge=0)]
    label_smoothing: Annotated[Num, Field(ge=0, lt=1)]
    grad_clip: Annotated[Num, Field(ge=0)]
    ema: Annotated[Num, Field(ge=0, lt=1)]
    augment: dict[str, Any]
    task_args: dict[str, Any]
    val_size: Annotated[Int, Field(ge=1)]
    split_seed: Annotated[Int, Field(ge=0, lt=2**63)]
    subset: Annotated[Num, Field(gt=0, le=1)]
    seed: Annotated[Int, Field(ge=0, lt=2**32)]
    patience: Annotated[Int, Field(ge=0)]
    target: Num | None
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")]
    threads: Annotated[Int, Field(ge=0, le=1024)]
    amp: StrictBool
    cpu_amp: StrictBool
    compile: StrictBool
    progress: StrictBool
    tensorboard: StrictBool
    figures: StrictBool


HINTS = {"device": "use auto, cpu, cuda, cuda:N or mps", "target": "use a number (the validation metric) or null"}


def validate(cfg: TrainConfig) -> None:
    """Raise one DigitlabError listing every invalid field of `cfg` (and how to fix it)."""
    try:
        _Schema.model_validate(cfg.to_dict())
    except ValidationError as exc:
        raise _as_error(exc) from None
    _check_augment(cfg.augment)
    _check_task_args(cfg.task, cfg.task_args)
    _check_model(cfg)
    if cfg.dataset.lower() != "synthetic":
        from digitlab.data import mnist

        mnist.class_names(cfg.dataset)  # unknown dataset -> DigitlabError naming the choices


def _as_error(exc: ValidationError) -> DigitlabError:
    lines, fixes = [], []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        got = "(missing)" if err["type"] == "missing" else f"= {err.get('input')!r}"
        lines.append(f"{key} {got}: {err['msg'].lower()}")
        fixes.append(HINTS.get(key) or _fix(key, err))
    return DigitlabError("invalid config: " + "; ".join(lines), "; ".join(dict.fromkeys(fixes)))


def _fix(key: str, err: dict) -> str:
    """pydantic's "Input should be greater than 0" -> "set lr to a value greater than 0 (default 0.001)"."""
    if err["type"] == "extra_forbidden":
        return f"remove {key}; valid keys: {', '.join(field_names())}"
    if err["type"] == "literal_error":  # "Input should be 'sgd', 'adam' or 'adamw'": name every choice
        return f"set {key} to one of {err['ctx']['expected']}"
    want = err["msg"].removeprefix("Input should be ").split(",")[0]
    if not want.startswith(("a ", "an ")):
        want = f"a value {want}"
    default = getattr(TrainConfig(), key.split(".")[0], None)
    return f"set {key} to {want}" + (f" (default {default!r})" if not isinstance(default, dict) else "")


def _check_augment(values: dict) -> None:
    """Keys and types against AugmentConfig, whose own checks then judge the ranges."""
    from digitlab.data.augment import AugmentConfig

    known = [f.name for f in dataclasses.fields(AugmentConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise DigitlabError(f"invalid config: unknown augment key(s) {', '.join(unknown)}",
                            f"use augment.KEY with KEY one of: {', '.join(known)}")
    if any(isinstance(v, bool) for v in _leaves(values)):
        raise DigitlabError("invalid config: augment values must be numbers, not true/false",
                            "e.g. augment.rotate=10, augment.scale=[0.9, 1.1]")
    try:
        TypeAdapter(AugmentConfig).validate_python(values)
    except ValidationError as exc:
        err = _as_error(exc)
        raise DigitlabError(err.problem.replace("invalid config: ", "invalid config: augment."),
                            "use numbers, e.g. augment.rotate=10 or augment.scale=[0.9, 1.1]") from None


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _check_task_args(task: str, values: dict) -> None:
    """Keys against the task's TASK_ARGS (a task without one takes none); each value's type against
    its default's (a list default takes a list of names, a dict default names mapped to numbers; a None
    default an integer count or null)."""
    import importlib

    defaults = getattr(importlib.import_module(f"digitlab.tasks.{task}"), "TASK_ARGS", {})
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        fix = (f"use task_args.KEY with KEY one of: {', '.join(defaults)}" if defaults
               else f"remove them: the {task} task takes no task_args")
        raise DigitlabError(f"invalid config: unknown {task} task_args {', '.join(unknown)}", fix)
    for key, value in values.items():
        default = defaults[key]
        kind = {bool: StrictBool, int: Int, float: Num, str: str, list: list[str], dict: dict[str, Num]}.get(
            type(default), Int | None)
        try:
            TypeAdapter(kind).validate_python(value)
        except ValidationError:
            want = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                    list: "a list of names", dict: "a mapping of names to numbers"}.get(
                type(default), "an integer or null")
            raise DigitlabError(f"invalid config: task_args.{key} = {value!r} is not {want}",
                                f"e.g. task_args.{key}={default if default is not None else 1000}") from None
        # every number among the tasks' task_args is a weight, margin, fraction, count or seed
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise DigitlabError(f"invalid config: task_args.{key} = {value!r} is negative",
                                f"use 0 or more, e.g. task_args.{key}={default if default is not None else 1000}")


def _check_model(cfg: TrainConfig) -> None:
    """The model exists for this task and takes these model_args: built on torch's meta device,
    which allocates no memory, so a bad argument fails now rather than after the data is loaded."""
    import torch

    from digitlab.models import registry

    names = registry.list_models(cfg.task)
    if cfg.model not in names:
        raise DigitlabError(f"invalid config: model {cfg.model!r} is not a {cfg.task} model",
                            f"use one of: {', '.join(names)}")
    _check_model_arg_lists(cfg.model, cfg.model_kwargs())
    try:
        with torch.device("meta"):
            registry.create(cfg.model, **cfg.model_kwargs())
    except DigitlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - constructors raise ValueError/KeyError/... for bad args
        raise DigitlabError(f"invalid config: model_args for {cfg.model!r}: {exc}",
                            "check the model_args values against the model's docstring") from None


_PositiveInts = Annotated[list[Annotated[StrictInt, Field(gt=0)]], Field(min_length=1)]


def _check_model_arg_lists(model: str, args: dict) -> None:
    """A model_arg whose default is a tuple of integers (widths, strides) takes a list of positive
    integers; anything else would fail deep in torch.nn.Conv2d with an unrelated message."""
    from digitlab.models import registry

    for key, default in registry.defaults(model).items():
        if key not in args or not isinstance(default, (tuple, list)):
            continue
        if not all(isinstance(d, int) for d in default):
            continue
        try:
            TypeAdapter(_PositiveInts).validate_python(args[key])
        except ValidationError:
            raise DigitlabError(f"invalid config: model_args.{key} = {args[key]!r} is not a list of positive integers",
                                f"model_args.{key} must be a list of positive integers, "
                                f"e.g. --set model_args.{key}=[{','.join(map(str, default))}]")


def parse_set(items: list[str]) -> dict:
    """Parse `key=value` strings; values are YAML (so 1e-3, true, [32, 64] work)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DigitlabError(f"bad --set {item!r}", "write --set key=value, e.g. --set lr=0.01")
        try:
            out[key.strip()] = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
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
        values = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise DigitlabError(f"preset {name_or_path!r} is not valid YAML: {exc}", "fix the file") from None
    if not isinstance(values, dict):
        raise DigitlabError(f"preset {name_or_path!r} must be a mapping of config keys",
                            "write key: value lines")
    return values


def resolve(task: str, preset: str | None, overrides: dict) -> TrainConfig:
    """Defaults < preset (or the task's default preset) < explicit overrides."""
    if task not in TASKS:  # digitlab.train("recognise") reaches here without the CLI's choices
        raise DigitlabError(f"unknown task {task!r}", f"use one of: {', '.join(TASKS)}")
    values = load_preset(preset or DEFAULT_PRESETS[task])
    if values.get("task", task) != task:
        raise DigitlabError(f"preset {preset!r} is for task {values['task']!r}, not {task!r}",
                            f"pick a {task} preset: {', '.join(p for p in list_presets() if p.startswith(task))}")
    return apply_overrides(TrainConfig(task=task), {**values, **overrides, "task": task})


DEFAULT_PRESETS = {"recognize": "recognize-fast", "denoise": "denoise-fast", "compare": "compare-small"}
