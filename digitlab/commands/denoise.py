"""`digitlab denoise RUN noisy.png -o clean.png`: denoise real image files with a trained run."""

from __future__ import annotations

import json
from pathlib import Path

from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = sub.add_parser("denoise", help="denoise image files with a trained denoise run; name the noise kind",
                       description="Applies the same MNIST preprocessing as `digitlab predict` (grayscale, "
                                   "invert a light background, crop, fit 20x20, centre in 28x28), then the "
                                   "model; writes the 28x28 denoised image and prints the identified noise kind.",
                       epilog="examples:\n  digitlab denoise runs/denoise/<run> noisy.png -o clean.png\n"
                              "  digitlab denoise runs/denoise/<run> a.png b.png --out-dir cleaned/ --json")
    p.add_argument("run", type=Path, help="a denoise run directory")
    p.add_argument("images", type=Path, nargs="+", help="noisy image files (PNG, JPEG, ...)")
    p.add_argument("-o", "--output", type=Path, help="output PNG (one input image)")
    p.add_argument("--out-dir", type=Path, help="folder for <name>.clean.png files (several inputs)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the saved PNG by this integer factor")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch  # here, not at the top: registering the command must not import torch

    from digitlab.data.noise import NOISE_KINDS
    from digitlab.data.preprocess import prepare
    from digitlab.engine import run as runs
    from digitlab.tasks import denoise_eval as ev

    if args.output and len(args.images) > 1:
        raise DigitlabError("-o names one output file but several images were given", "use --out-dir DIR instead")
    if args.scale < 1:
        raise DigitlabError(f"--scale {args.scale} must be a positive integer", "use --scale 1 (28x28) or more")
    model, meta = runs.load_model(args.run)
    if meta.get("task") != "denoise":
        raise DigitlabError(f"{args.run} is a {meta.get('task')!r} run, not a denoise run",
                            "pass a run made by `digitlab train denoise`")
    inputs = torch.stack([prepare(path) for path in args.images]).unsqueeze(1)  # (N,1,28,28)
    clean, probs = ev.run_model(model, inputs)
    has_kind = ev.has_kind_head(model)
    for i, path in enumerate(args.images):
        out = args.output or (args.out_dir or path.parent) / f"{path.stem}.clean.png"
        save_png(clean[i, 0], out, args.scale)
        k = int(probs[i].argmax())
        if args.json:
            rec = {"image": str(path), "output": str(out)}
            if has_kind:
                rec.update(kind=NOISE_KINDS[k], probability=round(float(probs[i, k]), 6),
                           probabilities={n: round(float(v), 6) for n, v in zip(NOISE_KINDS, probs[i])})
            print(json.dumps(rec))
        elif has_kind:
            print(f"{path}: noise kind {NOISE_KINDS[k]} (p={float(probs[i, k]):.3f}) -> {out}")
        else:
            print(f"{path}: denoised (this model names no noise kind) -> {out}")
    return 0


def save_png(image: torch.Tensor, path: Path, scale: int = 1) -> None:
    """(28,28) float in [0,1] -> 8-bit grayscale PNG, white ink on black like MNIST; written atomically."""
    import numpy as np
    from PIL import Image

    from digitlab import io

    arr = (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        arr = np.kron(arr, np.ones((scale, scale), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG")
