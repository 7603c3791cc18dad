"""Pair comparison: sampling, cached subsets, symmetric networks, metrics, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from digitlab.data import pairs
from digitlab.errors import DigitlabError
from digitlab.models import registry
from digitlab.tasks import compare


def _labels(n: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- sampling

def test_pairs_are_balanced_correct_and_reproducible():
    labels = _labels()
    sampler = pairs.PairSampler(labels)
    same = torch.arange(4000) < 2000
    a, b = sampler.draw(same, torch.Generator().manual_seed(3))
    assert torch.equal(labels[a] == labels[b], same)  # "same" pairs share the digit, others never
    assert not (a[same] == b[same]).any()  # never an image paired with itself
    a2, b2 = sampler.draw(same, torch.Generator().manual_seed(3))
    assert torch.equal(a, a2) and torch.equal(b, b2)
    a3, _ = sampler.draw(same, torch.Generator().manual_seed(4))
    assert not torch.equal(a, a3)
    # Every class appears as anchor, and different pairs reach every other class.
    assert set(labels[a].tolist()) == set(range(10))
    assert set((labels[b[~same]] - labels[a[~same]]).remainder(10).tolist()) == set(range(1, 10))


def test_fixed_pairs_exactly_balanced_and_seeded():
    labels = _labels()
    a, b, same = pairs.fixed_pairs(labels, 1001, seed=0)
    assert int(same.sum()) == 500 and len(same) == 1001
    assert torch.equal((labels[a] == labels[b]).float(), same)
    a2, b2, same2 = pairs.fixed_pairs(labels, 1001, seed=0)
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(same, same2)


def test_sampler_rejects_missing_digit():
    with pytest.raises(DigitlabError, match="every digit"):
        pairs.PairSampler(torch.zeros(50, dtype=torch.long))


def test_train_batches_balanced_per_epoch():
    """Positions below half of the epoch are "same" pairs: a whole epoch is exactly 50/50."""
    task = compare.CompareTask()
    task.opts = {"pairs_per_epoch": 12000}
    task.splits = {"train": (torch.zeros(500, 28, 28, dtype=torch.uint8), _labels())}
    task.sampler = pairs.PairSampler(task.splits["train"][1])
    task.augment_cfg = None
    order = torch.randperm(12000, generator=torch.Generator().manual_seed(0))
    total = sum(int(task.train_batch(order[i:i + 500], torch.Generator().manual_seed(i))[2].sum())
                for i in range(0, 12000, 500))
    assert total == 6000


# --------------------------------------------------------------------------- cached subset

def test_cached_subset_is_the_same_across_runs(digitlab_cache):
    pool = torch.arange(1000, 2000)
    first = pairs.cached_subset("t", pool, 100, seed=7)
    path = digitlab_cache / "subsets" / "t.json"
    assert path.is_file() and json.loads(path.read_text())["indices"] == first.tolist()
    assert ((first >= 1000) & (first < 2000)).all() and len(set(first.tolist())) == 100
    # A second run reads the file, even if the random generator would now give something else.
    data = json.loads(path.read_text())
    data["indices"] = list(range(1000, 1100))
    path.write_text(json.dumps(data))
    assert pairs.cached_subset("t", pool, 100, seed=7).tolist() == list(range(1000, 1100))
    with pytest.raises(DigitlabError, match="does not match"):
        pairs.cached_subset("t", pool, 100, seed=8)
    # Same seed in a fresh cache draws the same subset.
    path.unlink()
    assert torch.equal(pairs.cached_subset("t", pool, 100, seed=7), first)


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("name", ["siamese_r5", "siamese_plus"])
def test_network_is_symmetric(name):
    torch.manual_seed(0)
    model = registry.create(name).eval()
    a, b = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        ab, ba = model(a, b), model(b, a)
    assert ab.shape == (6,)
    torch.testing.assert_close(ab, ba, rtol=0, atol=1e-6)
    assert model.embed(a).shape[0] == 6


def test_digit_proxies_classify_the_embedding_and_keep_the_logit_symmetric():
    torch.manual_seed(0)
    model = registry.create("siamese_plus", classes=10).eval()
    a, b = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logit, e1, e2, digits = model(a, b, return_embeddings=True)
        torch.testing.assert_close(logit, model(b, a), rtol=0, atol=1e-6)
    assert digits.shape == (8, 10)
    # logits are scale * cosine to unit proxies: bounded by the scale, and exact for a proxy itself
    assert digits.abs().max() <= model.class_scale + 1e-4
    proxy = model.proxies[3:4].detach()
    assert model.class_logits(proxy)[0, 3].item() == pytest.approx(model.class_scale, rel=1e-5)
    assert registry.create("siamese_plus").proxies is None  # off by default: R5-shaped output only


def test_r5_network_as_described():
    model = registry.create("siamese_r5")
    assert registry.count_params(model) == 192_449  # R5 reports 192k
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(1, 32, 5), (32, 64, 3), (64, 128, 3)]
    assert model.head[0].in_features == 256


# --------------------------------------------------------------------------- metrics

def test_metrics_against_known_values():
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8])
    same = torch.tensor([0.0, 0.0, 1.0, 1.0])
    m = compare.pair_metrics(probs, same)
    assert m["auc"] == pytest.approx(0.75)  # the classic 4-point example
    assert m["acc"] == pytest.approx(0.75)
    assert m["eer"] == pytest.approx(0.5)
    perfect = compare.pair_metrics(torch.tensor([0.1, 0.2, 0.8, 0.9]), same)
    assert perfect == {"acc": 1.0, "auc": 1.0, "eer": 0.0}
    worst = compare.pair_metrics(torch.tensor([0.9, 0.8, 0.2, 0.1]), same)
    assert worst["auc"] == 0.0 and worst["eer"] == pytest.approx(1.0) and worst["acc"] == 0.0


def test_eer_interpolates_between_roc_points():
    # (fpr, tpr): the crossing fpr = 1 - tpr lies between (0.2, 0.6) and (0.4, 0.9).
    fpr = torch.tensor([0.0, 0.2, 0.4, 1.0])
    tpr = torch.tensor([0.0, 0.6, 0.9, 1.0])
    # d = fpr - 1 + tpr: -1, -0.2, 0.3 -> t = 0.4; eer = 0.2 + 0.4 * 0.2 = 0.28
    assert compare.equal_error_rate(fpr, tpr) == pytest.approx(0.28)


def test_one_shot_accuracy():
    labels = torch.arange(10).repeat(20)
    emb = torch.nn.functional.one_hot(labels, 10).float() + 0.01 * torch.randn(200, 10)
    assert compare.one_shot_accuracy(emb, labels, episodes=50) == 1.0
    assert compare.one_shot_accuracy(emb, labels, episodes=50, metric="euclidean") == 1.0
    # A constant embedding cannot tell digits apart: argmax picks support 0, right 1 time in 10.
    assert compare.one_shot_accuracy(torch.ones(200, 4), labels, episodes=50) == pytest.approx(0.1)


def test_batch_hard_triplet_zero_when_separated():
    digits = torch.tensor([0, 0, 1, 1])
    emb = torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]])
    assert compare.batch_hard_triplet(emb, digits, margin=0.2).item() == 0.0
    assert compare.batch_hard_triplet(emb[[0, 2, 1, 3]], digits, margin=0.2).item() > 0.5


# --------------------------------------------------------------------------- end to end

def _fake_mnist(monkeypatch):
    """Tiny stand-in data: each digit is a bright bar at its own row, so it is learnable in seconds."""
    def load_split(split, dataset="mnist", data_dir=None):
        n = 1200 if split == "train" else 400
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        labels = torch.arange(n) % 10
        images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8)
        rows = 2 + 2 * labels
        images[torch.arange(n), rows] = 255
        return images, labels

    monkeypatch.setattr(compare.mnist, "load_split", load_split)


def test_train_compare_end_to_end(monkeypatch, tmp_path):
    from digitlab import config
    from digitlab import api
    from digitlab.engine import loop

    _fake_mnist(monkeypatch)
    cfg = config.resolve("compare", "compare-r5", {
        "epochs": 1, "batch_size": 32, "threads": 1, "val_size": 200, "progress": False, "tensorboard": False,
        "task_args.pairs_per_epoch": 320, "task_args.train_images": 600, "task_args.val_images": 100,
        "task_args.test_images": 200, "task_args.val_pairs": 200, "task_args.test_pairs": 300,
        "task_args.oneshot_episodes": 20})
    run = loop.train(cfg, tmp_path / "run", quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"] == 192_449
    for key in ("test_acc", "test_auc", "test_eer", "test_oneshot_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    for name in ("roc", "confusion", "pairs", "embedding_pca"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
    x = torch.rand(28, 28)
    answer = api.load(run).same(x, x)
    assert isinstance(answer, api.Same)
    assert 0 <= answer.probability <= 1 and answer.cosine == pytest.approx(1.0, abs=1e-5)


def test_auxiliary_digit_term_trains_and_needs_proxies(monkeypatch, tmp_path):
    from digitlab import config
    from digitlab.engine import loop

    _fake_mnist(monkeypatch)
    small = {"epochs": 2, "batch_size": 32, "threads": 1, "val_size": 200, "progress": False,
             "tensorboard": False, "figures": False, "task_args.pairs_per_epoch": 320,
             "task_args.train_images": 600, "task_args.val_images": 100, "task_args.test_images": 200,
             "task_args.val_pairs": 200, "task_args.test_pairs": 300, "task_args.oneshot_episodes": 20,
             "task_args.class_weight": 1.0}
    with pytest.raises(DigitlabError, match="model_args.classes=10"):
        loop.train(config.resolve("compare", "compare-small", {**small, "model_args.classes": 0}),
                   tmp_path / "no-proxies", quiet=True)
    run = loop.train(config.resolve("compare", "compare-small", {**small, "model_args.classes": 10}),
                     tmp_path / "run", quiet=True)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[1]["train_digit_ce"] < history[0]["train_digit_ce"] < 2.31  # ln 10 = chance
    assert history[0]["train_loss"] > history[0]["train_bce"] + history[0]["train_digit_ce"] - 1e-4


def test_protocol_sizes():
    from digitlab import config

    small = compare.task_options(config.resolve("compare", None, {}))
    assert (small["train_images"], small["test_images"], small["test_pairs"], small["pairs_per_epoch"]) == (6000, 1000, 4000, 12000)
    full = compare.task_options(config.resolve("compare", None, {"task_args.protocol": "full"}))
    assert (full["train_images"], full["test_images"], full["test_pairs"]) == (None, None, 20000)


def test_unknown_task_arg_is_an_error():
    from digitlab import config

    with pytest.raises(DigitlabError, match="unknown compare task_args"):  # found when the config is made
        config.resolve("compare", "compare-r5", {"task_args.protocl": "full"})


def test_train_protocol_flag(monkeypatch):
    from digitlab import cli
    from digitlab.engine import loop

    seen = {}
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    assert cli.main(["train", "compare", "--protocol", "full"]) == 0
    assert seen["cfg"].task_args["protocol"] == "full" and seen["cfg"].model == "siamese_plus"
