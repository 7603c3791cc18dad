"""Training protocol for any task: the whole `digitlab train` command timed per
seed in a fresh process, and every test metric of the run summarised over seeds (mean, std, min,
max). `digitlab bench recognize` is this protocol with the task fixed."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab import config, io
from digitlab.bench.common import save_record, summary
from digitlab.config import TASKS
from digitlab.errors import DigitlabError
from digitlab.report import training


def add_arguments(p, default_preset: str | None) -> None:
    p.add_argument("--preset", default=default_preset, help="preset name or YAML path (default: the task's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", type=float, default=None,
                   help="target for the mean test value of the task's primary metric, e.g. 0.994")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/<task>-<preset>.json)")
    p.add_argument("--keep-runs", type=Path, help="keep the run directories here")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a preset of any task over seeds; time and test metrics",
                       description="Train a preset of any task over seeds; time and test metrics.",
                       epilog="example: digitlab bench train compare --preset compare-small --seeds 0 1 2 --target 0.994")
    p.add_argument("task", choices=TASKS)
    add_arguments(p, None)
    p.set_defaults(func=run)


def run(args) -> int:
    task = args.task
    cfg = config.resolve(task, args.preset, config.parse_set(args.set))  # a bad preset fails before any training
    preset = args.preset or config.DEFAULT_PRESETS[task]
    from digitlab.tasks.base import get_task  # here: tasks import torch, `digitlab bench --help` must not

    metric = get_task(task).primary_metric
    root = args.keep_runs or Path(tempfile.mkdtemp(prefix="digitlab-bench-"))
    trials = []
    for seed in args.seeds:
        out = root / f"{Path(preset).stem}-s{seed}"
        cmd = [sys.executable, "-m", "digitlab", "train", task, "--preset", preset,
               "--seed", str(seed), "--out", str(out), "--quiet"]
        if args.set:
            cmd += ["--set", *args.set]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0  # whole command, interpreter start included
        drawn = _wait_for_report(out, cfg.figures)  # drawn after the answer: not in `seconds`, not overlapping the next seed
        metrics = io.read_json(out / "metrics.json")
        tests = {k: v for k, v in metrics.items() if k.startswith("test_") and isinstance(v, (int, float))}
        trials.append({"seed": seed, "command_seconds": round(seconds, 2), **tests,
                       f"val_{metric}": metrics.get(f"val_{metric}"), "best_epoch": metrics["best_epoch"],
                       "train_seconds": metrics["train_seconds"], "epochs_run": metrics["epochs_run"],
                       "threads": metrics["threads"], "report_after_seconds": drawn, "run": str(out)})
        print(f"seed {seed}: " + "  ".join(f"{k} {_fmt(k, v)}" for k, v in tests.items())
              + f"  command {seconds:.1f} s (training {metrics['train_seconds']:.1f} s, {metrics['threads']} threads)",
              flush=True)
    record = {"task": task, "preset": preset, "overrides": args.set, "config": cfg.to_dict(), "trials": trials,
              **{k: summary([t[k] for t in trials]) for k in trials[0] if k.startswith("test_")},
              "command_seconds": summary([t["command_seconds"] for t in trials])}
    name = f"test_{metric}"
    head = record[name]
    if args.target is not None:
        record["target"] = args.target
        record["target_met"] = head["mean"] >= args.target
    path = save_record(f"{task}-{Path(preset).stem}", record, args.out)
    secs = record["command_seconds"]
    print(f"{preset}: {name} {_fmt(name, head['mean'])} +- {_fmt(name, head['std'])} (best {_fmt(name, head['max'])}, "
          f"n={head['n']}); command {secs['mean']:.1f} s mean, {secs['min']:.1f} s min; "
          f"{'/'.join(str(n) for n in sorted({t['threads'] for t in trials}))} threads per run -> {path}")
    return 0


def _wait_for_report(run: Path, figures: bool, limit: float = 300.0) -> float | None:
    """Seconds until the background drawing `digitlab train` started has written RUN/report.md (its
    last file); None when there is nothing to draw. A drawing that failed or hung stops the bench."""
    if not figures:
        return None
    t0 = time.perf_counter()
    log = run / training.LOG
    while not (run / "report.md").is_file():
        text = log.read_text() if log.is_file() else ""
        if "Traceback" in text or "error:" in text or time.perf_counter() - t0 > limit:
            raise DigitlabError(f"the background drawing of {run} did not finish: {text[-500:] or 'no log'}",
                                f"see {log}; `digitlab report {run} --redraw` draws it again")
        time.sleep(0.1)
    return round(time.perf_counter() - t0, 2)


def _fmt(key: str, value: float) -> str:
    return f"{100 * value:.2f}%" if key.endswith(("acc", "eer")) else f"{value:.5g}"
