"""`digitlab tune`: TPE search with median pruning over a space file; writes best.yaml and a report."""

from __future__ import annotations

from pathlib import Path

from digitlab import config
from digitlab.commands.common import add_parser


def register(sub) -> None:
    p = add_parser(
        sub, "tune", help="search hyper-parameters (Optuna TPE + median pruning)",
        description="Search a space of settings with Optuna's TPE sampler; trials that fall below the "
                    "median validation curve are pruned. Stored in TUNE/optuna.db (or --storage), so "
                    "rerunning continues the search and several processes/machines can share it.",
        examples=["digitlab tune --space configs/spaces/recognize-digitnet.yaml --trials 20",
                  "digitlab tune --preset recognize-fast --space configs/spaces/recognize-digitnet.yaml "
                  "--trials 8 --epochs 2 --subset 0.2"])
    p.add_argument("--space", type=Path, required=True, help="space YAML (configs/spaces/NAME.yaml)")
    p.add_argument("--preset", help="preset for the fixed settings (default: the space file's)")
    p.add_argument("--trials", type=int, default=20, help="total finished trials wanted (default 20)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=float)
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--storage", help="Optuna database URL (default sqlite:///TUNE/optuna.db)")
    p.add_argument("--out", type=Path, help="folder (default $DIGITLAB_RUNS/tune/NAME)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="fixed config overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.extras import require

    require("study", "`digitlab tune`")
    from digitlab.engine.run import default_runs_root
    from digitlab.study import tune

    space = tune.load_space(args.space)
    extra = {k: v for k, v in (("epochs", args.epochs), ("subset", args.subset)) if v is not None}
    extra.update(config.parse_set(args.set))
    folder = args.out or default_runs_root() / "tune" / space["name"]
    study = tune.run_tune(space, folder, args.trials, extra, args.storage, args.seed, args.preset)
    best = study.best_trial
    print(f"best trial {best.number}: val {space['metric']} {best.value:.4f}  {best.params}")
    print(f"best values: {folder / 'best.yaml'}\nreport: {folder / 'report.html'}")
    return 0
