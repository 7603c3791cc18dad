"""`digitlab study FILE`: run a grid of trials through an Optuna study and write its report."""

from __future__ import annotations

import time
from pathlib import Path

from digitlab import config
from digitlab.commands.common import add_parser
from digitlab.errors import DigitlabError
from digitlab.extras import require


def register(sub) -> None:
    p = add_parser(
        sub, "study", help="run a study (grid of settings x seeds) and write its report",
        description="Run every trial of a study file through an Optuna study stored in a database "
                    "(STUDY/optuna.db by default), then write STUDY/report.html and report.md. "
                    "Rerunning resumes: finished trials are kept, dead ones are redone.",
        examples=["digitlab study configs/studies/r2-optimizer.yaml --quick",
                  "digitlab study configs/studies/r2-activation.yaml --epochs 5 --workers 2",
                  "digitlab study configs/studies/r2-optimizer.yaml --seeds 0            # one seed of each setting",
                  "digitlab study configs/studies/r1-skip.yaml --storage postgresql://user@host/db   # many machines",
                  "tensorboard --logdir runs/studies/r2-optimizer     # every trial with its hparams"])
    p.add_argument("file", type=Path, help="study YAML (configs/studies/NAME.yaml)")
    p.add_argument("--epochs", type=int, help="override the epochs of every trial")
    p.add_argument("--subset", type=float, help="fraction of the training split for every trial")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run instead of the file's (e.g. --seeds 0)")
    p.add_argument("--quick", action="store_true", help="use the file's `quick:` settings (default folder NAME-quick)")
    p.add_argument("--workers", type=int, default=1, help="trials run in parallel processes (default 1)")
    p.add_argument("--storage", help="Optuna database URL shared by workers/machines (default sqlite:///STUDY/optuna.db); "
                                     "on each machine run the same command with the same --out folder name")
    p.add_argument("--out", type=Path, help="study folder (default $DIGITLAB_RUNS/studies/NAME, i.e. runs/studies/NAME)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every trial")
    p.add_argument("--heartbeat", type=float, default=10.0,
                   help="seconds between trial heartbeats; a trial silent for 3x this is redone (default 10)")
    p.add_argument("--no-report", action="store_true", help="run trials only")
    p.add_argument("--report-only", action="store_true", help="rebuild the report of an existing study folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.engine.run import default_runs_root
    from digitlab.study import report, spec as specs

    spec = specs.load(args.file)
    folder = args.out or default_runs_root() / "studies" / (spec.name + ("-quick" if args.quick else ""))
    if args.report_only:
        print(f"report: {report.study_report(folder, file_spec=spec)}")
        return 0
    require("study", "`digitlab study`")  # running trials needs Optuna; the report above does not
    from digitlab.study import runner

    if args.workers < 1:
        raise DigitlabError(f"--workers {args.workers}", "use 1 or more")
    extra = dict(spec.quick) if args.quick else {}
    if args.quick and spec.quick_seeds:
        spec.seeds = list(spec.quick_seeds)
    if args.seeds:
        spec.seeds = list(args.seeds)
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    if args.subset is not None:
        extra["subset"] = args.subset
    extra.update(config.parse_set(args.set))
    t0 = time.perf_counter()
    counts = runner.run_study(spec, folder, extra, source=str(args.file), workers=args.workers,
                              storage=args.storage, heartbeat=args.heartbeat)
    print(f"{counts['complete']} of {counts['trials']} trials complete "
          f"({time.perf_counter() - t0:.1f} s)")
    if not args.no_report:
        print(f"report: {report.study_report(folder, file_spec=specs.load(args.file))}")
    return 0 if counts["complete"] == counts["trials"] else 1
