"""Pairs of digits for the comparison task: cached subsets, balanced pair sampling, fixed eval pairs.

R5's small-data protocol (docs/reproduction.md) trains on 10% of the data. The subset's indices are
drawn once from a seed and cached as JSON under `cache_dir()/subsets/`, so every run, on every
machine, uses the same images. Training pairs are drawn on the fly with tensor ops from a
torch.Generator (no per-pair Python loop); evaluation pairs are fixed by a seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from digitlab.data import mnist
from digitlab.errors import DigitlabError
from digitlab.io import read_json, write_json

CLASSES = 10


def subset_path(name: str) -> Path:
    return mnist.cache_dir() / "subsets" / f"{name}.json"


def cached_subset(name: str, pool: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` entries of `pool` (int64 indices), chosen once by `seed`, then read from the cache.

    The cache file records the pool size, n and seed; a mismatch is an error rather than a silent
    re-draw, because a changed subset would make results incomparable.
    """
    if not 0 < n <= len(pool):
        raise DigitlabError(f"subset size {n} must be between 1 and {len(pool)}", "choose a smaller subset")
    path = subset_path(name)
    if path.is_file():
        try:
            data = read_json(path)
            indices = torch.tensor(data["indices"], dtype=torch.int64)
            ok = data["pool_size"] == len(pool) and data["n"] == n and data["seed"] == seed
        except (ValueError, KeyError, TypeError) as exc:
            raise DigitlabError(f"subset cache {path} is damaged ({exc})", "delete the file; it is redrawn") from None
        if not ok or len(indices) != n:
            raise DigitlabError(f"subset cache {path} does not match (pool {len(pool)}, n {n}, seed {seed})",
                                "delete the file to redraw it, or use the settings it was made with")
        return indices
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    indices = pool[perm].sort().values  # sorted: the file reads as a set of images
    write_json(path, {"name": name, "pool_size": len(pool), "n": n, "seed": seed,
                      "indices": indices.tolist()})
    return indices


class PairSampler:
    """Draws pairs (a, b) from labelled images given which of them must be "same".

    Images are grouped by class once (argsort); a draw is then a few gathers: an anchor uniform
    over the images, a partner of the same class (never the anchor itself) or of one of the other
    nine classes (uniform), uniform within that class.
    """

    def __init__(self, labels: torch.Tensor, classes: int = CLASSES):
        counts = torch.bincount(labels, minlength=classes)
        if int(counts.min()) < 2:
            raise DigitlabError(f"pair sampling needs >= 2 images of every digit, got counts {counts.tolist()}",
                                "use a larger subset")
        self.labels, self.classes = labels, classes
        self.order = torch.argsort(labels, stable=True)            # (N,) image ids grouped by class
        self.counts = counts                                       # (K,)
        self.starts = torch.cumsum(counts, 0) - counts             # (K,) first slot of each class
        self.slot = torch.empty_like(self.order)
        self.slot[self.order] = torch.arange(len(labels), device=labels.device)  # image -> its slot

    def draw(self, same: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """same (B,) bool -> image ids (a (B,), b (B,)); randomness only from `generator`."""
        dev, b = self.labels.device, len(same)
        u = torch.rand(4, b, generator=generator, device=generator.device).to(dev)  # (4, B)
        a = (u[0] * len(self.labels)).long().clamp_max(len(self.labels) - 1)
        ca = self.labels[a]
        # Same class, skipping the anchor's own slot: draw among count-1 slots, shift past it.
        pos = (u[1] * (self.counts[ca] - 1)).long().clamp_max(self.counts[ca] - 2)
        own = self.slot[a] - self.starts[ca]
        pos = pos + (pos >= own).long()
        b_same = self.order[self.starts[ca] + pos]
        # Another class: shift by 1..K-1 so it never equals the anchor's class.
        cb = (ca + 1 + (u[2] * (self.classes - 1)).long().clamp_max(self.classes - 2)) % self.classes
        pos = (u[3] * self.counts[cb]).long().clamp_max(self.counts[cb] - 1)
        b_diff = self.order[self.starts[cb] + pos]
        return a, torch.where(same.to(dev), b_same, b_diff)


def fixed_pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n evaluation pairs, exactly n//2 "same", in seeded random order: (a, b, same float 0/1)."""
    g = torch.Generator().manual_seed(seed)
    same = torch.zeros(n, dtype=torch.bool)
    same[: n // 2] = True
    same = same[torch.randperm(n, generator=g)]
    a, b = PairSampler(labels.cpu()).draw(same, g)
    return a.to(labels.device), b.to(labels.device), same.float().to(labels.device)
