"""`digitlab bench ...`: the protocols of benchmarks.md; each prints one line and writes JSON."""

from __future__ import annotations

import importlib

BENCHES = ["train", "recognize", "inference", "denoise", "compare", "serve", "startup", "junk", "shift"]


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark protocol and save JSON under benchmarks/")
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCHES:
        try:
            module = importlib.import_module(f"digitlab.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"digitlab.bench.{name}":
                raise
            continue
        module.register(bench_sub)
