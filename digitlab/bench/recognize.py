"""Recognition protocol: whole `digitlab train` command timed per seed, test
accuracy mean/std/best over seeds. Inference speed: digitlab.bench.inference."""

from __future__ import annotations

from digitlab.bench import train


def register(sub) -> None:
    p = sub.add_parser("recognize", help="train a preset over seeds; time and accuracy",
                       description="Train a preset over seeds; time and accuracy.",
                       epilog="example: digitlab bench recognize --preset recognize-fast --seeds 0 1 2")
    train.add_arguments(p, "recognize-fast")
    p.set_defaults(func=train.run, task="recognize")  # `bench train recognize` under its first name
