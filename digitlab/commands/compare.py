"""`digitlab compare RUN A B`: probability that two image files show the same digit."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("compare", help="probability that two images show the same digit",
                       description="Both files get MNIST's preprocessing (see `digitlab predict`), then the "
                                   "siamese network of a `digitlab train compare` run scores the pair.",
                       epilog="example: digitlab compare runs/compare/<run> a.png b.png --json")
    p.add_argument("run", type=Path, help="a comparison run directory")
    p.add_argument("a", type=Path, help="first image file")
    p.add_argument("b", type=Path, help="second image file")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def load_comparer(run: Path):
    """The trained siamese model of a run, in eval mode on the CPU."""
    from digitlab.engine.run import load_model
    from digitlab.errors import DigitlabError

    model, meta = load_model(run)
    if meta.get("task") != "compare":
        raise DigitlabError(f"{run} is a {meta.get('task')!r} run, not a comparison run",
                            "pass a run made by `digitlab train compare`")
    return model


def same_probability(model, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(28,28) x2 in [0,1] -> (P(same digit), cosine similarity of the embeddings)."""
    import torch  # here, not at the top: registering the command must not import torch

    with torch.inference_mode():
        e1, e2 = model.embed(torch.stack([a, b])[:, None]).chunk(2)  # (1, D) each
        prob = torch.sigmoid(model.head_logit(e1, e2)).item()
        return prob, torch.nn.functional.cosine_similarity(e1, e2).item()


def run(args) -> int:
    from digitlab.data.preprocess import prepare

    model = load_comparer(args.run)
    prob, cosine = same_probability(model, prepare(args.a), prepare(args.b))
    same = prob >= args.threshold
    if args.json:
        print(json.dumps({"a": str(args.a), "b": str(args.b), "same_probability": round(prob, 6),
                          "same": same, "threshold": args.threshold, "cosine": round(cosine, 6)}))
    else:
        print(f"{args.a} vs {args.b}: {'same digit' if same else 'different digits'}  "
              f"(p_same={prob:.4f}, embedding cosine {cosine:.3f})")
    return 0
