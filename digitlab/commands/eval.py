"""`digitlab eval RUN`: re-measure a saved run on its test (or validation) split."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="re-measure a saved run",
                       description="Re-measure a saved run on its test (or validation) split, next to the "
                                   "metrics it stored when training finished.",
                       epilog="example: digitlab eval runs/recognize/<run> --split test")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder made by `digitlab train`")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import api
    from digitlab.runfolder import read_metrics

    stored = read_metrics(args.run)  # a damaged metrics.json stops before measuring
    result = api.evaluate(args.run, args.split, args.data_dir)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        if isinstance(value, float):
            was = stored.get(key)
            note = f"   (saved: {was:.6g})" if isinstance(was, float) else ""
            print(f"{key:>24} {value:.6g}{note}")
    return 0
