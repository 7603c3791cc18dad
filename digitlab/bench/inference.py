"""Inference speed protocol (benchmarks.md): a recogniser's latency (p50, p99) and images per second
at batch 1, 256 and 1024, after warm-up, for the PyTorch model and for its ONNX export run by ONNX
Runtime. Inputs are random [0, 1] images: speed does not depend on what the pixels show."""

from __future__ import annotations

import time
from pathlib import Path

from digitlab import io
from digitlab.bench.common import save_record

BATCHES = (1, 256, 1024)


def register(sub) -> None:
    p = sub.add_parser("inference", help="latency and images/s of a recogniser: PyTorch and ONNX Runtime",
                       description="Latency and images/s of a recogniser: PyTorch and ONNX Runtime.",
                       epilog="example: digitlab bench inference runs/recognize/<run> --threads 2")
    p.add_argument("run", type=Path, nargs="?", help="run folder (default: the shipped recogniser)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx", "both"), default="auto",
                   help="auto (default): both when onnxruntime is installed, else torch")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), metavar="N")
    p.add_argument("--threads", type=int, help="CPU threads for both runtimes (default: torch's default)")
    p.add_argument("--seconds", type=float, default=1.0, help="time spent measuring each batch size")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/inference-<model>.json)")
    p.set_defaults(func=run)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(fn, x, seconds: float) -> dict:
    """Call fn(x) for about `seconds` after a warm-up (at least 5 timed calls): p50/p99 latency of one
    call and images/s at the median call."""
    warm_end = time.perf_counter() + min(0.2, seconds / 4)
    while time.perf_counter() < warm_end:
        fn(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    p50 = percentile(times, 0.5)
    return {"p50_ms": 1000 * p50, "p99_ms": 1000 * percentile(times, 0.99), "images_per_s": len(x) / p50,
            "calls": len(times)}


def runtimes(choice: str) -> list[str]:
    from digitlab.extras import missing, require

    if choice == "auto":
        return ["torch", "onnx"] if missing("export") is None else ["torch"]
    if choice != "torch":
        require("export", f"`digitlab bench inference --runtime {choice}`")
    return {"torch": ["torch"], "onnx": ["onnx"], "both": ["torch", "onnx"]}[choice]


def run(args) -> int:
    from digitlab.errors import DigitlabError

    if any(b < 1 for b in args.batches) or args.seconds <= 0 or (args.threads is not None and args.threads < 1):
        raise DigitlabError("--batches, --seconds and --threads must be positive", "e.g. --batches 1 256 --threads 2")
    chosen = runtimes(args.runtime)
    import torch

    from digitlab import pretrained
    from digitlab.api import Recognizer

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = pretrained.resolve("recognize", args.run)
    rec = Recognizer(folder)
    g = torch.Generator().manual_seed(0)
    inputs = {b: torch.rand(b, 1, 28, 28, generator=g) for b in args.batches}
    calls = {}
    if "torch" in chosen:
        calls["torch"] = rec.model.eval()
    if "onnx" in chosen:
        from digitlab.export import onnx_session

        session = onnx_session(folder, threads=torch.get_num_threads())
        calls["onnx"] = lambda x: session.run(None, {"image": x.numpy()})
    results: dict[str, dict] = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            results[name] = {f"batch{b}": measure(fn, x, args.seconds) for b, x in inputs.items()}
            print(f"{name}: " + "; ".join(f"batch {b}: {r['images_per_s']:,.0f} images/s, p50 {r['p50_ms']:.3f} ms"
                                          for b, r in zip(args.batches, results[name].values()))
                  + f" ({torch.get_num_threads()} threads)", flush=True)
    meta = io.read_json(folder / "model.json")
    path = save_record(f"inference-{meta['model']}", {"run": str(folder), "model": meta, "seconds": args.seconds,
                                                      "threads": torch.get_num_threads(), "results": results},
                       args.out)
    print(f"saved {path}")
    return 0
