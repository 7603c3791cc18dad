"""`digitlab bench ...`: the benchmark protocols of digitlab/bench/; each prints one line and writes JSON."""

from __future__ import annotations

import argparse
import importlib
from functools import partial

BENCHES = ["train", "recognize", "inference", "denoise", "compare", "serve", "startup", "junk", "shift"]


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark protocol and save JSON under benchmarks/")
    # examples under --help one a line, as the other commands show them (commands/common.add_parser)
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True, parser_class=partial(
        argparse.ArgumentParser, formatter_class=argparse.RawDescriptionHelpFormatter))
    for name in BENCHES:
        importlib.import_module(f"digitlab.bench.{name}").register(bench_sub)
