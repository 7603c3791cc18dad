"""What a run gets once training is done: TensorBoard's hparams, the task's figures, the curves and
the HTML report. engine/loop.py's train() calls `write` after `finish`; the loop itself draws nothing.

Everything but the task's figures is read back from the run folder; those use the test outputs the
loop already has (engine.loop.Finished), so the test split is not passed a second time.

`digitlab train` from the command line answers first and draws later: `draw_in_background` starts
`digitlab report RUN --redraw` (`redraw`: the test pass again, then the same figures and report) as
a detached process, because drawing is ~2 s of a ~15 s recognize-fast command (docs/speed.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from digitlab.config import TrainConfig
    from digitlab.engine.loop import Finished
    from digitlab.tasks.base import Outputs, Task


LOG = "report.log"  # what the background drawing printed; its last line says where the report is


def write(done: Finished, draw: bool = True) -> None:
    """hparams when TensorBoard logs are on; figures and report.html unless figures=false or not `draw`."""
    if done.writer is not None:
        log_hparams(done.writer, done.cfg, done.metrics)
    if done.cfg.figures and draw:
        _draw(done.run_dir, done.task, done.outputs, done.test)


def _draw(run_dir: Path, task: Task, outputs: Outputs, test: dict) -> Path:
    """The task's figures of the test outputs, the curves and report.html (returned)."""
    from digitlab.report import figures, html
    from digitlab.runfolder import read_history

    task.write_figures(run_dir, outputs, test)
    figures.plot_history(read_history(run_dir), run_dir / "figures" / "curves.png")
    return html.render_run_report(run_dir)


def redraw(run_dir: Path, threads: int = 1) -> Path:
    """Everything `write` draws, rebuilt from the run folder alone: the saved weights pass the test
    split again (about a second of CPU for recognition), then the task's figures, the curves and
    report.html. For runs trained with figures=false, and for the CLI's drawing after the answer."""
    import torch

    from digitlab import runfolder
    from digitlab.tasks.base import get_task

    torch.set_num_threads(threads)  # one thread by default: it runs beside whatever the user does next
    cfg = runfolder.load_config(run_dir)
    model, _ = runfolder.load_model(run_dir, "cpu", task=cfg.task)
    task = get_task(cfg.task)
    task.setup(cfg, torch.device("cpu"))
    outputs = task.predict(model, "test")
    return _draw(run_dir, task, outputs, task.score(outputs, "test"))


def draw_in_background(run_dir: Path) -> Path:
    """Start `digitlab report RUN --redraw` detached from this process (it outlives it); returns
    the log it writes, RUN/report.log, whose last line names report.html or the error."""
    log_path = run_dir / LOG
    with open(log_path, "w") as log:
        subprocess.Popen([sys.executable, "-m", "digitlab", "report", str(run_dir), "--redraw"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=os.name == "posix", env={**os.environ, "OMP_NUM_THREADS": "1"})
    return log_path


def log_hparams(writer: SummaryWriter, cfg: TrainConfig, metrics: dict) -> None:
    """hparams so TensorBoard's HPARAMS tab lines up runs and trials side by side."""
    flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    flat.update({f"model_args.{k}": str(v) for k, v in cfg.model_kwargs().items()})
    flat.update({f"augment.{k}": str(v) for k, v in cfg.augment.items()})
    scores = {f"hparam/{k}": v for k, v in metrics.items()
              if isinstance(v, float) and k.startswith(("test_", "val_"))}
    writer.add_hparams(flat, scores, run_name=".")
