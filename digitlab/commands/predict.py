"""`digitlab predict [RUN] IMAGE...`: recognise digits in real image files."""

from __future__ import annotations

import json
from pathlib import Path

from digitlab.commands.common import add_parser, split_run


def register(sub) -> None:
    p = add_parser(sub, "predict", help="recognise the digit in image files (PNG, JPEG, ...)",
                   description="Applies MNIST's preprocessing (grayscale, invert a light background, crop to the "
                               "ink, fit 20x20, centre by mass in 28x28), then the model: the shipped one, or the "
                               "run folder given first. Unsure answers say so (\"not sure: 1 or 7?\", \"not a digit\").",
                   examples=["digitlab predict my_digit.png", "digitlab predict runs/recognize/<run> a.png b.jpg --json"],
                   usage="%(prog)s [-h] [--json] [--save-input PNG] [RUN] IMAGE [IMAGE ...]")
    p.add_argument("paths", type=Path, nargs="+", metavar="[RUN] IMAGE",
                   help="optionally a recognition run folder (default: the shipped model), then image files")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--save-input", type=Path, metavar="PNG",
                   help="also save the 28x28 images the model saw (a grid) to this PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import lite, pretrained

    run_dir, images = split_run(args.paths)
    folder = pretrained.resolve("recognize", run_dir)
    if lite.available(folder):  # no torch to import: answers in about a third of the time
        inputs, readings = lite.LiteRecognizer(folder).read(images)
    else:
        inputs, readings = _read_with_torch(folder, images)
    for path, r in zip(images, readings):
        if args.json:
            print(json.dumps({"image": str(path), **r.to_dict()}))
        else:
            bars = "  ".join(f"{d}:{v:.3f}" for d, v in enumerate(r.probabilities))
            print(f"{path}: {r}\n  {bars}")
    if args.save_input:
        from digitlab.report.figures import plot_image_grid

        titles = [f"{path.name}: {r.message}" for path, r in zip(images, readings)]
        plot_image_grid(inputs, args.save_input, titles, suptitle="What the model saw (28x28)")
    return 0


def _read_with_torch(folder: Path, images: list[Path]):
    from digitlab import api

    recognizer = api.Recognizer(folder)
    inputs, _ = recognizer.prepare(images)  # (N,28,28); errors name the file
    return inputs.numpy(), api.verdict.read(recognizer.logits(inputs), recognizer.calibration)
