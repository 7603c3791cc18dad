"""A real hyper-parameter search: Optuna's TPE sampler with median pruning on the per-epoch
validation metric, stored in a database so it resumes and can be shared by several processes.

A space file:

    name: recognize-digitnet
    task: recognize
    preset: recognize-fast        # optional
    base: {epochs: 4}             # fixed overrides
    metric: acc                   # val_<metric> is reported each epoch and optimised
    mode: max
    params:
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      batch_size: {choices: [64, 128, 256]}
      model_args.widths: {choices: [[16, 32, 64], [32, 64, 128]]}   # non-scalar choices as JSON
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from digitlab import config, io
from digitlab.errors import DigitlabError
from digitlab.study.spec import StudySpec, TrialSpec

TOP_IN_REPORT = 8


def load_space(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DigitlabError(f"space file {path} not found", "pass a YAML file such as configs/spaces/recognize-digitnet.yaml")
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DigitlabError(f"{path} is not valid YAML: {exc}", "fix the file") from None
    params = space.get("params")
    if not isinstance(params, dict) or not params:
        raise DigitlabError(f"{path} has no `params` mapping", "write params: {lr: {low: 1e-4, high: 1e-2, log: true}}")
    for name, dist in params.items():
        if not isinstance(dist, dict) or not ("choices" in dist or {"low", "high"} <= set(dist)):
            raise DigitlabError(f"{path}: param {name!r} needs `choices` or `low` and `high`",
                                "write {choices: [...]} or {low: 0.0, high: 1.0, log: false}")
    space.setdefault("name", path.stem)
    space.setdefault("metric", "acc")
    space.setdefault("mode", "max")
    if space.get("task") not in config.TASKS:
        raise DigitlabError(f"{path}: task {space.get('task')!r}", f"use one of {', '.join(config.TASKS)}")
    return space


def suggest(trial, name: str, dist: dict):
    """One value from the trial; lists and dicts travel as JSON strings (Optuna needs scalars)."""
    if "choices" in dist:
        choices = dist["choices"]
        encoded = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in choices]
        return suggest_value(dist, trial.suggest_categorical(name, encoded))
    low, high = dist["low"], dist["high"]
    if isinstance(low, int) and isinstance(high, int) and not dist.get("float", False):
        return trial.suggest_int(name, low, high, log=bool(dist.get("log", False)))
    return trial.suggest_float(name, float(low), float(high), log=bool(dist.get("log", False)))


def run_tune(space: dict, folder: Path, n_trials: int, extra: dict, storage: str | None = None,
             seed: int = 0, preset: str | None = None) -> "object":
    """Run until the study holds `n_trials` finished (complete or pruned) trials; returns the study."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from digitlab.engine import loop
    from digitlab.study import storage as storages

    spec = StudySpec(name=space["name"], task=space["task"], preset=preset or space.get("preset"),
                     base=dict(space.get("base") or {}), metric=str(space["metric"]).removeprefix("val_"),
                     mode=space["mode"])
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or storages.default_storage(folder)
    study = optuna.create_study(
        storage=storages.open_storage(url), study_name=folder.name, direction=f"{spec.mode}imize",
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    params = space["params"]
    config.apply_overrides(config.TrainConfig(task=spec.task), {**spec.base, **extra})  # typos fail now

    def objective(trial) -> float:
        values = {name: suggest(trial, name, dist) for name, dist in params.items()}
        overrides = {"progress": False, **spec.base, **values, **extra}
        cfg = spec.resolve(TrialSpec(f"trial-{trial.number:04d}", "", overrides.get("seed", 0), overrides))
        run_dir = folder / "runs" / f"trial-{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run", run_dir.name)

        def on_epoch(record: dict) -> None:
            value = record.get(f"val_{spec.metric}")
            if isinstance(value, (int, float)):
                trial.report(float(value), record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        loop.train(cfg, run_dir=run_dir, quiet=True, on_epoch=on_epoch)
        metrics = io.read_json(run_dir / "metrics.json")
        trial.set_user_attr("test", metrics.get(f"test_{spec.metric}"))
        print(f"  trial {trial.number}: val {spec.metric} {metrics[f'val_{spec.metric}']:.4f}  {values}", flush=True)
        return float(metrics[f"val_{spec.metric}"])

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done, catch=(),
                       callbacks=[MaxTrialsCallback(n_trials, states=finished)])
    write_results(study, folder, spec, space)
    return study


def write_results(study, folder: Path, spec: StudySpec, space: dict) -> Path:
    """best.yaml (a preset of the best values), trials.json, and a report of the top trials."""
    from optuna.trial import TrialState

    from digitlab.study import report

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "test": t.user_attrs.get("test"),
             "epochs": max(t.intermediate_values, default=None), **t.params} for t in study.get_trials(deepcopy=False)]
    io.write_json(folder / "trials.json", rows)
    if not complete:
        raise DigitlabError("no trial finished", "check the trials' errors above, or raise --trials")
    best = study.best_trial
    values = {name: suggest_value(space["params"][name], v) for name, v in best.params.items()}
    io.write_text(folder / "best.yaml", f"# best of {len(complete)} complete trials, val {spec.metric} "
                  f"{best.value:.4f} (trial {best.number})\n"
                  + yaml.safe_dump({**({"model": spec.base["model"]} if "model" in spec.base else {}), **values},
                                   sort_keys=False))
    sign = 1 if spec.mode == "max" else -1
    top = sorted(complete, key=lambda t: -sign * t.value)[:TOP_IN_REPORT]
    groups = [(f"#{t.number} " + ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else
                                          f"{k.split('.')[-1]}={v}" for k, v in t.params.items()),
               [report.Run(folder / "runs" / t.user_attrs.get("run", f"trial-{t.number:04d}"))]) for t in top]
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    notes = [f"{len(complete)} complete and {pruned} pruned trials (TPE sampler, median pruning on "
             f"validation {spec.metric} per epoch); the {len(top)} best are shown. Best values: {folder / 'best.yaml'}."]
    return report.render(groups, folder, f"Tuning {spec.name}", spec.metric, spec.mode, notes=notes)


def suggest_value(dist: dict, value):
    """Decode a stored categorical back to the list/dict it stands for."""
    if "choices" in dist and isinstance(value, str):
        for choice in dist["choices"]:
            if isinstance(choice, (list, dict)) and json.dumps(choice) == value:
                return choice
    return value
