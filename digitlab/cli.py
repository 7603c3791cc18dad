"""The `digitlab` command. Thin: each command group lives in digitlab/commands/<name>.py
and exposes `register(subparsers)`, which adds its parser with `set_defaults(func=...)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from digitlab import __version__
from digitlab.errors import DigitlabError

# Order is the order shown in `digitlab --help`.
COMMAND_MODULES = [
    "data", "train", "eval", "predict", "denoise", "compare",
    "ensemble", "study", "tune", "report", "serve", "export", "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitlab",
        description="Train, evaluate, study and serve models for handwritten digits.",
    )
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"digitlab.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, not at interpreter exit
    except BrokenPipeError:
        # The reader stopped early (`digitlab predict *.png | head -1`): stop quietly, as `ls | head` does.
        # The rest of stdout goes to devnull so that Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
