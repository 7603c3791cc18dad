"""`digitlab eval RUN`: re-measure a saved run on its test (or validation) split."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="re-measure a saved run",
                       epilog="example: digitlab eval runs/recognize/<run> --split test")
    p.add_argument("run", type=Path)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import io
    from digitlab.config import apply_overrides
    from digitlab.engine import device as devices
    from digitlab.engine import run as runs
    from digitlab.tasks.base import get_task

    cfg = runs.load_config(args.run)
    if args.data_dir:
        cfg = apply_overrides(cfg, {"data_dir": args.data_dir})
    dev = devices.pick_device(cfg.device)
    model, _ = runs.load_model(args.run, dev)
    task = get_task(cfg.task)
    task.setup(cfg, dev)
    measured = task.evaluate(model, args.split)
    stored = runs.read_metrics(args.run)
    result = {f"{args.split}_{k}": v for k, v in measured.items()}
    io.write_json(args.run / f"eval-{args.split}.json", result)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        if isinstance(value, float):
            was = stored.get(key)
            note = f"   (saved: {was:.6g})" if isinstance(was, float) else ""
            print(f"{key:>24} {value:.6g}{note}")
    return 0
