"""Recognition protocol: whole `digitlab train` command timed per seed, test
accuracy mean/std/best over seeds; and inference speed of a trained model."""

from __future__ import annotations

import time
from pathlib import Path

from digitlab import io
from digitlab.bench import train
from digitlab.bench.common import save_record


def register(sub) -> None:
    p = sub.add_parser("recognize", help="train a preset over seeds; time and accuracy",
                       epilog="example: digitlab bench recognize --preset recognize-fast --seeds 0 1 2")
    train.add_arguments(p, "recognize-fast")
    p.set_defaults(func=train.run, task="recognize")  # `bench train recognize` under its first name

    q = sub.add_parser("inference", help="images/s at batch 1024 and latency at batch 1",
                       epilog="example: digitlab bench inference runs/recognize/<run>")
    q.add_argument("run", type=Path)
    q.add_argument("--runtime", choices=("torch", "onnx", "both"), default="torch")
    q.add_argument("--out", type=Path)
    q.set_defaults(func=run_inference_bench)


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
    if args.runtime != "torch":
        from digitlab.extras import require

        require("export", f"`digitlab bench inference --runtime {args.runtime}`")
    import torch

    from digitlab.api import Recognizer

    rec = Recognizer(args.run)
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
