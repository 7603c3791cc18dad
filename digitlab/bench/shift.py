"""Robustness protocol: recognition accuracy and calibration under shifts that mimic real handwriting.

The suite is built from MNIST test images (or the validation split, which is what one tunes on):
every shift of `digitlab.data.shift` is applied, then each shifted image goes through the product's
own preprocessing `to_mnist`, like a user's image does. Building it costs tens of milliseconds per
image per shift (skeletons, morphology, preprocessing), so it is cached per (split, limit, seed,
shift version) as compressed uint8 arrays under the digitlab cache. Scores: accuracy per shift,
the clean accuracy (plain MNIST), mean and worst over the shifts, and the expected calibration
error (15 bins) per shift.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from digitlab.bench.common import save_record
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    import numpy as np
    import torch

# numpy, torch and the shift transforms are imported where used, so `digitlab --help` stays quick.

ECE_BINS = 15


def register(sub) -> None:
    p = sub.add_parser("shift", help="accuracy and calibration of recognition runs under real-handwriting shifts",
                       description="Accuracy and calibration of recognition runs under real-handwriting shifts.",
                       epilog="example: digitlab bench shift runs/recognize/<run> --split val --limit 2000")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="recognition run directories (several: a comparison)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="MNIST test (default) or the seeded validation split (tune on this one)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images of the split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shifts' randomness")
    p.add_argument("--shifts", nargs="+", metavar="NAME", help="only these shifts (default: all; see docs/shift.md)")
    p.add_argument("--calibrated", action="store_true",
                   help="score the calibrated probabilities of model.json's fitted temperature, not the raw softmax")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.add_argument("--name", help="record name: benchmarks/shift-<name>.json (default: the runs' names)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/shift-<name>.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.extras import require

    require("baselines", "`digitlab bench shift`")  # skeletons and morphology: scikit-image, scipy
    from digitlab import io
    from digitlab.api import Recognizer
    from digitlab.data import shift as shifts

    unknown = sorted(set(args.shifts or ()) - set(shifts.BY_NAME))
    if unknown:
        raise DigitlabError(f"unknown shift(s) {', '.join(unknown)}", f"use some of: {', '.join(shifts.BY_NAME)}")
    recognizers = [Recognizer(r) for r in args.runs]  # a bad run fails before the suite is built
    cfg = _common_split(args.runs, args.split)
    suite = build_suite(cfg, args.split, args.limit, args.seed, args.data_dir, args.shifts)
    results = [score(rec, suite, args.calibrated) for rec in recognizers]
    for run_dir, res in zip(args.runs, results):
        print(f"{run_dir}: clean {100 * res['clean']['acc']:.2f}%  shift mean {100 * res['mean_acc']:.2f}%  "
              f"worst {100 * res['worst_acc']:.2f}% ({res['worst_shift']})  mean ECE {res['mean_ece']:.4f}")
        print("  " + "  ".join(f"{k} {100 * v['acc']:.1f}" for k, v in res["shifts"].items()))
    name = args.name or "-".join(Path(r).name for r in args.runs)
    record = {"split": args.split, "limit": args.limit, "images": len(suite["clean"][1]), "seed": args.seed,
              "shift_version": shifts.VERSION, "calibrated": args.calibrated, "ece_bins": ECE_BINS,
              "preprocessing": "every shifted image goes through digitlab.data.preprocess.to_mnist",
              "shifts": {s.name: s.mimics for s in shifts.SHIFTS if s.name in suite},
              "runs": [{"run": str(r), "model": io.read_json(Path(r) / "model.json").get("model"), **res}
                       for r, res in zip(args.runs, results)]}
    path = save_record(f"shift-{name}", record, args.out)
    print(f"saved {path}")
    return 0


def _common_split(runs: list[Path], split: str):
    """The first run's config; every run must share its data set (and validation split)."""
    from digitlab.engine.run import load_config

    cfgs = [load_config(Path(r)) for r in runs]
    key = (lambda c: (c.dataset, c.val_size, c.split_seed)) if split == "val" else (lambda c: c.dataset)
    if len({key(c) for c in cfgs}) > 1:
        raise DigitlabError(f"the runs do not share one {split} split (data set, val_size, split_seed differ)",
                            "compare runs trained on the same data set and validation split")
    return cfgs[0]


def load_images(cfg, split: str, limit: int | None, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The run config's test split, or its validation split exactly as training held it out
    (same val_size and split_seed): uint8 (N,28,28), labels."""
    from digitlab.data import mnist
    from digitlab.tasks.base import split_indices

    if limit is not None and limit < 1:
        raise DigitlabError(f"--limit must be a positive number of images, got {limit}",
                            "omit --limit to use the whole split")
    data_dir = data_dir or cfg.data_dir
    if split == "val":
        x, y = mnist.load_split("train", cfg.dataset, data_dir)
        _, idx = split_indices(len(x), cfg.val_size, cfg.split_seed)
        x, y = x[idx], y[idx]
    else:
        x, y = mnist.load_split("test", cfg.dataset, data_dir)
    return x[:limit].numpy(), y[:limit].numpy()


def build_suite(cfg, split: str, limit: int | None, seed: int = 0, data_dir: str | None = None,
                names: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"clean": (uint8 images, labels), shift name: (uint8 prepared images, labels), ...} for the
    data set and split of run config `cfg`; cached per data set, split, limit, seed and version."""
    import numpy as np

    from digitlab.data import mnist, preprocess
    from digitlab.data import shift as shifts

    x, y = load_images(cfg, split, limit, data_dir)
    suite = {"clean": (x, y)}
    key = f"{cfg.dataset}-{split}" + (f"-val{cfg.val_size}-split{cfg.split_seed}" if split == "val" else "")
    cache = mnist.cache_dir() / "shift" / f"{key}-{limit or 'all'}-s{seed}-v{shifts.VERSION}-p{preprocess.VERSION}"
    for s in shifts.SHIFTS:
        if names and s.name not in names:
            continue
        path = cache / f"{s.name}.npz"
        if not path.exists():
            images, labels, _ = shifts.apply(s, x.astype(np.float32) / 255, y, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, images=np.round(images * 255).astype(np.uint8), labels=labels)
            tmp.replace(path)  # atomic: a concurrent or interrupted build never leaves half a file
        with np.load(path) as f:
            suite[s.name] = (f["images"], f["labels"])
    return suite


def logits_of(model: "torch.nn.Module", images_u8: "np.ndarray", batch: int = 1000) -> "np.ndarray":
    import torch

    model.eval()
    with torch.inference_mode():
        out = [model(torch.from_numpy(images_u8[i:i + batch]).float().div_(255)[:, None]).float()
               for i in range(0, len(images_u8), batch)]
    return torch.cat(out).numpy()


def expected_calibration_error(probs: "np.ndarray", labels: "np.ndarray", bins: int = ECE_BINS) -> float:
    """The same ECE as training's calibration report (digitlab.calibrate.ece, 15 equal-width bins)."""
    import torch

    from digitlab import calibrate

    return calibrate.ece(torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), bins)


def score(rec, suite: dict, calibrated: bool = False) -> dict:
    """Accuracy, ECE and the most common confusions for each entry of the suite."""
    import numpy as np

    from digitlab.verdict import Calibration

    cal = Calibration.from_meta(rec.meta) if calibrated else Calibration()
    per = {}
    for name, (images, labels) in suite.items():
        probs = cal.probabilities(logits_of(rec.model, images))
        preds = probs.argmax(1)
        wrong = [(int(t), int(p)) for t, p in zip(labels, preds) if t != p]
        top = sorted({w: wrong.count(w) for w in set(wrong)}.items(), key=lambda kv: -kv[1])[:3]
        per[name] = {"acc": float((preds == labels).mean()), "ece": expected_calibration_error(probs, labels),
                     "n": int(len(labels)), "top_confusions": [f"{t}->{p}: {n}" for (t, p), n in top]}
    clean = per.pop("clean")
    accs = {k: v["acc"] for k, v in per.items()}
    worst = min(accs, key=accs.get) if accs else None
    return {"clean": clean, "shifts": per, "mean_acc": float(np.mean(list(accs.values()))) if accs else None,
            "worst_acc": accs.get(worst), "worst_shift": worst,
            "mean_ece": float(np.mean([v["ece"] for v in per.values()])) if per else None,
            "temperature": cal.temperature}
