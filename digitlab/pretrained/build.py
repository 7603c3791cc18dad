"""Packing a trained run as a shipped model, and the slice figures that check it.

`python -m digitlab.pretrained.build RUN [RUN ...]` (called by scripts/build_pretrained.sh) copies each
run's model into digitlab/pretrained/<task>/, writes its MODEL_CARD.md, and records its SHA-256 and
its figures on a fixed slice of MNIST test in benchmarks/pretrained-<task>.json. The slice is small
so tests/test_pretrained.py can remeasure it in seconds; the full test figures come from the run.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import torch

from digitlab import io, runfolder
from digitlab.errors import DigitlabError
from digitlab.pretrained import ROOT

SLICE = 1000  # the first SLICE MNIST test images
FILES = ("model.safetensors", "model.json", "config.json")
ONNX_TASKS = ("recognize",)  # the tasks whose shipped model also comes as model.onnx
KEEP_METRICS = ("test_acc", "test_loss", "test_ece", "test_psnr", "test_ssim", "test_kind_acc", "test_score",
                "test_auc", "test_eer", "test_oneshot_acc", "val_acc", "params", "flops_per_image",
                "epochs_run", "best_epoch", "train_seconds", "wall_seconds", "threads", "device", "torch")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_slice(data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (SLICE,1,28,28) in [0,1], labels (SLICE,)): the first SLICE MNIST test images."""
    from digitlab.data import mnist

    images, labels = mnist.load_split("test", "mnist", data_dir)
    return images[:SLICE].unsqueeze(1).float().div(255.0), labels[:SLICE]


@torch.inference_mode()
def measure(folder: Path, data_dir=None) -> dict:
    """A shipped (or any) model's figures on the test slice; deterministic on the CPU."""
    model, meta = runfolder.load_model(folder)
    images, labels = test_slice(data_dir)
    return {"recognize": _recognize, "denoise": _denoise, "compare": _compare}[meta["task"]](model, meta, images, labels)


def _recognize(model, meta, images, labels) -> dict:
    from digitlab import verdict

    readings = verdict.read(model(images).numpy(), verdict.Calibration.from_meta(meta))
    right = [r.digit == int(y) for r, y in zip(readings, labels)]
    kept = [ok for ok, r in zip(right, readings) if r.abstain is None]
    return {"images": len(labels), "acc": sum(right) / len(right),
            "abstained": 1 - len(kept) / len(right), "acc_answered": sum(kept) / max(len(kept), 1)}


def _denoise(model, meta, images, labels) -> dict:
    from digitlab.tasks import denoise_eval as ev

    noisy, kinds, _ = ev.noisy_set(images, ev.FROZEN_SEED)
    clean, kind_probs = ev.run_model(model, noisy)
    values = ev.per_image(clean, images)
    out = {"images": len(images), "psnr": values["psnr"].mean().item(), "ssim": values["ssim"].mean().item()}
    if ev.has_kind_head(model):
        out["kind_acc"] = (kind_probs.argmax(1) == kinds).float().mean().item()
    return out


def _compare(model, meta, images, labels) -> dict:
    from digitlab.data.pairs import fixed_pairs
    from digitlab.tasks.compare import pair_metrics

    a, b, same = fixed_pairs(labels, 2 * SLICE, seed=0)
    emb = model.embed(images)
    probs = torch.sigmoid(model.head_logit(emb[a], emb[b]).reshape(-1))
    return {"images": len(labels), "pairs": len(same), **pair_metrics(probs, same)}


def pack(run: Path, preset: str | list[str], data_dir=None) -> Path:
    """Copy RUN's model into digitlab/pretrained/<task>/ with its card; record it under benchmarks/.
    `preset`: the run's preset, or an ensemble's member presets in order (one for all, or one each)."""
    from digitlab.bench.common import save_record

    meta = runfolder.read_model_meta(run)
    presets, seeds = [preset] if isinstance(preset, str) else list(preset), meta.get("member_seeds")
    if len(presets) > 1 and len(presets) != len(seeds or ()):  # checked before anything is copied
        raise DigitlabError(f"{len(presets)} presets for {len(seeds or ())} ensemble members",
                            "give one --preset for all members, or one per member in their order")
    task, dest = meta["task"], ROOT / meta["task"]
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(run / name, dest / name)
    metrics = {k: v for k, v in runfolder.read_metrics(run).items() if k in KEEP_METRICS}
    io.write_json(dest / "metrics.json", metrics)
    config = runfolder.read_json_file(run / "config.json", "config")
    record = {"task": task, "preset": presets[0] if len(presets) == 1 else presets, "source_run": run.name,
              "model": meta["model"], "params": meta.get("params"),
              **({"member_seeds": seeds} if seeds else {}),
              "sha256": sha256(dest / "model.safetensors"), "bytes": (dest / "model.safetensors").stat().st_size,
              **_export_onnx(dest, task),
              "slice": {"split": "test", "first": SLICE, **measure(dest, data_dir)},
              "test": metrics, "config": config}
    (dest / "MODEL_CARD.md").write_text(model_card(record), encoding="utf-8")
    save_record(f"pretrained-{task}", record)
    return dest


def _export_onnx(dest: Path, task: str) -> dict:
    """The recogniser also ships as model.onnx: `digitlab predict` then answers without importing
    torch (digitlab.lite). Exported from the packed weights and checked against PyTorch."""
    if task not in ONNX_TASKS:
        return {}
    from digitlab.export import export_onnx

    path = export_onnx(dest, dest / "model.onnx", quiet=True)
    return {"onnx_sha256": sha256(path), "onnx_bytes": path.stat().st_size}


def model_card(record: dict) -> str:
    cfg, test = record["config"], record["test"]
    # Seconds are left out of the card: they depend on what else the machine was doing (metrics.json has them).
    figures = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in test.items() if not k.endswith("_seconds"))
    slice_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in record["slice"].items() if k not in ("split", "first"))
    return f"""# Shipped {record['task']} model: `{record['model']}`

{CARD_TEXT[record['task']]['what']}

- **Data**: {CARD_TEXT[record['task']]['data']}
- **Recipe**: {_recipe(record)}; the full resolved settings are in `config.json`.
- **Rebuilt by**: `bash scripts/build_pretrained.sh` (trains every shipped model, then packs it with
  `python -m digitlab.pretrained.build RUN`); figures recorded in `benchmarks/pretrained-{record['task']}.json`.
- **Weights**: `model.safetensors`, {record['params']:,} parameters, {record['bytes']:,} bytes,
  SHA-256 `{record['sha256']}`.{_onnx_line(record)}

## Test figures (MNIST test split, measured once at the end of training)

| metric | value |
|---|---|
{figures}

## Check figures (first {record['slice']['first']:,} MNIST test images; tests/test_pretrained.py remeasures them)

| metric | value |
|---|---|
{slice_rows}

## Known limits

{CARD_TEXT[record['task']]['limits']}
"""


def _recipe(record: dict) -> str:
    cfg, seeds = record["config"], record.get("member_seeds")
    training = (f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']}\n  lr {cfg['lr']}, "
                f"schedule {cfg['schedule']}")
    if not seeds:
        return f"preset `{record['preset']}` ({training}, seed {cfg['seed']})"
    averaged = "one run per seed, their probabilities averaged by `digitlab ensemble`"
    if isinstance(record["preset"], str):
        return f"preset `{record['preset']}` ({training}, seeds {', '.join(map(str, seeds))}: {averaged})"
    groups: dict[str, list[int]] = {}
    for preset, seed in zip(record["preset"], seeds):
        groups.setdefault(preset, []).append(seed)
    members = " + ".join(f"`{p}` seed{'s' * (len(s) > 1)} {', '.join(map(str, s))}" for p, s in groups.items())
    return (f"members {members} ({training}: each member's settings are its preset's), one run per member, "
            f"their probabilities averaged by `digitlab ensemble`")


def _onnx_line(record: dict) -> str:
    if "onnx_sha256" not in record:
        return ""
    return (f"\n- **ONNX**: `model.onnx` (the same weights; `digitlab predict` runs it without torch), "
            f"{record['onnx_bytes']:,} bytes,\n  SHA-256 `{record['onnx_sha256']}`.")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


CARD_TEXT = {
    "recognize": {
        "what": "Reads one handwritten digit (28x28, MNIST-prepared) and says which, with calibrated probabilities "
                "and an abstain answer (\"not sure: 1 or 7?\", \"not a digit\").",
        "data": "MNIST's 55,000 training images (validation: the seeded 5,000 held out; test: measured once), "
                "with the augmentation of the preset; generated \"not a digit\" images where the preset asks for them. "
                "No other handwriting collection was used.",
        "limits": "One digit per image, MNIST-like after digitlab's preprocessing (crop to the ink, fit 20x20, centre "
                  "by mass). Several digits, letters or drawings are not read: at best the answer abstains. Accuracy on "
                  "handwriting unlike MNIST's writers is lower than on MNIST test; see `digitlab bench shift`.",
    },
    "denoise": {
        "what": "Removes noise from a 28x28 digit image and names the noise kind (gaussian, uniform, salt_pepper, "
                "random_impulse, poisson, speckle) with a probability.",
        "data": "MNIST's training images, noised on the fly with the six kinds at random strengths; measured on the "
                "frozen 10,000-image noisy test set (digitlab bench denoise).",
        "limits": "Trained on MNIST digits with synthetic noise only: real scanner or camera noise, and images that are "
                  "not digits, are outside what it learned. Works at 28x28.",
    },
    "compare": {
        "what": "Says whether two handwritten digits are the same digit (a probability), from a siamese network's "
                "embeddings of both images.",
        "data": "R5's small protocol: 6,000 MNIST training images (seeded subset) paired on the fly; test pairs from a "
                "fixed subset of MNIST test.",
        "limits": "Compares digits 0-9 written like MNIST's; two images that are not digits get an arbitrary score. "
                  "Trained on 6,000 images only (the small protocol): `digitlab train compare --preset compare-full` is "
                  "stronger but takes over an hour on 2 CPU cores.",
    },
}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m digitlab.pretrained.build", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run folder")
    p.add_argument("--preset", required=True, nargs="+",
                   help="the preset the run was trained with, or an ensemble's member presets in order (for the card)")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (else the usual search)")
    args = p.parse_args(argv)
    try:
        print(f"packed {args.run} -> {pack(args.run, args.preset, args.data_dir)}")
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
