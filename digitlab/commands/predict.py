"""`digitlab predict RUN IMAGE...`: recognise digits in real image files."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("predict", help="recognise the digit in image files (PNG, JPEG, ...)",
                       description="Applies MNIST's preprocessing (grayscale, invert a light background, "
                                   "crop to the ink, fit 20x20, centre by mass in 28x28), then the model.",
                       epilog="example: digitlab predict runs/recognize/<run> my_digit.png --json")
    p.add_argument("run", type=Path, help="a recognition run directory")
    p.add_argument("images", type=Path, nargs="+", help="image files, any size, dark-on-light or light-on-dark")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--save-input", type=Path, metavar="PNG",
                   help="also save the 28x28 images the model saw (a grid) to this PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch  # here, not at the top: registering the command must not import torch

    from digitlab.data.preprocess import prepare
    from digitlab.inference import Recognizer

    recognizer = Recognizer.from_run(args.run)
    inputs = torch.stack([prepare(path) for path in args.images])  # (N,28,28); errors name the file
    probs = recognizer.probabilities(inputs)
    for path, p in zip(args.images, probs):
        digit = int(p.argmax())
        if args.json:
            print(json.dumps({"image": str(path), "digit": digit, "probability": round(float(p[digit]), 6),
                              "probabilities": [round(float(v), 6) for v in p]}))
        else:
            bars = "  ".join(f"{d}:{float(v):.3f}" for d, v in enumerate(p))
            print(f"{path}: {digit}  (p={float(p[digit]):.3f})\n  {bars}")
    if args.save_input:
        from digitlab.report.figures import plot_image_grid

        titles = [f"{path.name}: {int(p.argmax())}" for path, p in zip(args.images, probs)]
        plot_image_grid(inputs, args.save_input, titles, suptitle="What the model saw (28x28)")
    return 0
