"""Pair comparison: two images in, one logit "same digit?" out; BCE, accuracy, ROC-AUC, EER.

Protocols (the reports R1-R5: docs/reproduction.md):
  small  R5's: 6,000 training images (from the 55,000 recognition train split), 1,000 test
         images, each chosen once by `subset_seed` and cached; 4,000 fixed test pairs.
  full   all 55,000 training images; 20,000 fixed test pairs from the 10,000 test images.
Model selection needs validation pairs the test never sees: they come from the recognition
validation split (1,000 images / 4,000 pairs for small, 5,000 / 10,000 for full).

An epoch is `pairs_per_epoch` pairs drawn on the fly; the loop's permutation indexes them and
positions below half are "same" pairs, so every epoch is exactly balanced.

Loss: BCE on the head's logit, plus optional terms on the embedding (task_args): a cosine
contrastive term (contrastive_weight), a batch-hard triplet term (triplet_weight), and a digit
classification term over the model's digit proxies (class_weight; model_args.classes=10). The
last two read the digits the pairs were drawn from, which R5's protocol already uses to make pairs.

Primary metric: validation accuracy at 0.5. AUC is threshold-free but saturates above 0.999 on
this task, where it stops ranking epochs; accuracy is also the number the targets are stated in.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab.config import TrainConfig
from digitlab.data import mnist
from digitlab.data.augment import augment
from digitlab.data.pairs import PairSampler, cached_subset, fixed_pairs
from digitlab.errors import DigitlabError
from digitlab.tasks.base import Outputs, TaskBase, augmentation, merge_task_args, split_indices, to_float

PROTOCOLS = {
    "small": {"train_images": 6000, "val_images": 1000, "test_images": 1000, "val_pairs": 4000, "test_pairs": 4000},
    "full": {"train_images": None, "val_images": None, "test_images": None, "val_pairs": 10000, "test_pairs": 20000},
}
TASK_ARGS = {"protocol": "small", "pairs_per_epoch": 12000, "subset_seed": 0, "pair_seed": 0,
             "contrastive_weight": 0.0, "margin": 0.2, "triplet_weight": 0.0, "triplet_margin": 0.2, "class_weight": 0.0, "oneshot_episodes": 1000,
             "train_images": None, "val_images": None, "test_images": None, "val_pairs": None, "test_pairs": None}


def task_options(cfg: TrainConfig) -> dict:
    """task_args with the protocol's sizes filled in; unknown keys are an error."""
    given = merge_task_args(cfg, TASK_ARGS)
    opts = {k: TASK_ARGS[k] if v is None else v for k, v in given.items()}
    if opts["protocol"] not in PROTOCOLS:
        raise DigitlabError(f"unknown protocol {opts['protocol']!r}", "use --protocol small or --protocol full")
    for key, value in PROTOCOLS[opts["protocol"]].items():
        if cfg.task_args.get(key) is None:
            opts[key] = value
    return opts


def load_pair_splits(cfg: TrainConfig, opts: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"}: (uint8 images, labels) of the protocol, on the CPU."""
    images, labels = mnist.load_split("train", cfg.dataset, cfg.data_dir)
    test_x, test_y = mnist.load_split("test", cfg.dataset, cfg.data_dir)
    train_pool, val_pool = split_indices(len(images), cfg.val_size, cfg.split_seed)
    test_pool = torch.arange(len(test_y))
    seed, pools = opts["subset_seed"], {"train": train_pool, "val": val_pool, "test": test_pool}
    out = {}
    for split, pool in pools.items():
        n = opts[f"{split}_images"]
        if n is not None and n < len(pool):
            name = f"{cfg.dataset}-{split}-pool{len(pool)}-split{cfg.split_seed}-n{n}-s{seed}"
            pool = cached_subset(name, pool, n, seed)
        x, y = (test_x, test_y) if split == "test" else (images, labels)
        out[split] = (x[pool], y[pool])
    return out


class CompareTask(TaskBase):
    name = "compare"
    primary_metric = "acc"

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        self.opts = task_options(cfg)
        self.cfg, self.device = cfg, device
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in load_pair_splits(cfg, self.opts).items()}
        self.sampler = PairSampler(self.splits["train"][1])
        self.eval_pairs = {split: fixed_pairs(self.splits[split][1], self.opts[f"{split}_pairs"],
                                              self.opts["pair_seed"] + (0 if split == "test" else 1))
                           for split in ("val", "test")}
        self.augment_cfg = augmentation(cfg)

    @property
    def train_size(self) -> int:
        return int(self.opts["pairs_per_epoch"])

    def example_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """index (B,) pair positions -> (a (B,1,28,28), b, same (B,) float, digits (2B,)).

        The digits are those the pairs were drawn from; only the batch-hard triplet term reads them."""
        same = index < self.train_size // 2
        ia, ib = self.sampler.draw(same, generator)
        images = self.splits["train"][0]
        x = to_float(torch.cat([images[ia], images[ib]]))  # (2B,1,28,28): one augmentation pass
        if self.augment_cfg is not None:
            x = augment(x, self.augment_cfg, generator)
        a, b = x.chunk(2)
        return a, b, same.float(), self.splits["train"][1][torch.cat([ia, ib])]

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        a, b, y, digits = batch
        w_con, w_tri = float(self.opts["contrastive_weight"]), float(self.opts["triplet_weight"])
        w_cls = float(self.opts["class_weight"])
        if w_con > 0 or w_tri > 0 or w_cls > 0:
            logit, e1, e2, digit_logits = model(a, b, return_embeddings=True)
        else:
            logit = model(a, b)
        bce = F.binary_cross_entropy_with_logits(logit.float(), y)
        out = {"loss": bce, "acc": ((logit > 0).float() == y).float().mean()}
        loss = bce
        if w_con > 0:
            out["contrastive"] = contrastive_loss(e1.float(), e2.float(), y, self.opts["margin"])
            loss = loss + w_con * out["contrastive"]
        if w_tri > 0:
            out["triplet"] = batch_hard_triplet(torch.cat([e1, e2]).float(), digits, self.opts["triplet_margin"])
            loss = loss + w_tri * out["triplet"]
        if w_cls > 0:
            if digit_logits is None:
                raise DigitlabError("task_args.class_weight needs a model with digit proxies",
                                    "add model_args.classes=10 (siamese_plus), or set class_weight=0")
            out["digit_ce"] = F.cross_entropy(digit_logits.float(), digits)
            loss = loss + w_cls * out["digit_ce"]
        if loss is not bce:
            out.update(loss=loss, bce=bce.detach())
            out.update({k: out[k].detach() for k in ("contrastive", "triplet", "digit_ce") if k in out})
        return out

    @torch.inference_mode()
    def embed_split(self, model: nn.Module, split: str) -> torch.Tensor:
        """(N, D) embeddings of every image of the split, in eval mode."""
        images = self.splits[split][0]
        step = self.cfg.eval_batch_size
        return torch.cat([model.embed(to_float(images[i:i + step])).float() for i in range(0, len(images), step)])

    @torch.inference_mode()
    def predict(self, model: nn.Module, split: str) -> Outputs:
        """Each image is embedded once; the head then scores the fixed pairs from the table.
        {"emb" (N,D) on the CPU, "logits" (P,) on the device, "probs" (P,) on the CPU}."""
        was_training = model.training
        model.eval()
        emb = self.embed_split(model, split)
        a, b, _ = self.eval_pairs[split]
        logits = model.head_logit(emb[a], emb[b]).float()
        model.train(was_training)
        return {"emb": emb.cpu(), "logits": logits, "probs": torch.sigmoid(logits).cpu()}

    @torch.inference_mode()
    def score(self, outputs: Outputs, split: str) -> dict:
        same = self.eval_pairs[split][2]
        metrics = {"loss": F.binary_cross_entropy_with_logits(outputs["logits"], same).item(),
                   **pair_metrics(outputs["probs"], same.cpu())}
        metrics["oneshot_acc"] = one_shot_accuracy(outputs["emb"], self.splits[split][1].cpu(),
                                                   self.opts["oneshot_episodes"], seed=self.opts["pair_seed"])
        return metrics

    def write_figures(self, run_dir: Path, outputs: Outputs, test_metrics: dict) -> None:
        a, b, same = (t.cpu() for t in self.eval_pairs["test"])
        images, labels = (t.cpu() for t in self.splits["test"])
        write_figures(run_dir / "figures", outputs["emb"], labels, images, a, b, same, outputs["probs"])


def contrastive_loss(e1: torch.Tensor, e2: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Cosine contrastive term: same pairs pulled to cosine 1, different pairs pushed below `margin`."""
    cos = F.cosine_similarity(e1, e2, dim=1)
    return (same * (1 - cos).square() + (1 - same) * F.relu(cos - margin).square()).mean()


def batch_hard_triplet(emb: torch.Tensor, digits: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on cosine distance: for each of the 2B images
    in the batch, its farthest same-digit image and its nearest other-digit image ("hard pairs")."""
    z = F.normalize(emb, dim=1)
    dist = 1 - z @ z.T  # (2B, 2B)
    same = digits[:, None] == digits[None, :]
    eye = torch.eye(len(digits), dtype=torch.bool, device=emb.device)
    hardest_pos = dist.masked_fill(~same | eye, -1.0).amax(1)
    hardest_neg = dist.masked_fill(same, 3.0).amin(1)
    valid = (same & ~eye).any(1) & (~same).any(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean() if valid.any() else emb.sum() * 0


# --------------------------------------------------------------------------- metrics

def roc_curve(probs: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    from torchmetrics.functional.classification import binary_roc

    fpr, tpr, _ = binary_roc(probs.float(), same.long())
    return fpr, tpr


def roc_auc(probs: torch.Tensor, same: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(probs.float(), same.long()))


def equal_error_rate(fpr: torch.Tensor, tpr: torch.Tensor) -> float:
    """The rate where false accepts equal false rejects (fpr = 1 - tpr), linearly interpolated
    between the two ROC points that bracket the crossing."""
    d = fpr - (1 - tpr)  # rises from -1 at (0,0) to +1 at (1,1)
    i = int(torch.nonzero(d >= 0)[0])
    if i == 0:
        return float(fpr[0])
    t = float(-d[i - 1] / (d[i] - d[i - 1]))
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def pair_metrics(probs: torch.Tensor, same: torch.Tensor) -> dict:
    """probs, same (N,) -> accuracy at 0.5, ROC-AUC, EER (fractions)."""
    fpr, tpr = roc_curve(probs, same)
    return {"acc": ((probs > 0.5).float() == same).float().mean().item(),
            "auc": roc_auc(probs, same), "eer": equal_error_rate(fpr, tpr)}


def one_shot_accuracy(emb: torch.Tensor, labels: torch.Tensor, episodes: int = 1000, seed: int = 0,
                      metric: str = "cosine", scorer=None) -> float:
    """10-way one-shot accuracy: per episode one support and one query image per digit (never the
    same image), each query assigned the digit of its nearest support.

    emb (N, D), labels (N,). `scorer(q (E,K,D), s (E,K,D)) -> (E,K,K)` overrides the metric (e.g.
    the network's own head).
    """
    sampler = PairSampler(labels)
    g = torch.Generator().manual_seed(seed)
    k = sampler.classes
    u = torch.rand(2, episodes, k, generator=g)
    cls = torch.arange(k).expand(episodes, k)  # (E, K)
    count, start = sampler.counts[cls], sampler.starts[cls]
    s_pos = (u[0] * count).long().clamp_max(count - 1)
    q_pos = (u[1] * (count - 1)).long().clamp_max(count - 2)
    q_pos = q_pos + (q_pos >= s_pos).long()  # skip the support's own slot
    s, q = emb[sampler.order[start + s_pos]], emb[sampler.order[start + q_pos]]  # (E, K, D)
    if scorer is not None:
        score = scorer(q, s)
    elif metric == "cosine":
        score = F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)  # (E, Kq, Ks)
    elif metric == "euclidean":
        score = -torch.cdist(q, s)
    else:
        raise DigitlabError(f"unknown one-shot metric {metric!r}", "use cosine or euclidean")
    return (score.argmax(-1) == cls).float().mean().item()


# --------------------------------------------------------------------------- figures

def pca_2d(emb: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 2): projection on the two leading principal components."""
    centred = emb.double() - emb.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).float()


def write_figures(out: Path, emb, labels, images, a, b, same, probs, shown: int = 24) -> None:
    from digitlab.report import figures

    fpr, tpr = roc_curve(probs, same)
    figures.plot_roc(fpr.numpy(), tpr.numpy(), roc_auc(probs, same), out / "roc.png",
                     title="Test pairs: ROC curve")
    pred = (probs > 0.5).long()
    cm = torch.bincount(same.long() * 2 + pred, minlength=4).reshape(2, 2)
    figures.plot_confusion(cm, out / "confusion.png", class_names=["different", "same"],
                           title="Test pairs at threshold 0.5")
    right = pred == same.long()
    wrong = (~right).nonzero().flatten()[: shown // 3]  # show mistakes first, then pairs in order
    pick = torch.cat([wrong, right.nonzero().flatten()[: shown - len(wrong)]])
    side_by_side = torch.cat([images[a[pick]], images[b[pick]]], dim=2)  # (n, 28, 56)
    titles = [f"{'same' if pred[i] else 'diff'} p={probs[i]:.2f} ({labels[a[i]]}|{labels[b[i]]})"
              for i in pick.tolist()]
    colours = ["tab:green" if right[i] else "tab:red" for i in pick.tolist()]
    figures.plot_image_grid(side_by_side, out / "pairs.png", titles, title_colors=colours, ncols=6,
                            suptitle=f"Test pairs: prediction (green right, red wrong); "
                                     f"{int((~right).sum())} of {len(right)} wrong")
    figures.plot_embedding_2d(pca_2d(emb).numpy(), labels.numpy(), out / "embedding_pca.png",
                              title="Test embeddings, PCA (colour = digit)")
