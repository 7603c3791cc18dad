"""Recognition runs combined into one: a run folder whose model averages theirs (`digitlab ensemble`).

    digitlab ensemble RUN_A RUN_B RUN_C --out runs/recognize/max
    digitlab ensemble --preset recognize-best --seeds 0 1 2 --out runs/recognize/max   # trains them first
    digitlab ensemble --members recognize-robust:0 recognize-robust-deep:0 --out runs/recognize/mix

The result is an ordinary run folder (config.json, model.safetensors, model.json, metrics.json), so
`predict`, `serve`, `export`, `bench shift` and `digitlab.load` take it as they take any run. It is
measured like a training run (validation, then test once) and its calibration (temperature and
abstain thresholds) is fitted again on validation: the members' own do not carry over to their
average, which is usually less confident than each of them (docs/speed.md, "recognize-max").
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from digitlab import io, runfolder
from digitlab.errors import DigitlabError

RUN_FILES = ("config.json", "model.safetensors", "model.json", "metrics.json")


def train_members(members: list[tuple[str, int]], out: str | Path, quiet: bool = True, jobs: int = 1,
                  **settings: Any) -> list[Path]:
    """Train each (preset, seed) into OUT/members/s<seed> (or <preset>-s<seed> when the presets
    differ); a finished member is kept, an interrupted one resumes from its checkpoint, so the
    command can simply be run again. `jobs` > 1 trains that many members at once, each in its own
    process with its share of the CPU cores (docs/speed.md, "recognize-best2": two recognize-deep
    members at once, one core each, in 12.8 minutes on 2 cores)."""
    from digitlab import config

    one_preset = len({preset for preset, _ in members}) == 1
    names = [f"s{seed}" if one_preset else f"{Path(preset).stem}-s{seed}" for preset, seed in members]
    if len(members) < 2 or len(set(names)) < len(names):
        raise DigitlabError(f"an ensemble needs at least two members, each a different preset and seed, got {members}",
                            "e.g. --seeds 0 1 2, or --members recognize-robust:0 recognize-robust-deep:0")
    if jobs < 1:
        raise DigitlabError(f"--jobs must be 1 or more, got {jobs}", "e.g. --jobs 2 to train two members at once")
    jobs = min(jobs, len(members))
    if jobs > 1 and "threads" not in settings:
        settings["threads"] = max(1, (os.cpu_count() or 1) // jobs)
    cfgs = [config.resolve("recognize", preset, {"progress": not quiet and jobs == 1, **settings, "seed": seed})
            for preset, seed in members]  # every config is checked before the first member trains
    paths = [Path(out) / "members" / name for name in names]
    if jobs == 1:
        for cfg, path in zip(cfgs, paths):
            _train_member(cfg, path, quiet)
        return paths
    if not quiet:  # in place of the members' per-epoch lines, which would interleave
        print(f"training {len(members)} members, up to {jobs} at once in separate processes; "
              f"per-epoch figures in {Path(out) / 'members'}/*/history.jsonl", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_train_member, cfg, path, True) for cfg, path in zip(cfgs, paths)]:
            done.result()  # re-raises a member's error here
    if not quiet:
        for path in paths:
            m = runfolder.read_metrics(path)
            print(f"{path}: val acc {100 * m['val_acc']:.2f}%, test acc {100 * m['test_acc']:.2f}%")
    return paths


def _train_member(cfg, path: Path, quiet: bool) -> None:
    """One member (a TrainConfig), resumed when its folder already holds a run; at module level so
    that a worker process can run it."""
    from digitlab.engine import loop

    path.mkdir(parents=True, exist_ok=True)
    loop.train(cfg, run_dir=path, resume=(path / "config.json").is_file(), quiet=quiet)


def combine(runs: list[str | Path], out: str | Path, data_dir: str | None = None) -> Path:
    """Write the ensemble of recognition `runs` into `out` (a new folder, or one holding only the
    members that `train_members` made); config.json is written last, so an interrupted combine
    leaves no folder that looks like a finished run."""
    import torch

    from digitlab.engine import run as runs_io
    from digitlab.models import registry
    from digitlab.tasks.base import get_task

    start = time.perf_counter()
    runs, out = [Path(r) for r in runs], Path(out)
    _check_out(out)
    cfg, seeds = _ensemble_config(runs, data_dir)
    model = registry.create("ensemble", "recognize", **cfg.model_args)
    for member, run in zip(model.members, runs):
        member.load_state_dict(runfolder.load_model(run)[0].state_dict())
    model.eval()
    task = get_task("recognize")
    task.setup(cfg, torch.device("cpu"))
    val = task.evaluate(model, "val")
    outputs = task.predict(model, "test")  # measured once, like a training run's test
    metrics = {**{f"test_{k}": v for k, v in task.score(outputs, "test").items()},
               **{f"val_{k}": v for k, v in val.items()},
               "members": [str(r) for r in runs], "member_seeds": seeds, "params": registry.count_params(model),
               "combine_seconds": round(time.perf_counter() - start, 2), "threads": torch.get_num_threads()}
    out.mkdir(parents=True, exist_ok=True)
    runs_io.save_model(out, model, cfg, {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                         "members": metrics["members"], "member_seeds": seeds,
                                         **task.model_meta(model)})
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "config.json", cfg.to_dict())
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DigitlabError(f"--out {out} is a file", "name a new folder for the ensemble")
    if (out / "config.json").exists():
        raise DigitlabError(f"{out} already holds a run", "choose a new folder, or delete that one first")


def _ensemble_config(runs: list[Path], data_dir: str | None):
    """(the first member's config with the ensemble as its model, the members' seeds); every member
    must be a recognition run of the same data set and validation split (else "validation" would
    include training images of another member)."""
    from digitlab.config import TrainConfig

    if len(runs) < 2:
        raise DigitlabError(f"an ensemble needs at least two runs, got {len(runs)}", "pass two or more run folders")
    cfgs = [runfolder.load_config(r) for r in runs]
    metas = [runfolder.read_model_meta(r, "recognize") for r in runs]
    nested = [str(r) for r, m in zip(runs, metas) if m["model"] == "ensemble"]
    if nested:
        raise DigitlabError(f"{nested[0]} is an ensemble already", "pass the runs it was made of instead")
    if len({(c.dataset, c.val_size, c.split_seed) for c in cfgs}) > 1:
        raise DigitlabError("the runs do not share one data set and validation split (dataset, val_size, split_seed)",
                            "combine runs trained on the same data with the same val_size and split_seed")
    data = cfgs[0].to_dict()
    members = [{"model": m["model"], "model_args": m.get("model_args", {})} for m in metas]
    data.update(model="ensemble", model_args={"members": members}, activation=None,
                data_dir=data_dir or data["data_dir"], device="cpu",
                task_args={**data["task_args"], "junk_weight": 0.0})  # nothing is trained here
    return TrainConfig.from_dict(data), [c.seed for c in cfgs]
