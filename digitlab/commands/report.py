"""`digitlab report RUN...`: an offline HTML (+ Markdown) report for one run, several runs, or a study."""

from __future__ import annotations

from pathlib import Path

from digitlab.errors import DigitlabError


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="write an HTML/Markdown report for runs or a study folder",
        description="One run: RUN/report.html and report.md. A study folder: its study report. "
                    "Several runs: a comparison report (curves overlaid, summary table, per-class accuracy).")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (or one study folder)")
    p.add_argument("-o", "--out", type=Path, help="output folder for a comparison (default reports/compare-<time>)")
    p.add_argument("--labels", nargs="+", help="names for the runs in a comparison, in order")
    p.add_argument("--redraw", action="store_true",
                   help="one run: pass its test split again with the saved weights and redraw its figures "
                        "(a run trained with figures=false gets them; `digitlab train` does this after answering)")
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.report import html
    from digitlab.study import report

    if len(args.runs) == 1 and (args.runs[0] / "study.json").is_file():
        print(f"report: {report.study_report(args.runs[0])}")
        return 0
    if args.redraw:
        if len(args.runs) != 1:
            raise DigitlabError(f"--redraw takes one run folder, not {len(args.runs)}", "name one run")
        from digitlab.report import training

        print(f"report: {training.redraw(args.runs[0])}\nmarkdown: {html.render_run_markdown(args.runs[0])}")
        return 0
    if len(args.runs) == 1:
        out = html.render_run_report(args.runs[0], args.out / "report.html" if args.out else None)
        md = html.render_run_markdown(args.runs[0])
        print(f"report: {out}\nmarkdown: {md}")
        return 0
    if args.labels and len(args.labels) != len(args.runs):
        raise DigitlabError(f"{len(args.labels)} labels for {len(args.runs)} runs", "give one label per run")
    import time

    out = args.out or Path("reports") / time.strftime("compare-%Y%m%d-%H%M%S")
    print(f"report: {report.runs_report(args.runs, out, args.labels)}")
    return 0
