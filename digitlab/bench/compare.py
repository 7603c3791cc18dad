"""Pair-comparison protocol: accuracy at 0.5, ROC-AUC and EER on the fixed test
pairs of both protocols (small: 4,000 pairs of the cached 1,000-image test subset; full: 20,000
pairs of all 10,000 test images), and 10-way one-shot accuracy from the embedding over seeded
episodes drawn from the whole test set."""

from __future__ import annotations

import time
from pathlib import Path

from digitlab.bench.common import save_record


def register(sub) -> None:
    p = sub.add_parser("compare", help="pair accuracy, ROC-AUC, EER (both protocols) and one-shot accuracy",
                       description="Pair accuracy, ROC-AUC, EER (both protocols) and one-shot accuracy.",
                       epilog="example: digitlab bench compare runs/compare/<run> --episodes 1000")
    p.add_argument("run", type=Path, help="a comparison run directory")
    p.add_argument("--episodes", type=int, default=1000, help="one-shot episodes (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the one-shot episodes")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/compare-<run name>.json)")
    p.set_defaults(func=run)


def measure(run: Path, episodes: int = 1000, seed: int = 0) -> dict:
    import torch

    from digitlab import config
    from digitlab.runfolder import load_config, load_model
    from digitlab.tasks.compare import CompareTask, one_shot_accuracy

    model, _ = load_model(run, task="compare")
    cfg = load_config(run)
    record: dict = {"run": str(run), "model": cfg.model, "trained_protocol": cfg.task_args.get("protocol", "small"),
                    "params": sum(p.numel() for p in model.parameters())}
    if (run / "metrics.json").is_file():  # how the run was trained, for the record
        from digitlab import io

        trained = io.read_json(run / "metrics.json")
        record["training"] = {k: trained.get(k) for k in ("epochs_run", "best_epoch", "train_seconds", "wall_seconds",
                                                          "threads", "device", "val_acc", "val_auc")}
        record["config"] = io.read_json(run / "config.json")
    for protocol in ("small", "full"):
        task = CompareTask()
        task.setup(config.apply_overrides(cfg, {"task_args.protocol": protocol, "task_args.oneshot_episodes": 1,
                                                "task_args.test_pairs": None, "task_args.test_images": None}),
                   torch.device("cpu"))
        t0 = time.perf_counter()
        outputs = task.predict(model, "test")
        m = task.score(outputs, "test")
        record[protocol] = {"pairs": len(task.eval_pairs["test"][2]), "images": len(task.splits["test"][1]),
                            **{k: m[k] for k in ("acc", "auc", "eer", "loss")},
                            "seconds": round(time.perf_counter() - t0, 3)}
    emb, labels = outputs["emb"], task.splits["test"][1].cpu()  # full protocol: all 10,000 test images

    def head(q, s):  # (E,K,D) queries x supports -> (E,K,K) logits of the network's own head
        e, k, d = q.shape
        qq = q[:, :, None].expand(e, k, k, d).reshape(-1, d)
        ss = s[:, None].expand(e, k, k, d).reshape(-1, d)
        with torch.inference_mode():
            return model.head_logit(qq, ss).view(e, k, k)

    record["oneshot"] = {"episodes": episodes, "seed": seed, "ways": 10, "queries_per_episode": 10,
                         **{name: one_shot_accuracy(emb, labels, episodes, seed, metric=name)
                            for name in ("cosine", "euclidean")},
                         "head": one_shot_accuracy(emb, labels, episodes, seed, scorer=head)}
    return record


def run(args) -> int:
    record = measure(args.run, args.episodes, args.seed)
    path = save_record(f"compare-{args.run.name}", record, args.out)
    s, f, o = record["small"], record["full"], record["oneshot"]
    print(f"{record['model']} ({record['params']:,} params): small acc {100 * s['acc']:.2f}% auc {s['auc']:.4f} "
          f"eer {100 * s['eer']:.2f}% | full acc {100 * f['acc']:.2f}% auc {f['auc']:.4f} eer {100 * f['eer']:.2f}% | "
          f"one-shot cosine {100 * o['cosine']:.2f}% euclidean {100 * o['euclidean']:.2f}% head {100 * o['head']:.2f}% "
          f"-> {path}")
    return 0
