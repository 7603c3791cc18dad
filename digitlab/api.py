"""digitlab from Python: load a model (shipped, or a run folder), ask it about images, or train one.

    import digitlab
    rec = digitlab.load("recognize")             # the shipped model; or digitlab.load("runs/recognize/<run>")
    rec.predict("my.png")                         # -> Reading: 7 (p=0.998)
    digitlab.load("denoise").denoise(img)         # -> Denoised: clean image, noise kind, probability
    digitlab.load("compare").same(img_a, img_b)   # -> Same: probability of the same digit
    run = digitlab.train("recognize", preset="recognize-fast", epochs=3)   # -> Run: metrics, paths

Images may be a file path, a PIL image, a numpy array or a torch tensor: one image (H, W), or a
batch ((B, H, W), (B, 1, H, W), or a list). One image gives one result, a batch a list. The CLI
(`predict`, `denoise`, `compare`) and the server answer through these same classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from digitlab import pretrained, runfolder, verdict
from digitlab.data import preprocess
from digitlab.errors import DigitlabError
from digitlab.verdict import Reading


# --- inputs ------------------------------------------------------------------------------------

def _gray(image: Any) -> np.ndarray:
    """One image of any accepted kind -> float32 grayscale (H, W) in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, Path, bytes, bytearray)):
        return preprocess.load_image(image)
    if isinstance(image, Image.Image):
        return preprocess.from_pil(image)
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    a = a.squeeze(0) if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise DigitlabError(f"an image must be a 2-D grid of numbers, got shape {a.shape} ({a.dtype})",
                            "pass (H, W) arrays, a (B, H, W) batch, file paths or PIL images")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise DigitlabError("pixel values must be finite and in [0, 1] or [0, 255]", "rescale the image")
    return a.astype(np.float32) / (255 if a.dtype == np.uint8 or a.max() > 1 else 1)


def as_images(images: Any) -> tuple[list[np.ndarray], bool]:
    """(list of grayscale arrays, whether a single image was given)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise DigitlabError("no images given (an empty list)", "pass at least one image")
        return [_gray(x) for x in images], False
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim >= 3 and tuple(images.shape[:1]) != (1,):
        batch = images[:, 0] if images.ndim == 4 and images.shape[1] == 1 else images
        if batch.ndim != 3:
            raise DigitlabError(f"a batch of images must be (B, H, W) or (B, 1, H, W), got shape {tuple(images.shape)}",
                                "pass grayscale images: one channel each")
        return [_gray(x) for x in batch], False
    return [_gray(images)], True


def _one_or_all(results: list, single: bool):
    return results[0] if single else results


# --- models ------------------------------------------------------------------------------------

class Model:
    """A loaded model of one task, from a run folder or the shipped one (`folder`, `meta`, `metrics`)."""

    task = ""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        self.model, self.meta = runfolder.load_model(self.folder, device, task=self.task)
        self.metrics = runfolder.read_metrics(self.folder)
        self.device = torch.device(device)

    @property
    def shipped(self) -> bool:
        return pretrained.is_shipped(self.folder)

    def __repr__(self) -> str:
        source = "shipped" if self.shipped else str(self.folder)
        tests = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items() if k.startswith("test_")
                          and isinstance(v, float) and k in ("test_acc", "test_psnr", "test_auc"))
        return f"{type(self).__name__}({self.meta['model']}, {source}{', ' + tests if tests else ''})"

    def _stack(self, arrays: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(a) for a in arrays]).unsqueeze(1).to(self.device)


class Recognizer(Model):
    task = "recognize"

    @property
    def calibration(self) -> verdict.Calibration:
        return verdict.Calibration.from_meta(self.meta)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> np.ndarray:
        """(B,28,28) or (B,1,28,28) float in [0,1], MNIST-prepared -> (B,10) logits."""
        x = images.unsqueeze(1) if images.dim() == 3 else images
        return self.model(x.to(self.device).float()).float().cpu().numpy()

    def prepare(self, images: Any, normalize: bool = True) -> tuple[torch.Tensor, bool]:
        """(B,28,28) inputs as the model sees them (MNIST's preprocessing unless normalize=False)."""
        grays, single = as_images(images)
        if not normalize:
            bad = [g.shape for g in grays if g.shape != (28, 28)]
            if bad:
                raise DigitlabError(f"normalize=False needs 28x28 images, got {bad[0]}", "use normalize=True")
            return torch.stack([torch.from_numpy(g) for g in grays]), single
        return torch.stack([preprocess.to_mnist(g) for g in grays]), single

    def predict(self, images: Any, normalize: bool = True) -> Reading | list[Reading]:
        """The digit in each image, with calibrated probabilities and an abstain reason when unsure."""
        x, single = self.prepare(images, normalize)
        return _one_or_all(verdict.read(self.logits(x), self.calibration), single)


MAX_SCALE = 64  # 28x28 saved as at most 1792x1792 pixels: enough to look at, far from filling memory


def check_png_output(path: str | Path, scale: int = 1) -> Path:
    """`path` can take a PNG enlarged `scale` times; checked before any work, so a bad name costs nothing."""
    path = Path(path)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise DigitlabError(f"scale {scale!r} must be a whole number from 1 to {MAX_SCALE}",
                            f"use a scale from 1 (28x28 pixels) to {MAX_SCALE}")
    if path.is_dir():
        raise DigitlabError(f"output {path} is a folder", f"name a file, e.g. {path / 'clean.png'}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise DigitlabError(f"output {path} lies under {parent}, which is a file, not a folder",
                                "choose another output folder")
    if path.suffix.lower() != ".png":
        raise DigitlabError(f"output {path} does not end in .png, but the denoised image is written as a PNG",
                            f"name it {path.with_suffix('.png').name}")
    return path


@dataclass(frozen=True)
class Denoised:
    image: np.ndarray = field(repr=False)          # (28, 28) float32 in [0, 1], white ink on black
    kind: str | None                                # the noise kind named, None if the model names none
    probability: float | None
    probabilities: dict[str, float] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return f"denoised 28x28; noise: {self.kind} (p={self.probability:.3f})" if self.kind else "denoised 28x28"

    def save(self, path: str | Path, scale: int = 1) -> Path:
        """An 8-bit grayscale PNG, white ink on black like MNIST, enlarged `scale` times; written atomically."""
        from PIL import Image

        from digitlab import io

        path = check_png_output(path, scale)
        arr = (np.clip(np.asarray(self.image, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        if scale > 1:
            arr = np.kron(arr, np.ones((scale, scale), dtype=np.uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(path) as tmp:
            Image.fromarray(arr, mode="L").save(tmp, format="PNG")
        return path


class Denoiser(Model):
    task = "denoise"

    def denoise(self, images: Any) -> Denoised | list[Denoised]:
        """Clean each (already noisy) image and name its noise. No cropping: noise would move the ink box."""
        from digitlab.data.noise import NOISE_KINDS
        from digitlab.tasks import denoise_eval as ev

        grays, single = as_images(images)
        clean, probs = ev.run_model(self.model, self._stack([preprocess.noisy_to_28(g) for g in grays]))
        named = ev.has_kind_head(self.model)
        out = []
        for img, p in zip(clean[:, 0].clamp(0, 1).numpy(), probs):
            k = int(p.argmax())
            out.append(Denoised(img, NOISE_KINDS[k] if named else None, float(p[k]) if named else None,
                                {n: float(v) for n, v in zip(NOISE_KINDS, p)} if named else {}))
        return _one_or_all(out, single)


@dataclass(frozen=True)
class Same:
    probability: float          # P(same digit)
    same: bool                  # probability >= threshold
    cosine: float               # cosine similarity of the two embeddings
    threshold: float = 0.5

    def __str__(self) -> str:
        return f"{'same digit' if self.same else 'different digits'} (p_same={self.probability:.4f})"


class Comparer(Model):
    task = "compare"

    @torch.inference_mode()
    def same(self, a: Any, b: Any, threshold: float = 0.5) -> Same | list[Same]:
        """Whether a and b show the same digit; batches compare element by element."""
        (ga, single), (gb, _) = as_images(a), as_images(b)
        if len(ga) != len(gb):
            raise DigitlabError(f"{len(ga)} first images but {len(gb)} second ones", "pass the same number of each")
        emb = self.model.embed(self._stack([preprocess.to_mnist(g) for g in ga + gb]))
        e1, e2 = emb[:len(ga)], emb[len(ga):]
        probs = torch.sigmoid(self.model.head_logit(e1, e2).reshape(-1)).tolist()
        cos = torch.nn.functional.cosine_similarity(e1, e2).tolist()
        return _one_or_all([Same(p, p >= threshold, c, threshold) for p, c in zip(probs, cos)], single)


KINDS = {cls.task: cls for cls in (Recognizer, Denoiser, Comparer)}


def load(what: str | Path = "recognize", device: str = "cpu") -> Recognizer | Denoiser | Comparer:
    """A task name ("recognize", "denoise", "compare") gives the shipped model; a path, that run's model."""
    if isinstance(what, str) and what in KINDS:
        return KINDS[what](pretrained.path(what), device)
    folder = Path(what)
    if not folder.is_dir():
        raise DigitlabError(f"{what!r} is neither a task nor a run folder",
                            f"pass one of {', '.join(KINDS)} (shipped models) or a folder made by `digitlab train`")
    task = runfolder.read_model_meta(folder).get("task")
    if task not in KINDS:
        raise DigitlabError(f"{folder} holds a model of unknown task {task!r}", f"pass a run of {', '.join(KINDS)}")
    return KINDS[task](folder, device)


# --- training ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """A finished training run: its folder, settings and metrics (test measured once)."""

    path: Path
    config: dict = field(repr=False)
    metrics: dict = field(repr=False)

    def __repr__(self) -> str:
        tests = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items() if k.startswith("test_")
                          and isinstance(v, float) and not k.endswith("_loss"))
        return f"Run({str(self.path)!r}, {tests})"

    def load(self, device: str = "cpu") -> Recognizer | Denoiser | Comparer:
        return load(self.path, device)


def train(task: str, preset: str | None = None, out: str | Path | None = None, quiet: bool = True,
          **settings: Any) -> Run:
    """Train like `digitlab train TASK --preset P --set key=value ...`; settings are config keys
    (dotted ones as dicts: augment={"rotate": 10})."""
    from digitlab import config
    from digitlab.engine import loop

    cfg = config.resolve(task, preset, {"progress": not quiet, **settings})
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise DigitlabError(f"out={out} exists and is not empty", "choose a new folder")
        out.mkdir(parents=True, exist_ok=True)
    path = loop.train(cfg, run_dir=out, quiet=quiet)
    return Run(path, runfolder.read_json_file(path / "config.json", "config"), runfolder.read_metrics(path))


def evaluate(run: str | Path, split: str = "test", data_dir: str | None = None) -> dict:
    """Re-measure a saved run on its "test" (or "val") split with the task's own metrics:
    {"test_acc": ...}, also written to RUN/eval-SPLIT.json. `data_dir` overrides where the data is."""
    from digitlab import config, io
    from digitlab.engine import device as devices
    from digitlab.tasks.base import get_task

    run = Path(run)
    cfg = runfolder.load_config(run)
    if data_dir:
        cfg = config.apply_overrides(cfg, {"data_dir": data_dir})
    dev = devices.pick_device(cfg.device)
    model, _ = runfolder.load_model(run, dev)
    task = get_task(cfg.task)
    task.setup(cfg, dev)
    result = {f"{split}_{k}": v for k, v in task.evaluate(model, split).items()}
    io.write_json(run / f"eval-{split}.json", result)
    return result
