"""The models digitlab ships, one run folder per task (digitlab/pretrained/<task>/), so that
`digitlab predict IMAGE`, `digitlab serve` and `digitlab.load("recognize")` work without training.

Each folder holds model.safetensors, model.json, config.json, metrics.json and MODEL_CARD.md.
They are rebuilt by `bash scripts/build_pretrained.sh` (see digitlab.pretrained.build), which also
records their SHA-256 and their figures on a slice of MNIST test in benchmarks/pretrained-<task>.json;
tests/test_pretrained.py checks both.
"""

from __future__ import annotations

from pathlib import Path

from digitlab.errors import DigitlabError

ROOT = Path(__file__).parent
TASKS = ("recognize", "denoise", "compare")


def path(task: str) -> Path:
    """The shipped model folder of a task."""
    if task not in TASKS:
        raise DigitlabError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    folder = ROOT / task
    if not (folder / "model.safetensors").is_file():
        raise DigitlabError(f"this install has no shipped {task} model ({folder} is missing)",
                            f"pass a run folder made by `digitlab train {task}`, or reinstall digitlab")
    return folder


def resolve(task: str, run: str | Path | None = None) -> Path:
    """The run folder to use: the one given, else the shipped model of `task`."""
    return Path(run) if run is not None else path(task)


def is_shipped(folder: str | Path) -> bool:
    return Path(folder).resolve().parent == ROOT.resolve()
