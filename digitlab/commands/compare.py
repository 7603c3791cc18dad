"""`digitlab compare [RUN] A B`: probability that two image files show the same digit."""

from __future__ import annotations

import json
from pathlib import Path

from digitlab.commands.common import add_parser, split_run


def register(sub) -> None:
    p = add_parser(sub, "compare", help="probability that two images show the same digit",
                   description="Both files get MNIST's preprocessing (see `digitlab predict`), then a siamese "
                               "network scores the pair: the shipped one, or the run folder given first.",
                   examples=["digitlab compare a.png b.png", "digitlab compare runs/compare/<run> a.png b.png --json"],
                   # nargs="+" would print "[RUN] A B [[RUN] A B ...]", as if it took several pairs
                   usage="%(prog)s [-h] [--threshold THRESHOLD] [--json] [RUN] A B")
    p.add_argument("paths", type=Path, nargs="+", metavar="[RUN] A B",
                   help="optionally a comparison run folder (default: the shipped model), then two image files")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import api, pretrained
    from digitlab.errors import DigitlabError

    run_dir, images = split_run(args.paths)
    if len(images) != 2:
        raise DigitlabError(f"compare takes two image files, got {len(images)}", "name exactly two: A B")
    if not 0 < args.threshold < 1:
        raise DigitlabError(f"--threshold {args.threshold} must lie strictly between 0 and 1", "e.g. --threshold 0.5")
    a, b = images
    result = api.Comparer(pretrained.resolve("compare", run_dir)).same(a, b, args.threshold)
    if args.json:
        print(json.dumps({"a": str(a), "b": str(b), "same_probability": round(result.probability, 6),
                          "same": result.same, "threshold": args.threshold, "cosine": round(result.cosine, 6)}))
    else:
        print(f"{a} vs {b}: {result}, embedding cosine {result.cosine:.3f}")
    return 0
