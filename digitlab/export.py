"""ONNX export of a run's model, checked against PyTorch on real MNIST test images.

Each task's graph has fixed names so any runtime can call it without digitlab:

    recognize  image (B,1,28,28) float [0,1]          -> logits (B,10)
    denoise    image (B,1,28,28) float [0,1] (noisy)  -> clean (B,1,28,28), kind_logits (B,6)
    compare    a, b  (B,1,28,28) float [0,1]          -> logit (B,)  (same digit: sigmoid(logit))

The batch axis is dynamic. The file lands in RUN/model.onnx unless told otherwise.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from digitlab.engine import run as runs
from digitlab.errors import DigitlabError

OPSET = 17
TOLERANCE = 1e-3  # max abs difference allowed between ONNX Runtime and PyTorch outputs
CHECK_IMAGES = 1000  # real test images used by the check
IO_NAMES = {
    "recognize": (["image"], ["logits"]),
    "denoise": (["image"], ["clean", "kind_logits"]),
    "compare": (["a", "b"], ["logit"]),
}


class FlatOutputs(torch.nn.Module):
    """Makes every output a plain tensor tuple; the compare logit becomes (B,) whatever its shape."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, *inputs):
        out = self.model(*inputs)
        if self.task == "compare":
            return out.reshape(-1)
        return out


def export_onnx(run: str | Path, out: str | Path | None = None, check: bool = True, quiet: bool = False) -> Path:
    """Write RUN's model as ONNX (default RUN/model.onnx); with `check`, compare with PyTorch on test images."""
    run = Path(run)
    model, meta = runs.load_model(run)
    task = meta.get("task")
    if task not in IO_NAMES:
        raise DigitlabError(f"cannot export a {task!r} run to ONNX", f"export a run of one of {sorted(IO_NAMES)}")
    inputs, outputs = IO_NAMES[task]
    out = Path(out) if out else run / "model.onnx"
    example = tuple(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(len(inputs)))
    axes = {name: {0: "batch"} for name in inputs + outputs}
    from digitlab import io

    with io.atomic_path(out) as tmp, warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it works here and needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(FlatOutputs(model, task).eval(), example, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    if check:
        diffs = check_onnx(run, out, model=model, task=task)
        worst = max(diffs.values())
        if not quiet:
            parts = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
            print(f"ONNX Runtime vs PyTorch on {CHECK_IMAGES} real test images: max abs difference {parts}")
        if worst > TOLERANCE:
            raise DigitlabError(f"the ONNX model differs from PyTorch by up to {worst:.2e} (limit {TOLERANCE:g})",
                                "report this with the run's model name; serve with the PyTorch runtime meanwhile")
    return out


def check_inputs(task: str, n: int = CHECK_IMAGES, data_dir=None) -> tuple[np.ndarray, ...]:
    """Real MNIST test images shaped as the task's inputs: clean, noisy (seeded), or pairs."""
    from digitlab.data.mnist import load_split

    images, _ = load_split("test", data_dir=data_dir)
    x = images[:n].float().div(255).unsqueeze(1)  # (n,1,28,28)
    g = torch.Generator().manual_seed(0)
    if task == "denoise":
        from digitlab.data.noise import sample_noise

        x = sample_noise(x, g)[0]
    if task == "compare":
        return x.numpy(), x[torch.randperm(len(x), generator=g)].numpy()
    return (x.numpy(),)


def check_onnx(run: str | Path, path: str | Path, model=None, task=None) -> dict[str, float]:
    """Max abs difference per output between ONNX Runtime and PyTorch on real test images."""
    if model is None:
        model, meta = runs.load_model(run)
        task = meta["task"]
    arrays = check_inputs(task)
    session = _session(path)
    got = session.run(None, dict(zip(IO_NAMES[task][0], arrays)))
    with torch.inference_mode():
        want = FlatOutputs(model, task)(*(torch.from_numpy(a) for a in arrays))
    want = want if isinstance(want, tuple) else (want,)
    return {name: float(np.abs(g - w.numpy()).max()) for name, g, w in zip(IO_NAMES[task][1], got, want)}


def onnx_session(run: str | Path, threads: int | None = None):
    """An onnxruntime session for RUN/model.onnx, exporting it first if absent or older than the weights."""
    from digitlab.lite import onnx_is_fresh

    run = Path(run)
    path = _onnx_path(run)
    if not onnx_is_fresh(run, path):
        export_onnx(run, path)
    return _session(path, threads)


def _onnx_path(run: Path) -> Path:
    """RUN/model.onnx. A shipped model without one gets it in the user cache (the package folder
    may be read-only); the shipped recogniser has its own (pinned by SHA-256, see digitlab.lite)."""
    from digitlab import pretrained

    if pretrained.is_shipped(run) and not (run / "model.onnx").is_file():
        from digitlab.data.mnist import cache_dir

        return cache_dir() / "onnx" / f"{run.name}.onnx"
    return run / "model.onnx"


def _session(path: str | Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise DigitlabError("onnxruntime is not installed", "pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
