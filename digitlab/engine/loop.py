"""The one training loop. Reads top to bottom: per epoch draw a seeded permutation, train on
index batches, evaluate on validation, keep the best weights, checkpoint, maybe stop; at the end
measure the test split once with the best weights and write the run's files.

    train()  ->  setup()  ->  run_epoch() per epoch  ->  finish()  ->  report.training.write()

`setup` builds a TrainState (model, optimiser, schedule, ...: what a checkpoint saves), `run_epoch`
advances it by one epoch, `finish` measures the test split and saves the model and metrics. The
figures, the HTML report and TensorBoard's hparams come after training (digitlab/report/training.py):
the loop knows nothing of reports.

Every epoch's randomness (shuffle, augmentation, dropout) is seeded from (seed, epoch), so a run
resumed from its checkpoint after epoch k continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from digitlab import io
from digitlab.config import TrainConfig
from digitlab.engine import device as devices
from digitlab.engine import run as runs
from digitlab.engine.optim import Schedule, make_optimizer
from digitlab.errors import DigitlabError
from digitlab.models.registry import count_params
from digitlab.tasks.base import Outputs, Task, get_task

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel
    from torch.utils.tensorboard import SummaryWriter

EPOCH_SEED_STRIDE = 1_000_003

Log = Callable[..., None]
OnEpoch = Callable[[dict], None]


@dataclass
class TrainState:
    """One run between epochs: what it trains with, and the bookkeeping its checkpoint keeps."""

    cfg: TrainConfig
    run_dir: Path | None          # None on ranks other than 0, which write nothing
    place: devices.Placement
    task: Task
    model: nn.Module              # the bare model: saved, restored, averaged
    net: nn.Module                # what the forward pass calls: model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None     # the moving average of `model`'s weights, or None
    amp_dtype: torch.dtype | None
    steps: int                    # batches per epoch
    log: Log
    writer: SummaryWriter | None = None  # rank 0 with tensorboard on, else None
    epoch: int = 0                # epochs finished
    best: float = -math.inf       # best validation metric so far, signed so that higher is better
    bad_epochs: int = 0           # epochs since `best` improved
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "epochs done"

    @property
    def scored(self) -> nn.Module:
        """The weights validation and test see: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def sign(self) -> float:
        return 1.0 if self.task.primary_mode == "max" else -1.0

    def checkpoint(self) -> dict:
        return {"epoch": self.epoch, "best": self.best, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}

    def restore(self, ckpt: dict) -> None:
        """The inverse of checkpoint(); one from another model or config is a clear error."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None:
                self.ema.load_state_dict(ckpt["ema"])
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/KeyError/ValueError/TypeError
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise runs.bad_checkpoint(Path(self.run_dir) / "checkpoint.pt",
                                      f"it does not fit this run's model and config ({first})") from None
        self.epoch, self.best, self.bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]
        self.best_state = ckpt["best_state"]


@dataclass
class Finished:
    """A trained run, handed to the reporting that follows training: its folder holds everything
    else; `outputs` are the final model's test outputs, so figures need no second test pass."""

    run_dir: Path
    cfg: TrainConfig
    task: Task
    model: nn.Module
    outputs: Outputs
    test: dict                    # the task's test metrics
    metrics: dict                 # metrics.json
    writer: SummaryWriter | None = None  # the run's open TensorBoard writer, for hparams


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False,
          quiet: bool = False, on_epoch: OnEpoch | None = None, draw_later: bool = False) -> Path:
    """Train `cfg`, writing everything into `run_dir` (a new one if None). Returns the run dir.

    `on_epoch(record)`, if given, sees each finished epoch's history record on the main process
    and may raise to abort the run (a tuner's pruning: optuna.TrialPruned). `draw_later`: return
    before the figures and report.html, which a background process draws (report/training.py)."""
    wall_start = time.perf_counter()
    place = devices.setup(cfg.device, cfg.threads)
    log = (lambda *a: None) if (quiet or not place.is_main) else (lambda *a: print(*a, flush=True))
    made = False
    try:
        if resume and run_dir is not None and _finished(Path(run_dir), cfg):
            log(f"{run_dir} already finished its {cfg.epochs} epochs (metrics.json is written): nothing to do")
            return Path(run_dir)
        if place.is_main:
            made = run_dir is None
            run_dir = run_dir or runs.new_run_dir(cfg)
            io.remove_temp_files(run_dir)  # left by a kill during a save
            io.write_json(run_dir / "config.json", cfg.to_dict())
        return _train(cfg, Path(run_dir) if run_dir else None, resume, place, log, wall_start, on_epoch, draw_later)
    except BaseException:
        if place.is_main and not resume:
            runs.discard_unstarted(Path(run_dir), made)
        raise
    finally:
        devices.teardown(place)


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """Trained to its last epoch and reported: resuming would only reload the data and re-test.
    A run killed between its last checkpoint and metrics.json is not finished: finish() redoes that."""
    ckpt = runs.load_checkpoint(run_dir)  # a damaged checkpoint is still an error here
    return ckpt is not None and ckpt["epoch"] >= cfg.epochs and (run_dir / "metrics.json").is_file()


def _train(cfg: TrainConfig, run_dir: Path | None, resume: bool, place: devices.Placement, log: Log,
           wall_start: float, on_epoch: OnEpoch | None, draw_later: bool) -> Path | None:
    from digitlab.report import training as report

    state = setup(cfg, run_dir, resume, place, log)
    try:
        for epoch in range(state.epoch, cfg.epochs):
            if not run_epoch(state, epoch, on_epoch):
                break
        if not place.is_main:
            return None
        done = finish(state, wall_start)
        report.write(done, draw=not draw_later)
    finally:
        if state.writer is not None:
            state.writer.close()
    done.metrics["wall_seconds"] = round(time.perf_counter() - wall_start, 2)  # with the reports drawn here
    io.write_json(run_dir / "metrics.json", done.metrics)
    log(f"stopped: {state.stop_reason}; best epoch {done.metrics['best_epoch']}; "
        + "  ".join(f"test {k} {_fmt(k, v)}" for k, v in done.test.items() if isinstance(v, float)))
    log(f"run saved in {run_dir}  ({done.metrics['wall_seconds']:.1f} s)")
    if draw_later and cfg.figures:  # after metrics.json: the report reads it
        log(f"figures and report.html: being drawn in the background (a few seconds; log: "
            f"{report.draw_in_background(run_dir)})")
    return run_dir


def setup(cfg: TrainConfig, run_dir: Path | None, resume: bool, place: devices.Placement,
          log: Log) -> TrainState:
    """Data, model, optimiser, schedule; with `resume`, restored from the run's checkpoint."""
    dev = place.device
    task = get_task(cfg.task)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    task.setup(cfg, dev)
    model = task.build_model(cfg).to(dev)
    net: nn.Module = model
    if place.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    optimizer = make_optimizer(cfg, model.parameters())
    ema = _moving_average(model, cfg.ema)
    # Drop the ragged last batch: every step has the same size, on every rank.
    steps = task.train_size // cfg.batch_size
    if steps < 1:
        raise DigitlabError(f"batch_size {cfg.batch_size} is larger than the training split "
                            f"({task.train_size} examples)", "lower batch_size or raise subset")
    amp_dtype = _amp_dtype(cfg, dev)
    state = TrainState(cfg, run_dir, place, task, model, net, optimizer,
                       Schedule(cfg, optimizer, steps, task.primary_mode),
                       torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), ema, amp_dtype, steps, log)
    if resume:
        _resume(state)
    state.writer = _tensorboard(cfg, run_dir, log) if place.is_main else None
    log(f"training {cfg.task} / {cfg.model} ({count_params(model):,} parameters) on {dev}"
        f"{f' x{place.world_size} ranks' if place.distributed else ''}, "
        f"{torch.get_num_threads()} CPU threads, {task.train_size:,} train examples, "
        f"{steps} steps of {cfg.batch_size} per epoch")
    if state.epoch >= cfg.epochs:
        state.stop_reason = "already finished"
    return state


def _resume(state: TrainState) -> None:
    run_dir = state.run_dir
    ckpt = runs.load_checkpoint(run_dir) if state.place.is_main or run_dir else None
    if ckpt is None:
        raise DigitlabError(f"no checkpoint.pt in {run_dir}", "start a new run without --resume")
    state.restore(ckpt)
    state.history = runs.read_history(run_dir)[:state.epoch]
    state.log(f"resuming {run_dir} after epoch {state.epoch}")


def run_epoch(state: TrainState, epoch: int, on_epoch: OnEpoch | None = None) -> bool:
    """Train epoch `epoch` (0-based), validate, checkpoint. False: stop (state.stop_reason says why)."""
    cfg, place, task = state.cfg, state.place, state.task
    sums, seconds = _train_steps(state, epoch)
    record = {"epoch": epoch + 1, **{f"train_{k}": v.item() / state.steps for k, v in sums.items()}}
    val = task.evaluate(state.scored, "val") if place.is_main else {}
    record.update({f"val_{k}": v for k, v in val.items()})
    metric = devices.broadcast_float(val.get(task.primary_metric, 0.0), place)
    record.update(lr=state.optimizer.param_groups[0]["lr"], seconds=round(seconds, 3))
    state.schedule.after_epoch(metric)
    if state.sign * metric > state.best:
        state.best, state.bad_epochs = state.sign * metric, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in state.scored.state_dict().items()}
    else:
        state.bad_epochs += 1
    state.epoch = epoch + 1
    state.history.append(record)
    if place.is_main:
        runs.write_history(state.run_dir, state.history)
        _log_scalars(state.writer, record)
        runs.save_checkpoint(state.run_dir, state.checkpoint())
    state.log(_epoch_line(record, cfg.epochs))
    if on_epoch is not None and place.is_main:
        on_epoch(record)
    if cfg.target is not None and state.sign * metric >= state.sign * cfg.target:
        state.stop_reason = f"validation {task.primary_metric} reached target {cfg.target}"
        return False
    if cfg.patience and state.bad_epochs >= cfg.patience:
        state.stop_reason = f"no validation improvement for {cfg.patience} epochs"
        return False
    return True


def _train_steps(state: TrainState, epoch: int) -> tuple[dict[str, torch.Tensor], float]:
    """One pass over the training split: (summed step outputs, seconds)."""
    cfg, place, task, dev = state.cfg, state.place, state.task, state.place.device
    epoch_seed = cfg.seed * EPOCH_SEED_STRIDE + epoch
    torch.manual_seed(epoch_seed + place.rank)  # dropout and any other global-RNG use
    order = torch.randperm(task.train_size, generator=torch.Generator().manual_seed(epoch_seed))
    aug_gen = torch.Generator(dev).manual_seed(epoch_seed * 31 + place.rank)
    state.model.train()
    sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=state.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
               disable=None if (cfg.progress and place.is_main) else True, file=sys.stderr)
    for step in range(state.steps):
        index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        if place.distributed:
            index = index[place.rank::place.world_size]
        out = _step(state, task.train_batch(index.to(dev), aug_gen))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        if not bar.disable and (step % 20 == 0 or step == state.steps - 1):  # .item() syncs a GPU
            bar.set_postfix({k: f"{v.item() / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
        bar.update(1)
        if step % 50 == 49:  # a sync every 50 steps costs nothing; NaN weights must not be saved
            _check_finite(sums["loss"], epoch, step, cfg)
    bar.close()
    _check_finite(sums["loss"], epoch, state.steps - 1, cfg)
    return sums, time.perf_counter() - t0


def _step(state: TrainState, batch: tuple) -> dict[str, torch.Tensor]:
    """Forward, backward and one optimiser step; returns the task's step outputs."""
    dev, amp_dtype, optimizer, scaler = state.place.device, state.amp_dtype, state.optimizer, state.scaler
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = state.task.step(state.net, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    if state.cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), state.cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    state.schedule.after_batch()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return out


def finish(state: TrainState, wall_start: float) -> Finished:
    """Test once with the weights chosen on validation; save the model, model.json, metrics.json."""
    model, task, cfg = state.model, state.task, state.cfg
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    outputs = task.predict(model, "test")  # measured once, with the weights chosen on validation
    test = task.score(outputs, "test")
    metrics = _final_metrics(state, test, wall_start)
    extra = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
             **task.model_meta(model)}
    runs.save_model(state.run_dir, model, cfg, extra)
    io.write_json(state.run_dir / "metrics.json", metrics)
    for name, data in task.records(outputs).items():
        io.write_json(state.run_dir / name, data)
    return Finished(state.run_dir, cfg, task, model, outputs, test, metrics, state.writer)


def _final_metrics(state: TrainState, test: dict, wall_start: float) -> dict:
    """metrics.json: test metrics, the best epoch's validation metrics, cost and environment."""
    history, dev, key = state.history, state.place.device, f"val_{state.task.primary_metric}"
    best_epoch = 1 + max(range(len(history)), key=lambda i: state.sign * history[i].get(key, -math.inf))
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    metrics = {
        **{f"test_{k}": v for k, v in test.items()},
        **{k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
        "best_epoch": best_epoch, "epochs_run": len(history), "stop_reason": state.stop_reason,
        "params": count_params(state.model), "flops_per_image": _forward_flops(state.model, state.task, dev),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(len(history), 1), 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(dev), "threads": torch.get_num_threads(), "world_size": state.place.world_size,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        metrics["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return metrics


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, cfg: TrainConfig) -> None:
    """Stop before a non-finite loss reaches a checkpoint: the last one (previous epoch) stays good."""
    if not bool(torch.isfinite(loss_sum)):
        raise DigitlabError(
            f"training diverged: the loss became {float(loss_sum)} in epoch {epoch + 1} by step {step + 1} "
            f"(lr={cfg.lr}); nothing from this epoch was saved",
            "train again with a lower lr (e.g. 10x lower) or grad_clip=1.0; "
            "checkpoint.pt, if any, still holds the last finite epoch")


def _moving_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights and the BN statistics (torch's AveragedModel), or
    None. Why: on small data the weights of any one step are noisy; their average generalises better
    and varies less between seeds, at the cost of one lerp over the parameters per step."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA step whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (timm's
    rule): the average spans about the last tenth of training so far, so it is not dragged back to
    the random initial weights in the first epochs, then settles at `decay`."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)  # 0-dim tensor: no sync with a GPU
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, weight.to(avg.dtype))
            else:
                avg.copy_(cur)  # integer buffers (BN's batch counter) follow the model

    return update


def _amp_dtype(cfg: TrainConfig, dev: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where supported (no scaler needed), else fp16. On a CPU with
    native bf16 (cpu_amp): bf16, a 1.4x faster train step for digitnet_fast (docs/speed.md)."""
    if dev.type == "cpu":
        return torch.bfloat16 if cfg.cpu_amp and devices.cpu_has_bf16() else None
    if not cfg.amp or dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _forward_flops(model: nn.Module, task: Task, dev: torch.device) -> int:
    """FLOPs of one forward pass on one example, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(*[t.to(dev) for t in task.example_input()])
    return int(counter.get_total_flops())


def _fmt(key: str, value: object) -> str:
    if isinstance(value, float) and key.endswith("acc"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}"]
    parts += [f"{k} {_fmt(k, v)}" for k, v in record.items()
              if k.startswith(("train_", "val_")) and isinstance(v, float)]
    parts += [f"lr {record['lr']:.2e}", f"{record['seconds']:.1f}s"]
    return "  ".join(parts)


def _tensorboard(cfg: TrainConfig, run_dir: Path, log: Log = print) -> SummaryWriter | None:
    if not cfg.tensorboard:
        return None
    # TensorBoard is the optional `tensorboard` extra: without it the run is the same, minus RUN/tb/.
    from digitlab.extras import note_missing

    note = note_missing("tensorboard", "no TensorBoard logs are written (RUN/tb/)")
    if note:
        log(note)
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


def _log_scalars(writer: SummaryWriter | None, record: dict) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, float) and key != "epoch":
            split, _, name = key.partition("_")
            tag = f"{name}/{split}" if split in ("train", "val") else key
            writer.add_scalar(tag, value, record["epoch"])
    writer.flush()
