"""Recognition protocol (benchmarks.md): whole `digitlab train` command timed per seed, test
accuracy mean/std/best over seeds; and inference speed of a trained model."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from digitlab import io
from digitlab.bench.common import save_record, summary


def register(sub) -> None:
    p = sub.add_parser("recognize", help="train a preset over seeds; time and accuracy",
                       epilog="example: digitlab bench recognize --preset recognize-fast --seeds 0 1 2")
    p.add_argument("--preset", default="recognize-fast")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", type=float, default=None, help="test accuracy target, e.g. 0.99")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/recognize-<preset>.json)")
    p.add_argument("--keep-runs", type=Path, help="keep the run directories here")
    p.set_defaults(func=run_train_bench)

    q = sub.add_parser("inference", help="images/s at batch 1024 and latency at batch 1",
                       epilog="example: digitlab bench inference runs/recognize/<run>")
    q.add_argument("run", type=Path)
    q.add_argument("--runtime", choices=("torch", "onnx", "both"), default="torch")
    q.add_argument("--out", type=Path)
    q.set_defaults(func=run_inference_bench)


def run_train_bench(args) -> int:
    root = args.keep_runs or Path(tempfile.mkdtemp(prefix="digitlab-bench-"))
    trials = []
    for seed in args.seeds:
        out = root / f"{args.preset}-s{seed}"
        cmd = [sys.executable, "-m", "digitlab", "train", "recognize", "--preset", args.preset,
               "--seed", str(seed), "--out", str(out), "--quiet"]
        if args.set:
            cmd += ["--set", *args.set]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0  # whole command, interpreter start included
        metrics = io.read_json(out / "metrics.json")
        trials.append({"seed": seed, "command_seconds": round(seconds, 2), "test_acc": metrics["test_acc"],
                       "val_acc": metrics["val_acc"], "train_seconds": metrics["train_seconds"],
                       "epochs_run": metrics["epochs_run"], "run": str(out)})
        print(f"seed {seed}: test acc {100 * metrics['test_acc']:.2f}%  command {seconds:.1f} s "
              f"(training {metrics['train_seconds']:.1f} s, {torch.get_num_threads()} threads)", flush=True)
    acc = summary([t["test_acc"] for t in trials])
    secs = summary([t["command_seconds"] for t in trials])
    record = {"preset": args.preset, "overrides": args.set, "config": io.read_json(Path(trials[0]["run"]) / "config.json"),
              "trials": trials, "test_acc": acc, "command_seconds": secs}
    if args.target is not None:
        record["target"] = args.target
        record["target_met"] = acc["mean"] >= args.target
    path = save_record(f"recognize-{args.preset}", record, args.out)
    print(f"{args.preset}: test accuracy {100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f} "
          f"(best {100 * acc['max']:.2f}%, n={acc['n']}); command {secs['mean']:.1f} s mean, "
          f"{secs['min']:.1f} s min; {torch.get_num_threads()} threads -> {path}")
    return 0


def _time_calls(fn, x, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(fn, batch_1: torch.Tensor, batch_big: torch.Tensor) -> dict:
    """p50/p99 latency at batch 1 and throughput at a big batch, after warm-up."""
    _time_calls(fn, batch_1, 20)
    _time_calls(fn, batch_big, 2)
    lat = _time_calls(fn, batch_1, 300)
    big = _time_calls(fn, batch_big, 10)
    return {"batch1_p50_ms": 1000 * _percentile(lat, 0.5), "batch1_p99_ms": 1000 * _percentile(lat, 0.99),
            f"batch{len(batch_big)}_images_per_s": len(batch_big) / _percentile(big, 0.5)}


def run_inference_bench(args) -> int:
    from digitlab.inference import Recognizer

    rec = Recognizer.from_run(args.run)
    g = torch.Generator().manual_seed(0)
    one, big = torch.rand(1, 1, 28, 28, generator=g), torch.rand(1024, 1, 28, 28, generator=g)
    results = {}
    if args.runtime in ("torch", "both"):
        with torch.inference_mode():
            results["torch"] = measure(rec.model, one, big)
    if args.runtime in ("onnx", "both"):
        from digitlab.export import onnx_session  # issue: ONNX export

        session = onnx_session(args.run)
        results["onnx"] = measure(lambda x: session.run(None, {"image": x.numpy()}), one, big)
    for runtime, r in results.items():
        print(f"{runtime}: batch 1 p50 {r['batch1_p50_ms']:.3f} ms, p99 {r['batch1_p99_ms']:.3f} ms; "
              f"batch 1024 {r['batch1024_images_per_s']:.0f} images/s ({torch.get_num_threads()} threads)")
    path = save_record(f"inference-{io.read_json(args.run / 'model.json')['model']}",
                       {"run": str(args.run), "model": io.read_json(args.run / "model.json"), "results": results},
                       args.out)
    print(f"saved {path}")
    return 0
