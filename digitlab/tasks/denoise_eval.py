"""Denoising metrics, the frozen benchmark set, and per-kind / per-band tables.

Shared by the training task and `digitlab bench denoise`, so a trained run and a classical filter
are measured by the same code:
PSNR with data range 1 and MSE floored at 1e-10 (i.e. at most 100 dB), SSIM with an 11x11
Gaussian window (sigma 1.5, K1 0.01, K2 0.03, data range 1), both per image then averaged;
the assignment score 0.4*(PSNR-15)/15 + 0.6*(SSIM-0.6)/0.4 and R1's composite 0.5*PSNR + 0.5*SSIM*100
(R1: docs/reproduction.md).
"""

from __future__ import annotations

import hashlib

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from digitlab.data.noise import NOISE_KINDS, sample_noise

MSE_FLOOR = 1e-10
PSNR_CAP = 10 * torch.log10(torch.tensor(1.0 / MSE_FLOOR)).item()  # 100 dB
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
BAND_NAMES = ("s<0.25", "0.25-0.5", "0.5-0.75", "s>=0.75")
FROZEN_SEED = 20240611          # the benchmark's noise draw; never change it
# SHA-256 of the frozen set (noisy float32, kinds int64, strengths float32 bytes) built from the
# MNIST test images; `frozen_test_set(check=True)` refuses to score against anything else.
FROZEN_SHA256 = "f54babe517cf6aed2bd4bb723f3ad40da4ff626c357e57dca3285d1009558dde"


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) x2 -> (B,) dB; torchmetrics' PSNR, capped where the MSE floor (1e-10) applies."""
    p = peak_signal_noise_ratio(pred.float(), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return p.clamp(max=PSNR_CAP)


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) x2 -> (B,) SSIM, Gaussian 11x11 window, sigma 1.5, K1 .01, K2 .03, data range 1."""
    return structural_similarity_index_measure(
        pred.float(), target.float(), gaussian_kernel=True, sigma=1.5, kernel_size=11,
        reduction="none", data_range=1.0, k1=0.01, k2=0.03)


def score(psnr: float, ssim: float) -> float:
    """The assignment's score: 0 at 15 dB and SSIM 0.6, 1 at 30 dB and SSIM 1."""
    return 0.4 * (psnr - 15) / 15 + 0.6 * (ssim - 0.6) / 0.4


def composite(psnr: float, ssim: float) -> float:
    """R1's model-selection metric."""
    return 0.5 * psnr + 0.5 * ssim * 100


def per_image(pred: torch.Tensor, target: torch.Tensor, batch: int = 2000) -> dict[str, torch.Tensor]:
    """{"mse", "psnr", "ssim"}: (N,) CPU tensors, computed in chunks to bound memory."""
    out = {"mse": [], "psnr": [], "ssim": []}
    for i in range(0, len(pred), batch):
        p, t = pred[i:i + batch].cpu().float(), target[i:i + batch].cpu().float()
        out["mse"].append(((p - t) ** 2).mean((1, 2, 3)))
        out["psnr"].append(psnr_per_image(p, t))
        out["ssim"].append(ssim_per_image(p, t))
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(values: dict[str, torch.Tensor], kinds: torch.Tensor, strengths: torch.Tensor,
              kind_pred: torch.Tensor | None = None) -> dict:
    """Means overall, per kind and per strength band. kind_pred None: the method names no kind."""
    def block(mask: torch.Tensor) -> dict:
        n = int(mask.sum())
        if n == 0:
            return {"n": 0}
        psnr, ssim = values["psnr"][mask].mean().item(), values["ssim"][mask].mean().item()
        row = {"n": n, "mse": values["mse"][mask].mean().item(), "psnr": psnr, "ssim": ssim,
               "score": score(psnr, ssim), "composite": composite(psnr, ssim)}
        if kind_pred is not None:
            row["kind_acc"] = (kind_pred[mask] == kinds[mask]).float().mean().item()
        return row

    kinds, strengths = kinds.cpu(), strengths.cpu()
    overall = block(torch.ones_like(kinds, dtype=torch.bool))
    per_kind = {name: block(kinds == k) for k, name in enumerate(NOISE_KINDS)}
    per_band = {}
    for name, (lo, hi) in zip(BAND_NAMES, BANDS):
        mask = (strengths >= lo) & ((strengths < hi) if hi < 1 else (strengths <= hi))
        per_band[name] = block(mask)
    out = {**overall, "per_kind": per_kind, "per_band": per_band}
    if kind_pred is not None:
        out["kind_confusion"] = kind_confusion(kind_pred.cpu(), kinds).tolist()
    return out


def kind_confusion(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(6,6) counts, rows = true kind, columns = identified kind."""
    k = len(NOISE_KINDS)
    return torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def noisy_set(clean: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise clean (N,1,28,28) once on the CPU with `seed`: (noisy, kinds, strengths). Same every run."""
    g = torch.Generator().manual_seed(seed)
    return sample_noise(clean.cpu().float(), g)


def fingerprint(noisy: torch.Tensor, kinds: torch.Tensor, strengths: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (noisy.float(), kinds.long(), strengths.float()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def frozen_test_set(images_u8: torch.Tensor) -> dict:
    """The benchmark set: the 10,000 MNIST test images, noised once with FROZEN_SEED.

    Returns {"clean", "noisy" (N,1,28,28), "kinds", "strengths" (N,), "sha256"}.
    """
    clean = images_u8.unsqueeze(1).float().div(255.0)
    noisy, kinds, strengths = noisy_set(clean, FROZEN_SEED)
    return {"clean": clean, "noisy": noisy, "kinds": kinds, "strengths": strengths,
            "sha256": fingerprint(noisy, kinds, strengths)}


@torch.inference_mode()
def run_model(model: torch.nn.Module, noisy: torch.Tensor, batch: int = 1000,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(clean (N,1,28,28), kind probabilities (N,6)) on the CPU, model in eval mode."""
    was = model.training
    model.eval()
    cleans, probs = [], []
    for i in range(0, len(noisy), batch):
        c, logits = model(noisy[i:i + batch].to(device).float())
        cleans.append(c.float().cpu())
        probs.append(logits.float().softmax(1).cpu())
    model.train(was)
    return torch.cat(cleans), torch.cat(probs)


def has_kind_head(model: torch.nn.Module) -> bool:
    return getattr(model, "kind", True) is not None


def table_markdown(summary: dict, title: str) -> str:
    """Per kind and per band rows: PSNR, SSIM, score, composite, kind accuracy."""
    has_kind = "kind_acc" in summary
    head = "| group | n | PSNR (dB) | SSIM | score | composite |" + (" kind acc |" if has_kind else "")
    rule = "|---|---:|---:|---:|---:|---:|" + ("---:|" if has_kind else "")
    lines = [f"# {title}", "", head, rule]

    def row(name: str, r: dict) -> str:
        if not r.get("n"):
            return f"| {name} | 0 | | | | |" + (" |" if has_kind else "")
        s = (f"| {name} | {r['n']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['score']:.3f} | "
             f"{r['composite']:.2f} |")
        return s + (f" {100 * r['kind_acc']:.1f}% |" if has_kind else "")

    lines.append(row("**all**", summary))
    lines += [row(f"kind {k}", r) for k, r in summary["per_kind"].items()]
    lines += [row(f"strength {b}", r) for b, r in summary["per_band"].items()]
    if has_kind:
        lines += ["", "Kind confusion (rows true, columns identified): " + ", ".join(NOISE_KINDS), ""]
        lines += ["| true \\ identified | " + " | ".join(NOISE_KINDS) + " |",
                  "|---|" + "---:|" * len(NOISE_KINDS)]
        for name, counts in zip(NOISE_KINDS, summary["kind_confusion"]):
            lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines) + "\n"
