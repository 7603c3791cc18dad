"""What several commands share: a parser whose --help ends with examples, and [RUN] FILE... inputs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub, name: str, help: str, description: str, examples: list[str],
               usage: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; `examples` are listed under --help as written, one a line. `usage`
    replaces argparse's generated line where it cannot say what the positionals take."""
    return sub.add_parser(name, help=help, description=description, usage=usage,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))


def split_run(paths: list[Path]) -> tuple[Path | None, list[Path]]:
    """A leading directory is the run folder; the rest are inputs."""
    from digitlab.errors import DigitlabError

    run, rest = (paths[0], paths[1:]) if paths[0].is_dir() else (None, paths)
    if not rest:
        raise DigitlabError(f"no image files given: {paths[0]} is a folder, read as the run folder",
                            "name image files after it, or only image files to use the shipped model")
    return run, rest
