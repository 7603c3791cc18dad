"""Denoising protocol: one frozen noisy test set, any method, the same metrics.

The set is the 10,000 MNIST test images noised once with a fixed seed by digitlab.data.noise; its
SHA-256 is recorded in every JSON and checked against the known value, so two records are only
ever compared on identical inputs. Classical filters use fixed, documented parameters (one setting
for all kinds; Gaussian sigma, TV weight and the NLM h factor were each picked from a small sweep
on the first 500 frozen images, which if anything flatters them) and do not identify the noise kind.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from digitlab.bench.common import save_record
from digitlab.errors import DigitlabError
from digitlab.extras import require

# numpy, torch and digitlab.tasks.denoise_eval (torchmetrics) are imported inside the functions,
# so that registering `digitlab bench` stays instant.

# name -> (description, parameters); the parameters are recorded in the JSON.
CLASSICAL = {
    "noisy": ("the noisy input itself", {}),
    "median3": ("median filter 3x3 (scipy.ndimage)", {"size": 3}),
    "gaussian": ("Gaussian blur (skimage.filters.gaussian)", {"sigma": 0.5}),
    "nlm": ("non-local means (skimage), sigma estimated per image (Immerkaer), h = 0.8 sigma",
            {"patch_size": 5, "patch_distance": 6, "h_factor": 0.8, "fast_mode": True}),
    "tv": ("total variation, Chambolle (skimage)", {"weight": 0.1}),
    "bm3d": ("BM3D (bm3d package), sigma estimated per image (Immerkaer)", {}),
}


def register(sub) -> None:
    p = sub.add_parser("denoise", help="score a denoising method on the frozen noisy test set",
                       description="Methods: run:PATH (a trained denoise run), " + ", ".join(CLASSICAL) + ".",
                       epilog="examples:\n  digitlab bench denoise --method noisy median3 tv --limit 1000\n"
                              "  digitlab bench denoise --method run:runs/denoise/<run>")
    p.add_argument("--method", nargs="+", required=True, metavar="M")
    p.add_argument("--limit", type=int, default=0, help="score only the first N images (0 = all 10,000)")
    p.add_argument("--workers", type=int, default=1, help="processes for the per-image filters (nlm, tv, bm3d)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks"), help="where the JSON records go")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.set_defaults(func=run)


def run(args) -> int:
    for method in args.method:  # before loading anything: every filter but `noisy` uses scipy/scikit-image
        if method in CLASSICAL and method != "noisy":
            require("baselines", f"`digitlab bench denoise --method {method}`")
    import torch

    from digitlab.data import mnist
    from digitlab.tasks import denoise_eval as ev

    images, _ = mnist.load_split("test", "mnist", args.data_dir)
    frozen = ev.frozen_test_set(images)
    check_hash(frozen["sha256"])
    n = args.limit or len(images)
    data = {k: (v[:n] if isinstance(v, torch.Tensor) else v) for k, v in frozen.items()}
    for method in args.method:
        record = bench_method(method, data, args.workers)
        record.update(limit=args.limit or None, n_images=n, set_sha256=frozen["sha256"],
                      set_seed=ev.FROZEN_SEED, threads=torch.get_num_threads())
        path = save_record(f"denoise-{slug(method)}", record, args.out_dir / f"denoise-{slug(method)}.json")
        kind = f"  kind acc {100 * record['kind_acc']:.2f}%" if "kind_acc" in record else ""
        print(f"{method}: PSNR {record['psnr']:.2f} dB  SSIM {record['ssim']:.4f}  score {record['score']:.3f}  "
              f"composite {record['composite']:.2f}{kind}  ({n} images, {record['seconds']:.1f} s) -> {path}",
              flush=True)
    return 0


def check_hash(sha: str) -> None:
    from digitlab.tasks import denoise_eval as ev

    if ev.FROZEN_SHA256 is not None and sha != ev.FROZEN_SHA256:
        raise DigitlabError(f"the frozen denoising set hashes to {sha[:16]}..., expected {ev.FROZEN_SHA256[:16]}...",
                            "use the official MNIST test files and the same torch version; records made "
                            "on another set are not comparable")


def slug(method: str) -> str:
    if method.startswith("run:"):
        method = "run-" + Path(method[4:].rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", method)


def bench_method(method: str, data: dict, workers: int = 1) -> dict:
    """Denoise data["noisy"] with `method` and summarise against data["clean"]."""
    from digitlab.tasks import denoise_eval as ev

    t0 = time.perf_counter()
    kind_pred, info = None, {}
    if method.startswith("run:"):
        clean_hat, kind_pred, info = _run_model(Path(method[4:]), data["noisy"])
    elif method in CLASSICAL:
        clean_hat = classical(method, data["noisy"], workers)
        info = {"description": CLASSICAL[method][0], "parameters": CLASSICAL[method][1]}
    else:
        raise DigitlabError(f"unknown denoising method {method!r}",
                            f"use run:PATH or one of: {', '.join(CLASSICAL)}")
    seconds = time.perf_counter() - t0
    summary = ev.summarize(ev.per_image(clean_hat, data["clean"]), data["kinds"], data["strengths"], kind_pred)
    return {"method": method, **info, **summary, "seconds": round(seconds, 3),
            "ms_per_image": round(1000 * seconds / len(clean_hat), 4)}


def _run_model(run: Path, noisy: torch.Tensor):
    from digitlab.engine import run as runs
    from digitlab.tasks import denoise_eval as ev
    from digitlab.models.registry import count_params

    model, meta = runs.load_model(run)
    if meta.get("task") != "denoise":
        raise DigitlabError(f"{run} is a {meta.get('task')!r} run, not a denoising run",
                            "pass a run made by `digitlab train denoise`")
    clean, probs = ev.run_model(model, noisy)
    kind_pred = probs.argmax(1) if ev.has_kind_head(model) else None
    return clean, kind_pred, {"run": str(run), "model": meta["model"], "model_args": meta.get("model_args", {}),
                              "params": count_params(model)}


def classical(method: str, noisy: torch.Tensor, workers: int = 1) -> torch.Tensor:
    """(N,1,28,28) -> (N,1,28,28) float in [0,1] with a classical filter."""
    import numpy as np
    import torch
    x = noisy[:, 0].numpy().astype(np.float64)  # (N,28,28)
    params = CLASSICAL[method][1]
    if method == "noisy":
        out = x
    elif method == "median3":
        from scipy.ndimage import median_filter

        out = median_filter(x, size=(1, params["size"], params["size"]), mode="reflect")
    elif method == "gaussian":
        from skimage.filters import gaussian

        out = gaussian(x, sigma=params["sigma"], channel_axis=0, preserve_range=True)
    else:
        if method == "bm3d":
            try:
                import bm3d  # noqa: F401
            except ImportError:
                raise DigitlabError("--method bm3d needs the bm3d extra (bm3d is not installed)",
                                    "pip install 'digitlab[bm3d]', then rerun") from None
        chunks = np.array_split(x, max(1, workers * 4))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                out = np.concatenate(list(pool.map(_filter_chunk, [method] * len(chunks), chunks)))
        else:
            out = np.concatenate([_filter_chunk(method, c) for c in chunks])
    return torch.from_numpy(np.clip(out, 0, 1)).float().unsqueeze(1)


def _filter_chunk(method: str, images: np.ndarray) -> np.ndarray:
    """Per-image filters (module level so a process pool can pickle the call)."""
    import numpy as np
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    p = CLASSICAL[method][1]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        if method == "nlm":
            sigma = estimate_sigma(img)
            out[i] = denoise_nl_means(img, h=p["h_factor"] * sigma, sigma=sigma, patch_size=p["patch_size"],
                                      patch_distance=p["patch_distance"], fast_mode=p["fast_mode"])
        elif method == "tv":
            out[i] = denoise_tv_chambolle(img, weight=p["weight"])
        elif method == "bm3d":
            import bm3d

            out[i] = bm3d.bm3d(img, sigma_psd=max(estimate_sigma(img), 1e-3))
        else:
            raise AssertionError(method)
    return out


def estimate_sigma(img: np.ndarray) -> float:
    """Gaussian noise level by Immerkaer's Laplacian-difference method (no PyWavelets needed)."""
    import numpy as np
    from scipy.ndimage import convolve

    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = img.shape
    r = np.abs(convolve(img, m, mode="reflect"))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * r.sum() / (6 * (w - 2) * (h - 2)))
