"""`digitlab bench junk RUN [RUN ...]`: how honest a recogniser is about doubt.

Per run, on MNIST test: ECE before and after its temperature, accuracy on the digits it answers,
and the fractions it answers "unsure" / "not a digit". Per junk family (data/junk.py, the
"measure" images: other seeds, MNIST test digits, Fashion-MNIST test, unseen STIX fonts): the AUROC
of the digit-vs-not score against MNIST test, and the fractions answered "not a digit" / "unsure"
/ as a digit. The score is the calibrated top-two probability mass, the quantity verdict.read
thresholds for "not a digit"; the AUROC of the top probability is reported beside it.

A run without a stored calibration (trained before calibrate.py) is calibrated here on its
validation split, the same way training does, and the record says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from digitlab.bench.common import save_record, summary

if TYPE_CHECKING:
    import torch

# torch and the task modules are imported where used, so registering this bench keeps `digitlab --help` quick.

MEASURE_SEED = 0  # measure images come from the "measure" stream: never the same as training's
HEADLINE = ("test_ece_before", "test_ece_after", "test_not_a_digit", "test_unsure", "accepted_acc")


def register(sub) -> None:
    p = sub.add_parser("junk", help="calibration (ECE) and 'not a digit' AUROC of trained recognition runs",
                       description="Calibration (ECE) and 'not a digit' AUROC of trained recognition runs.",
                       epilog="example: digitlab bench junk runs/recognize/<run-s0> runs/recognize/<run-s1>")
    p.add_argument("runs", nargs="+", type=Path, help="recognition run directories (e.g. one per seed)")
    p.add_argument("--per-family", type=int, default=2000, help="junk images per family (default 2000)")
    p.add_argument("--data-dir", type=Path, help="folder with the MNIST IDX files")
    p.add_argument("--name", default="junk", help="record name: benchmarks/NAME.json")
    p.add_argument("--out", type=Path, help="write the record here instead")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from digitlab.errors import DigitlabError

    if args.per_family < 10:
        raise DigitlabError(f"--per-family {args.per_family} is too small for an AUROC", "use e.g. --per-family 2000")
    sets = measure_sets(args.per_family, args.data_dir)
    results = {str(r): evaluate_run(r, sets, args.data_dir) for r in args.runs}
    for name, r in results.items():
        print(line(name, r))
    record = {"runs": results, "per_family": {f: len(x) for f, x in sets.items()},
              "score": "calibrated top-two probability mass (verdict's not-a-digit rule)",
              "summary": summarise(list(results.values()))}
    path = save_record(args.name, record, args.out)
    print(f"saved {path}")
    return 0


def measure_sets(n: int, data_dir=None) -> dict[str, "torch.Tensor"]:
    """{family: uint8 (n',28,28)}: the measuring images, the same for every run measured."""
    from digitlab.data import junk, mnist

    test_digits = mnist.load_split("test", "mnist", data_dir)[0]
    fashion = mnist.load_split("test", "fashion-mnist")[0]
    return {f: junk.make(f, n, MEASURE_SEED, "measure", digits=test_digits, fashion=fashion) for f in junk.FAMILIES}


def logits_of(model, images: "torch.Tensor", batch: int = 1000) -> "torch.Tensor":
    import torch

    from digitlab.tasks.base import to_float

    with torch.inference_mode():
        return torch.cat([model(to_float(images[i:i + batch])).float() for i in range(0, len(images), batch)])


def evaluate_run(run: Path, sets: dict[str, "torch.Tensor"], data_dir=None) -> dict:
    import torch

    from digitlab import calibrate
    from digitlab.engine import run as runs
    from digitlab.tasks.recognize import load_splits

    model, meta = runs.load_model(run)
    cfg = runs.load_config(run)
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    splits = load_splits(cfg, torch.device("cpu"))
    cal, fitted_here = meta.get("calibration"), False
    if not cal:
        cal, fitted_here = calibrate.fit(logits_of(model, splits["val"][0]), splits["val"][1]), True
    test_x, test_y = splits["test"]
    logits = logits_of(model, test_x)
    probs = (logits / cal["temperature"]).softmax(1)
    rates = calibrate.abstain_rates(probs, cal)
    accepted, right = rates["accepted"], probs.argmax(1) == test_y
    out = {"calibration": {k: v for k, v in cal.items() if k != "validation"}, "calibrated_by_bench": fitted_here,
           "task_args": cfg.task_args, "test_acc": float(right.double().mean()),
           "test_ece_before": calibrate.ece(logits.softmax(1), test_y), "test_ece_after": calibrate.ece(probs, test_y),
           "test_not_a_digit": rates["not_a_digit"], "test_unsure": rates["unsure"],
           "accepted_acc": float(right[accepted].double().mean()),
           "errors_flagged": float((~accepted & ~right).sum() / (~right).sum().clamp(min=1)),
           "families": {}}
    top, mass = calibrate.top_two(probs)
    for family, images in sets.items():
        out["families"][family] = family_scores(model, images, cal, top, mass)
    return out


def family_scores(model, images: "torch.Tensor", cal: dict, digit_top: "torch.Tensor",
                  digit_mass: "torch.Tensor") -> dict:
    from digitlab import calibrate

    probs = (logits_of(model, images) / cal["temperature"]).softmax(1)
    top, mass = calibrate.top_two(probs)
    rates = calibrate.abstain_rates(probs, cal)
    return {"n": len(images), "auroc": calibrate.auroc(digit_mass, mass), "auroc_top": calibrate.auroc(digit_top, top),
            "not_a_digit": rates["not_a_digit"], "unsure": rates["unsure"],
            "answered": float(rates["accepted"].double().mean())}


def summarise(results: list[dict]) -> dict:
    """mean/std/min/max over runs of the headline figures and of each family's AUROC and reject rate."""
    out = {k: summary([r[k] for r in results]) for k in HEADLINE}
    for family in results[0]["families"]:
        for k in ("auroc", "not_a_digit", "answered"):
            out[f"{family}_{k}"] = summary([r["families"][family][k] for r in results])
    return out


def line(name: str, r: dict) -> str:
    fams = "  ".join(f"{f} AUROC {v['auroc']:.4f} rejected {100 * v['not_a_digit']:.1f}%"
                     for f, v in r["families"].items())
    return (f"{name}: test acc {100 * r['test_acc']:.2f}%, ECE {100 * r['test_ece_before']:.2f}% -> "
            f"{100 * r['test_ece_after']:.2f}% (T={r['calibration']['temperature']:.3f}), not a digit "
            f"{100 * r['test_not_a_digit']:.2f}%, unsure {100 * r['test_unsure']:.2f}%, accepted acc "
            f"{100 * r['accepted_acc']:.2f}%\n  {fams}")
