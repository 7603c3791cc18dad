"""`digitlab ensemble`: recognition runs combined into one run whose model averages theirs."""

from __future__ import annotations

from pathlib import Path

from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = sub.add_parser("ensemble", help="combine recognition runs (or train several seeds) into one averaged model",
                       description="Writes OUT: a run folder whose model averages the members' probabilities, "
                                   "measured on validation and test and calibrated again on validation. With "
                                   "--preset, trains the members first (OUT/members/s<seed>; run it again to "
                                   "resume).",
                       epilog="examples: digitlab ensemble runs/recognize/a runs/recognize/b --out runs/recognize/ab\n"
                              "          digitlab ensemble --preset recognize-best --seeds 0 1 2 --out runs/recognize/max")
    p.add_argument("runs", type=Path, nargs="*", metavar="RUN", help="finished recognition runs to combine")
    p.add_argument("--preset", help="train these members first: a recognition preset name or YAML path")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="with --preset: one member per seed")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="with --preset: config overrides")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.add_argument("--out", type=Path, required=True, help="folder to create for the ensemble")
    p.add_argument("--quiet", action="store_true", help="with --preset: no per-epoch lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import config, ensemble, runfolder

    if bool(args.runs) == bool(args.preset):
        raise DigitlabError("give either RUN folders or --preset, not both and not neither",
                            "e.g. digitlab ensemble RUN_A RUN_B --out OUT, or --preset recognize-best --out OUT")
    if args.set and not args.preset:
        raise DigitlabError("--set changes how members are trained, so it needs --preset",
                            "drop --set, or train the members with --preset")
    members = args.runs
    if args.preset:
        settings = config.parse_set(args.set)
        if args.data_dir:
            settings["data_dir"] = args.data_dir
        members = ensemble.train_members(args.preset, args.seeds, args.out, args.quiet, **settings)
    out = ensemble.combine(members, args.out, args.data_dir)
    m = runfolder.read_metrics(out)
    print(f"{out}: {len(members)} members, val acc {100 * m['val_acc']:.2f}%, test acc {100 * m['test_acc']:.2f}%")
    return 0
