"""`digitlab ensemble`: recognition runs combined into one run whose model averages theirs."""

from __future__ import annotations

from pathlib import Path

from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = sub.add_parser("ensemble", help="combine recognition runs (or train several seeds) into one averaged model",
                       description="Writes OUT: a run folder whose model averages the members' probabilities, "
                                   "measured on validation and test and calibrated again on validation. With "
                                   "--preset or --members, trains the members first (OUT/members/; run it again "
                                   "to resume).",
                       epilog="examples: digitlab ensemble runs/recognize/a runs/recognize/b --out runs/recognize/ab\n"
                              "          digitlab ensemble --preset recognize-best --seeds 0 1 2 --out runs/recognize/max\n"
                              "          digitlab ensemble --preset recognize-deep --seeds 0 1 --jobs 2 --out runs/recognize/best2\n"
                              "          digitlab ensemble --members recognize-robust:0 recognize-robust:1 "
                              "recognize-robust:2 recognize-robust-deep:0 --out runs/recognize/shipped")
    p.add_argument("runs", type=Path, nargs="*", metavar="RUN", help="finished recognition runs to combine")
    p.add_argument("--preset", help="train these members first: a recognition preset name or YAML path")
    p.add_argument("--seeds", type=int, nargs="+", help="with --preset: one member per seed (default 0 1 2)")
    p.add_argument("--members", nargs="+", metavar="PRESET:SEED",
                   help="train one member per PRESET:SEED first: members of different recipes")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="with --preset or --members: config "
                   "overrides for every member")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    p.add_argument("--out", type=Path, required=True, help="folder to create for the ensemble")
    p.add_argument("--jobs", type=int, default=1, help="with --preset or --members: train this many members at "
                   "once, each in its own process with its share of the CPU cores (default 1)")
    p.add_argument("--quiet", action="store_true", help="with --preset or --members: no per-epoch lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab import config, ensemble, runfolder

    if sum(map(bool, (args.runs, args.preset, args.members))) != 1:
        raise DigitlabError("give one of: RUN folders, --preset or --members",
                            "e.g. digitlab ensemble RUN_A RUN_B --out OUT, --preset recognize-best --out OUT, "
                            "or --members recognize-robust:0 recognize-robust-deep:0 --out OUT")
    if args.seeds and not args.preset:
        raise DigitlabError("--seeds goes with --preset", "drop --seeds, or give each member's seed in --members")
    if args.runs and args.jobs != 1:
        raise DigitlabError("--jobs says how many members to train at once, so it needs --preset or --members",
                            "drop --jobs, or train the members with --preset or --members")
    if args.set and args.runs:
        raise DigitlabError("--set changes how members are trained, so it needs --preset or --members",
                            "drop --set, or train the members with --preset or --members")
    members = args.runs
    if not members:
        settings = config.parse_set(args.set)
        if args.data_dir:
            settings["data_dir"] = args.data_dir
        specs = [(args.preset, s) for s in args.seeds or [0, 1, 2]] if args.preset else _members(args.members)
        members = ensemble.train_members(specs, args.out, args.quiet, args.jobs, **settings)
    out = ensemble.combine(members, args.out, args.data_dir)
    m = runfolder.read_metrics(out)
    print(f"{out}: {len(members)} members, val acc {100 * m['val_acc']:.2f}%, test acc {100 * m['test_acc']:.2f}%")
    return 0


def _members(specs: list[str]) -> list[tuple[str, int]]:
    """["recognize-robust:0", ...] -> [("recognize-robust", 0), ...]"""
    pairs = []
    for spec in specs:
        preset, _, seed = spec.rpartition(":")
        if not preset or not seed.lstrip("-").isdigit():
            raise DigitlabError(f"--members takes PRESET:SEED, got {spec!r}",
                                "e.g. --members recognize-robust:0 recognize-robust:1 recognize-robust-deep:0")
        pairs.append((preset, int(seed)))
    return pairs
