"""What a run gets once training is done: TensorBoard's hparams, the task's figures, the curves and
the HTML report. engine/loop.py's train() calls `write` after `finish`; the loop itself draws nothing.

Everything but the task's figures is read back from the run folder; those use the test outputs the
loop already has (engine.loop.Finished), so the test split is not passed a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from digitlab.config import TrainConfig
    from digitlab.engine.loop import Finished


def write(done: Finished) -> None:
    """hparams when TensorBoard logs are on; figures and report.html unless figures=false."""
    if done.writer is not None:
        log_hparams(done.writer, done.cfg, done.metrics)
    if done.cfg.figures:
        from digitlab.report import figures, html
        from digitlab.runfolder import read_history

        done.task.write_figures(done.run_dir, done.outputs, done.test)
        figures.plot_history(read_history(done.run_dir), done.run_dir / "figures" / "curves.png")
        html.render_run_report(done.run_dir)


def log_hparams(writer: SummaryWriter, cfg: TrainConfig, metrics: dict) -> None:
    """hparams so TensorBoard's HPARAMS tab lines up runs and trials side by side."""
    flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    flat.update({f"model_args.{k}": str(v) for k, v in cfg.model_kwargs().items()})
    flat.update({f"augment.{k}": str(v) for k, v in cfg.augment.items()})
    scores = {f"hparam/{k}": v for k, v in metrics.items()
              if isinstance(v, float) and k.startswith(("test_", "val_"))}
    writer.add_hparams(flat, scores, run_name=".")
