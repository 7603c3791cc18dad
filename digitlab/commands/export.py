"""`digitlab export RUN --format onnx`: a portable model file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX, checked against PyTorch",
                       description="Writes RUN/model.onnx (input 'image' (B,1,28,28) float in [0,1], dynamic "
                                   "batch; output 'logits' for recognition) and prints the largest difference "
                                   "from PyTorch on real MNIST test images.",
                       epilog="example: digitlab export runs/recognize/<run> --format onnx")
    p.add_argument("run", type=Path, help="a run directory")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="only onnx for now")
    p.add_argument("--out", type=Path, help="output file (default RUN/model.onnx)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.extras import require

    require("export", "`digitlab export`")
    from digitlab.export import export_onnx

    path = export_onnx(args.run, args.out, check=not args.no_check)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0
