"""The one training loop. Reads top to bottom: per epoch draw a seeded permutation, train on
index batches, evaluate on validation, keep the best weights, checkpoint, maybe stop; at the end
measure the test split once with the best weights and write the run's files.

Every epoch's randomness (shuffle, augmentation, dropout) is seeded from (seed, epoch), so a run
resumed from its checkpoint after epoch k continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from pathlib import Path

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
from digitlab.tasks.base import get_task

EPOCH_SEED_STRIDE = 1_000_003


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False,
          quiet: bool = False, on_epoch=None) -> Path:
    """Train `cfg`, writing everything into `run_dir` (a new one if None). Returns the run dir.

    `on_epoch(record)`, if given, sees each finished epoch's history record on the main process
    and may raise to abort the run (a tuner's pruning: optuna.TrialPruned)."""
    wall_start = time.perf_counter()
    place = devices.setup(cfg.device, cfg.threads)
    log = (lambda *a: None) if (quiet or not place.is_main) else (lambda *a: print(*a, flush=True))
    made = False
    try:
        if place.is_main:
            made = run_dir is None
            run_dir = run_dir or runs.new_run_dir(cfg)
            io.remove_temp_files(run_dir)  # left by a kill during a save
            io.write_json(run_dir / "config.json", cfg.to_dict())
        return _train(cfg, Path(run_dir) if run_dir else None, resume, place, log, wall_start, on_epoch)
    except BaseException:
        if place.is_main and not resume:
            runs.discard_unstarted(Path(run_dir), made)
        raise
    finally:
        devices.teardown(place)


def _train(cfg, run_dir, resume, place, log, wall_start, on_epoch=None) -> Path | None:
    dev = place.device
    task = get_task(cfg.task)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    task.setup(cfg, dev)
    model = task.build_model(cfg).to(dev)
    params = count_params(model)
    net: nn.Module = model
    if place.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    optimizer = make_optimizer(cfg, model.parameters())
    ema = _moving_average(model, cfg.ema)
    scored = ema.module if ema is not None else model  # the weights validation and test see
    # Drop the ragged last batch: every step has the same size, on every rank.
    steps = task.train_size // cfg.batch_size
    if steps < 1:
        raise DigitlabError(f"batch_size {cfg.batch_size} is larger than the training split "
                            f"({task.train_size} examples)", "lower batch_size or raise subset")
    schedule = Schedule(cfg, optimizer, steps, task.primary_mode)
    amp_dtype = _amp_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    sign = 1.0 if task.primary_mode == "max" else -1.0

    start_epoch, best, bad_epochs, best_state, history = 0, -math.inf, 0, None, []
    if resume:
        ckpt = runs.load_checkpoint(run_dir) if place.is_main or run_dir else None
        if ckpt is None:
            raise DigitlabError(f"no checkpoint.pt in {run_dir}", "start a new run without --resume")
        _restore(ckpt, run_dir, model, optimizer, schedule, scaler, ema)
        start_epoch, best, bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]
        best_state, history = ckpt["best_state"], runs.read_history(run_dir)[:start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}")

    writer = _tensorboard(cfg, run_dir, log) if place.is_main else None
    log(f"training {cfg.task} / {cfg.model} ({params:,} parameters) on {dev}"
        f"{f' x{place.world_size} ranks' if place.distributed else ''}, "
        f"{torch.get_num_threads()} CPU threads, {task.train_size:,} train examples, "
        f"{steps} steps of {cfg.batch_size} per epoch")
    stop_reason = "epochs done" if start_epoch < cfg.epochs else "already finished"
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    for epoch in range(start_epoch, cfg.epochs):
        epoch_seed = cfg.seed * EPOCH_SEED_STRIDE + epoch
        torch.manual_seed(epoch_seed + place.rank)  # dropout and any other global-RNG use
        order = torch.randperm(task.train_size, generator=torch.Generator().manual_seed(epoch_seed))
        aug_gen = torch.Generator(dev).manual_seed(epoch_seed * 31 + place.rank)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=None if (cfg.progress and place.is_main) else True, file=sys.stderr)
        for step in range(steps):
            index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if place.distributed:
                index = index[place.rank::place.world_size]
            batch = task.train_batch(index.to(dev), aug_gen)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = task.step(net, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.after_batch()
            if ema is not None:
                ema.update_parameters(model)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
            if not bar.disable and (step % 20 == 0 or step == steps - 1):  # .item() syncs a GPU
                bar.set_postfix({k: f"{v.item() / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
            bar.update(1)
            if step % 50 == 49:  # a sync every 50 steps costs nothing; NaN weights must not be saved
                _check_finite(sums["loss"], epoch, step, cfg)
        bar.close()
        _check_finite(sums["loss"], epoch, steps - 1, cfg)
        seconds = time.perf_counter() - t0
        train_seconds += seconds

        record = {"epoch": epoch + 1, **{f"train_{k}": v.item() / steps for k, v in sums.items()}}
        val = task.evaluate(scored, "val") if place.is_main else {}
        record.update({f"val_{k}": v for k, v in val.items()})
        metric = devices.broadcast_float(val.get(task.primary_metric, 0.0), place)
        record.update(lr=optimizer.param_groups[0]["lr"], seconds=round(seconds, 3))
        schedule.after_epoch(metric)
        if sign * metric > best:
            best, bad_epochs = sign * metric, 0
            best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
        else:
            bad_epochs += 1
        history.append(record)
        if place.is_main:
            runs.write_history(run_dir, history)
            _log_scalars(writer, record)
            runs.save_checkpoint(run_dir, {
                "epoch": epoch + 1, "best": best, "bad_epochs": bad_epochs, "best_state": best_state,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None})
        log(_epoch_line(record, cfg.epochs))
        if on_epoch is not None and place.is_main:
            on_epoch(record)
        if cfg.target is not None and sign * metric >= sign * cfg.target:
            stop_reason = f"validation {task.primary_metric} reached target {cfg.target}"
            break
        if cfg.patience and bad_epochs >= cfg.patience:
            stop_reason = f"no validation improvement for {cfg.patience} epochs"
            break

    if not place.is_main:
        return None
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    test = task.evaluate(model, "test")  # measured once, with the weights chosen on validation
    best_epoch = 1 + max(range(len(history)), key=lambda i: sign * history[i].get(f"val_{task.primary_metric}", -math.inf))
    metrics = {
        **{f"test_{k}": v for k, v in test.items()},
        **{k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
        "best_epoch": best_epoch, "epochs_run": len(history), "stop_reason": stop_reason,
        "params": params, "flops_per_image": _forward_flops(model, task, dev),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(len(history), 1), 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(dev), "threads": torch.get_num_threads(), "world_size": place.world_size,
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        metrics["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    extra = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    if hasattr(task, "model_meta"):  # what a task adds to model.json (recognize: its calibration)
        extra.update(task.model_meta(model))
    runs.save_model(run_dir, model, cfg, extra)
    io.write_json(run_dir / "metrics.json", metrics)
    if writer is not None:
        _log_hparams(writer, cfg, metrics)
        writer.close()
    if cfg.figures:
        task.finish(model, run_dir, test)
        _write_reports(run_dir)
    metrics["wall_seconds"] = round(time.perf_counter() - wall_start, 2)
    io.write_json(run_dir / "metrics.json", metrics)
    log(f"stopped: {stop_reason}; best epoch {best_epoch}; "
        + "  ".join(f"test {k} {_fmt(k, v)}" for k, v in test.items() if isinstance(v, float)))
    log(f"run saved in {run_dir}  ({metrics['wall_seconds']:.1f} s)")
    return run_dir


def _restore(ckpt: dict, run_dir: Path, model, optimizer, schedule, scaler, ema) -> None:
    """Load a checkpoint's states; one from another model or config is a clear error."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/KeyError/ValueError/TypeError
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise runs.bad_checkpoint(Path(run_dir) / "checkpoint.pt",
                                  f"it does not fit this run's model and config ({first})") from None


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, cfg: TrainConfig) -> None:
    """Stop before a non-finite loss reaches a checkpoint: the last one (previous epoch) stays good."""
    if not bool(torch.isfinite(loss_sum)):
        raise DigitlabError(
            f"training diverged: the loss became {float(loss_sum)} in epoch {epoch + 1} by step {step + 1} "
            f"(lr={cfg.lr}); nothing from this epoch was saved",
            "train again with a lower lr (e.g. 10x lower) or grad_clip=1.0; "
            "checkpoint.pt, if any, still holds the last finite epoch")


def _moving_average(model: nn.Module, decay: float):
    """An exponential moving average of the weights and the BN statistics (torch's AveragedModel), or
    None. Why: on small data the weights of any one step are noisy; their average generalises better
    and varies less between seeds, at the cost of one lerp over the parameters per step."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)


def _ema_update(decay: float):
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


def _amp_dtype(cfg: TrainConfig, dev: torch.device):
    """Mixed precision on CUDA: bf16 where supported (no scaler needed), else fp16. On a CPU with
    native bf16 (cpu_amp): bf16, a 1.4x faster train step for digitnet_fast (docs/speed.md)."""
    if dev.type == "cpu":
        return torch.bfloat16 if cfg.cpu_amp and devices.cpu_has_bf16() else None
    if not cfg.amp or dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _forward_flops(model: nn.Module, task, dev) -> int | None:
    """FLOPs of one forward pass on one example, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    example = getattr(task, "example_input", None)
    if example is None:
        return None
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(*[t.to(dev) for t in example()])
    return int(counter.get_total_flops())


def _fmt(key: str, value) -> str:
    if isinstance(value, float) and key.endswith("acc"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}"]
    parts += [f"{k} {_fmt(k, v)}" for k, v in record.items()
              if k.startswith(("train_", "val_")) and isinstance(v, float)]
    parts += [f"lr {record['lr']:.2e}", f"{record['seconds']:.1f}s"]
    return "  ".join(parts)


def _tensorboard(cfg: TrainConfig, run_dir: Path, log=print):
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


def _log_scalars(writer, record: dict) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, float) and key != "epoch":
            split, _, name = key.partition("_")
            tag = f"{name}/{split}" if split in ("train", "val") else key
            writer.add_scalar(tag, value, record["epoch"])
    writer.flush()


def _log_hparams(writer, cfg: TrainConfig, metrics: dict) -> None:
    """hparams so TensorBoard's HPARAMS tab lines up runs and trials side by side."""
    flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    flat.update({f"model_args.{k}": str(v) for k, v in cfg.model_kwargs().items()})
    flat.update({f"augment.{k}": str(v) for k, v in cfg.augment.items()})
    scores = {f"hparam/{k}": v for k, v in metrics.items()
              if isinstance(v, float) and k.startswith(("test_", "val_"))}
    writer.add_hparams(flat, scores, run_name=".")


def _write_reports(run_dir: Path) -> None:
    from digitlab.report import figures, html

    figures.plot_history(runs.read_history(run_dir), run_dir / "figures" / "curves.png")
    html.render_run_report(run_dir)
