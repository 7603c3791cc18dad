"""`digitlab train TASK`: train a model from a preset plus overrides, into a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from digitlab import config
from digitlab.commands.common import add_parser
from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = add_parser(
        sub, "train", help="train a model (recognize, denoise or compare)",
        description="Train a model. Settings come from the preset, then --model/--epochs/..., then --set.",
        examples=["digitlab train recognize",
                  "digitlab train recognize --preset recognize-best --seed 1",
                  "digitlab train recognize --model cnn_r3 --set optimizer=adam lr=5e-4 epochs=30",
                  "digitlab train --resume runs/recognize/20261123-101500-digitnet-s0",
                  "torchrun --nproc_per_node 2 -m digitlab train recognize   # data-parallel (DDP)"])
    p.add_argument("task", nargs="?", choices=config.TASKS, help="what to train")
    p.add_argument("--preset", help=f"preset name or YAML path (default per task: {config.DEFAULT_PRESETS})")
    p.add_argument("--model", help="model name (see `digitlab train --list-models`)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--activation", help="relu, leaky_relu, elu, gelu, silu, sigmoid, tanh")
    p.add_argument("--data-dir", dest="data_dir", help="folder with the IDX files (else $DIGITLAB_DATA, cache, download)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--protocol", choices=("small", "full"), help="compare only: data protocol (task_args.protocol)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. optimizer=sgd nesterov=true augment.rotate=10")
    p.add_argument("--out", type=Path, help="run directory to create (default runs/TASK/<time>-<model>-s<seed>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run from its checkpoint")
    p.add_argument("--wait-report", action="store_true", dest="wait_report",
                   help="draw the figures and report.html before returning (default: the answer is "
                        "printed first and a background process draws them, logging to RUN/report.log)")
    p.add_argument("--quiet", action="store_true",
                   help="no per-epoch lines or progress bar; print only the run folder")
    p.add_argument("--list-models", action="store_true", help="list models and exit")
    p.add_argument("--list-presets", action="store_true", help="list presets and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_models or args.list_presets:
        return _list(args)
    from digitlab.engine import loop, run as runs

    if args.resume:
        cfg = runs.load_config(args.resume)
        return _done(loop.train(cfg, run_dir=args.resume, resume=True, quiet=args.quiet,
                                draw_later=not args.wait_report), args.quiet)
    if not args.task:
        raise DigitlabError("no task given", "write `digitlab train recognize` (or denoise, compare)")
    overrides = {k: getattr(args, k) for k in ("model", "epochs", "batch_size", "lr", "seed",
                                                "activation", "data_dir", "device")
                 if getattr(args, k) is not None}
    if args.protocol:
        overrides["task_args.protocol"] = args.protocol
    overrides.update(config.parse_set(args.set))
    if args.quiet:
        overrides.setdefault("progress", False)
    cfg = config.resolve(args.task, args.preset, overrides)
    first_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 owns the folder
    if first_rank and args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise DigitlabError(f"--out {args.out} exists and is not empty",
                            "choose a new folder, or continue it with --resume")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    return _done(loop.train(cfg, run_dir=args.out, quiet=args.quiet, draw_later=not args.wait_report), args.quiet)


def _done(run_dir: Path | None, quiet: bool) -> int:
    """Even a quiet run says where it went: its folder name holds a time the caller cannot guess.
    (Under torchrun only the first process gets the folder back.)"""
    if quiet and run_dir is not None:
        print(run_dir)
    return 0


def _list(args) -> int:
    from digitlab.models import registry

    if args.list_models:
        for task in config.TASKS:
            names = registry.list_models(task)
            if names:
                print(f"{task}: {', '.join(names)}")
    if args.list_presets:
        print("presets:", ", ".join(config.list_presets()))
    return 0
