"""`digitlab denoise [RUN] noisy.png -o clean.png`: denoise image files and name the noise kind."""

from __future__ import annotations

import json
from pathlib import Path

from digitlab.commands.common import add_parser, split_run
from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = add_parser(sub, "denoise", help="denoise image files and name the noise kind",
                   description="Reads each already noisy image as a whole (a light background is inverted, the "
                               "image area-resized to 28x28; no cropping, as noise would move the ink box), then "
                               "the model: the shipped one, or the run folder given first. Writes the 28x28 "
                               "denoised image and prints the identified noise kind.",
                   examples=["digitlab denoise noisy.png -o clean.png",
                             "digitlab denoise runs/denoise/<run> a.png b.png --out-dir cleaned/ --json"],
                   usage="%(prog)s [-h] [-o OUTPUT] [--out-dir OUT_DIR] [--scale SCALE] [--json] [RUN] IMAGE [IMAGE ...]")
    p.add_argument("paths", type=Path, nargs="+", metavar="[RUN] IMAGE",
                   help="optionally a denoise run folder (default: the shipped model), then noisy image files")
    p.add_argument("-o", "--output", type=Path, help="output PNG (one input image)")
    p.add_argument("--out-dir", type=Path, help="folder for <name>.clean.png files (several inputs)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the saved PNG by this whole factor, 1 to 64")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import api, pretrained

    run_dir, images = split_run(args.paths)
    if args.output and len(images) > 1:
        raise DigitlabError("-o names one output file but several images were given", "use --out-dir DIR instead")
    outputs = [args.output or (args.out_dir or path.parent) / f"{path.stem}.clean.png" for path in images]
    for out in outputs:
        api.check_png_output(out, args.scale)  # a bad -o or --scale fails before the model runs
    results = api.Denoiser(pretrained.resolve("denoise", run_dir)).denoise(images)
    for path, out, r in zip(images, outputs, results):
        r.save(out, args.scale)
        if args.json:
            rec = {"image": str(path), "output": str(out)}
            if r.kind:
                rec.update(kind=r.kind, probability=round(r.probability, 6),
                           probabilities={n: round(v, 6) for n, v in r.probabilities.items()})
            print(json.dumps(rec))
        elif r.kind:
            print(f"{path}: noise kind {r.kind} (p={r.probability:.3f}) -> {out}")
        else:
            print(f"{path}: denoised (this model names no noise kind) -> {out}")
    return 0
