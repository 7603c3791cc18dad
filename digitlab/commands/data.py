"""`digitlab data fetch|info|show`: get, describe and look at MNIST / Fashion-MNIST."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

# The data module (and torch) is imported inside the handlers so `digitlab --help` stays quick.
DATASET_CHOICES = ("mnist", "fashion-mnist")


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch, describe and view the datasets",
                                   description="Fetch, describe and view MNIST / Fashion-MNIST.")
    parser.set_defaults(func=run, data_parser=parser)
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser, data_dir_help: str) -> None:
        p.add_argument("--dataset", default="mnist", choices=DATASET_CHOICES, help="which dataset (default: mnist)")
        p.add_argument("--data-dir", metavar="DIR", help=data_dir_help)

    p = sub.add_parser("fetch", help="download and verify the dataset files",
                       description="Download the four IDX files into the user cache (or --data-dir), "
                                   "verifying each by the SHA-256 of its raw bytes.")
    common(p, "download into DIR instead of the user cache")

    p = sub.add_parser("info", help="counts per split and class, pixel statistics",
                       description="Count the images per split and class and print their pixel statistics.")
    common(p, "folder holding the IDX files (default: DIGITLAB_DATA, then the user cache)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("show", help="write a PNG grid of samples, one row per class",
                       description="Write a PNG grid of sample images from one split, one row per class.")
    common(p, "folder holding the IDX files (default: DIGITLAB_DATA, then the user cache)")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--per-class", type=int, default=10, metavar="N", help="samples per class (default: 10)")
    p.add_argument("-o", "--output", default="samples.png", metavar="PNG", help="output file (default: samples.png)")


def run(args) -> int:
    """`digitlab data ACTION`: dispatch on the action; none given prints help."""
    actions = {"fetch": run_fetch, "info": run_info, "show": run_show}
    if args.data_command not in actions:
        args.data_parser.print_help()
        return 2
    return actions[args.data_command](args)


def run_fetch(args) -> int:
    from digitlab.data import mnist

    if args.data_dir is None:
        found = mnist.locate(args.dataset)
        if found is not None and all(e["ok"] for e in mnist.verify_dir(found, args.dataset).values()):
            print(f"{args.dataset}: already present and verified in {found}")
            return 0
    print(f"{args.dataset}: fetching ...", file=sys.stderr)
    with _progress_to_stderr():
        dest = mnist.fetch(args.dataset, args.data_dir)
    report = mnist.verify_dir(dest, args.dataset)
    for stem, entry in report.items():
        print(f"  {'ok ' if entry['ok'] else 'BAD'} {entry['path'] or stem}")
    print(f"{args.dataset}: verified copy in {dest}")
    return 0 if all(e["ok"] for e in report.values()) else 1


@contextmanager
def _progress_to_stderr():
    """Show which source each file came from (or why one failed) while the command runs."""
    import logging

    logger = logging.getLogger("digitlab.data.fetch")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run_info(args) -> int:
    from digitlab.data import mnist

    summary = mnist.info(args.dataset, args.data_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(_table(summary))
    return 0


def _table(summary: dict) -> str:
    """Human-readable form of mnist.info()."""
    splits = summary["splits"]
    names = list(splits)
    width = max(len(c) for c in summary["classes"] + ["class"])
    lines = [
        f"dataset   {summary['title']} ({summary['dataset']})",
        f"location  {summary['location'] or '(raw files not found; using the array cache)'}",
        f"cache     {summary['arrays_cache']}",
        f"images    {summary['image_shape'][0]}x{summary['image_shape'][1]} uint8",
        f"pixels    train mean {summary['train_pixel_mean']:.4f}, std {summary['train_pixel_std']:.4f} (scaled to [0, 1])",
        "",
        f"{'class':<{width}}  " + "  ".join(f"{n:>6}" for n in names),
    ]
    for i, cls in enumerate(summary["classes"]):
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{splits[n]['class_counts'][i]:>6}" for n in names))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{splits[n]['count']:>6}" for n in names))
    return "\n".join(lines)


def run_show(args) -> int:
    from digitlab.data import mnist

    images, labels = mnist.load_split(args.split, args.dataset, args.data_dir, download=False)
    names = mnist.class_names(args.dataset)
    out = mnist.save_sample_grid(
        images, labels, args.output, per_class=args.per_class,
        class_names=None if args.dataset == "mnist" else names,
        title=f"{args.dataset} {args.split}: first {args.per_class} per class",
    )
    print(f"wrote {out}")
    return 0
