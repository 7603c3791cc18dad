"""Run a study's fixed trial list (settings x seeds) through an Optuna study in a database, with one
process or many, on one machine or many, on Optuna's public machinery:

  * a queue: each trial not yet done is enqueued once (`Study.enqueue_trial`). Moving a WAITING trial to
    RUNNING succeeds for one process only (see `storage.open_storage`): no two workers run one trial.
  * heartbeats: a RUNNING trial silent for 3 heartbeats is failed and queued again; the next attempt
    resumes the dead one's checkpoint.

Workers pop trials here, not through `Study.ask`, which adds an empty trial when another worker took the
last one; and they record a heartbeat before the pop, so that a worker killed right after it leaves a trial
that goes stale (Optuna never fails a RUNNING trial that has no heartbeat at all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
from optuna.trial import TrialState

from digitlab import io
from digitlab.errors import DigitlabError
from digitlab.study.spec import StudySpec, TrialSpec, read_plan, write_plan
from digitlab.study.storage import HEARTBEAT_S, default_storage, open_storage


def open_study(storage, name: str, direction: str, trials: list[TrialSpec]):
    """Create or load the study. Its trial list may grow (more seeds or settings); a changed trial is refused."""
    study = optuna.create_study(storage=storage, study_name=name, direction=f"{direction}imize", load_if_exists=True)
    plan = json.dumps([[t.key, t.overrides] for t in trials], sort_keys=True)
    old, new = json.loads(study.user_attrs.get("trials", "[]")), json.loads(plan)
    new_keys = {key for key, _ in new}
    changed = [key for key, overrides in old if key in new_keys and [key, overrides] not in new]
    if changed:
        raise DigitlabError(f"study {name!r} holds trials with other settings (epochs, subset or overrides "
                            f"differ: {', '.join(changed[:3])})",
                            "rerun with the same options (adding seeds or settings is fine), "
                            "pick another --out (or --storage), or delete the old study")
    left_out = [key for key, _ in old if key not in new_keys]
    if left_out:
        raise DigitlabError(f"study {name!r} already plans {len(left_out)} trials this command leaves out "
                            f"({', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''}): a study keeps "
                            "its seeds and settings", "rerun with the same --seeds (or more), or pick another --out")
    if old and old != new:
        print(f"study {name}: adding {len(new) - len(old)} trials to the {len(old)} it had", flush=True)
    study.set_user_attr("trials", plan)
    return study


def _attempts(study, *states) -> dict[str, list]:
    """key -> its trials in `states`, oldest first."""
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False, states=states):
        out.setdefault(t.user_attrs.get("key"), []).append(t)
    return out


def enqueue(study, trials: list[TrialSpec]) -> int:
    """Queue each trial with no WAITING, RUNNING or COMPLETE attempt (new, or failed before); returns how many."""
    live = _attempts(study, TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    todo = [ts for ts in trials if ts.key not in live]
    for ts in todo:
        study.enqueue_trial({}, user_attrs={"key": ts.key, "label": ts.label, "seed": ts.seed})
    return len(todo)


def claim(study, storage, keys) -> tuple | None:
    """(trial, trial id) of a WAITING trial of `keys` that this process moved to RUNNING, else None. Stale
    trials are queued again first, as in `Study.optimize`; of a key queued twice (two processes started
    at once) only the oldest live attempt runs."""
    optuna.storages.fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get("key") not in keys:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.record_heartbeat(trial_id)  # before the pop: see the module docstring
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                continue  # another worker popped it
            live = _attempts(study, TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
            if live[t.user_attrs["key"]][0].number == t.number:
                return t, trial_id
            study.tell(t.number, state=TrialState.PRUNED)
    return None


@contextlib.contextmanager
def beating(storage, trial_id: int):
    """Record the trial's heartbeat while the block runs, as `Study.optimize` does for its trials."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            with contextlib.suppress(Exception):  # one missed beat is harmless; three make the trial stale
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(folder: Path, spec: StudySpec, ts: TrialSpec, study, storage, trial_id: int, number: int,
              threads: int) -> None:
    """Train one trial into STUDY/runs/KEY (resuming a dead attempt's checkpoint) and tell Optuna."""
    from digitlab.engine import loop

    run_dir = folder / "runs" / ts.key
    threads_set = {"threads": threads} if threads else {}
    cfg = spec.resolve(dataclasses.replace(ts, overrides={"progress": False, **threads_set, **ts.overrides}))
    resume = _resumable(run_dir, cfg, ts.key)
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with beating(storage, trial_id):
            loop.train(cfg, run_dir=run_dir, resume=resume, quiet=True)
        metrics = io.read_json(run_dir / "metrics.json")
        value = metrics.get(f"val_{spec.metric}")
        if not isinstance(value, (int, float)) or value != value:
            raise DigitlabError(f"metrics.json has no finite val_{spec.metric}", "check the trial's run directory")
    except BaseException as exc:  # the trial fails; the next rerun queues it again
        storage.set_trial_user_attr(trial_id, "error", f"{type(exc).__name__}: {exc}"[:1000])
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        print(f"  {ts.key}: FAILED ({type(exc).__name__}: {exc})", flush=True)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / SystemExit: stop the worker too
        return
    storage.set_trial_user_attr(trial_id, "metrics", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    study.tell(number, float(value), skip_if_finished=True)
    print(f"  {ts.key}: val {spec.metric} {_fmt(value)}  test {spec.metric} {_fmt(metrics.get(f'test_{spec.metric}'))}"
          f"  ({time.perf_counter() - t0:.1f} s, pid {os.getpid()})", flush=True)


def _resumable(run_dir: Path, cfg, key: str) -> bool:
    """A dead attempt's checkpoint is resumed if it is for this config and loads; a damaged one
    would fail every retry, so the trial then starts from scratch instead."""
    from digitlab.engine import run as runs

    try:
        same = io.read_json(run_dir / "config.json") == json.loads(json.dumps(cfg.to_dict()))
        return same and runs.load_checkpoint(run_dir) is not None
    except (OSError, ValueError):  # no or unreadable config.json
        return False
    except DigitlabError as exc:
        print(f"  {key}: {exc.problem}; starting this trial from scratch", flush=True)
        return False


def _fmt(value) -> str:
    if isinstance(value, float) and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def work(folder: Path, url: str, threads: int = 0, heartbeat: float = HEARTBEAT_S) -> None:
    """One worker: pop and run queued trials until none of the plan's keys is WAITING or RUNNING."""
    spec, trials = read_plan(folder)
    storage = open_storage(url, heartbeat)
    study = open_study(storage, folder.name, spec.mode, trials)
    plan = {ts.key: ts for ts in trials}
    while True:
        got = claim(study, storage, plan)
        if got is not None:
            trial, trial_id = got
            run_trial(folder, spec, plan[trial.user_attrs["key"]], study, storage, trial_id, trial.number, threads)
        elif plan.keys() & _attempts(study, TrialState.RUNNING).keys():
            time.sleep(min(heartbeat, 5))  # another worker's trial: it finishes, or goes stale and is queued again
        else:
            return


def run_study(spec: StudySpec, folder: Path, extra: dict, source: str = "", workers: int = 1,
              storage: str | None = None, heartbeat: float = HEARTBEAT_S) -> dict:
    """Plan and queue the trials, run them with `workers` processes, and return a status count."""
    trials = spec.trials(extra)
    for ts in trials:  # a typo fails now, not after an hour of training
        spec.resolve(ts)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(folder)
    study = open_study(open_storage(url, heartbeat), folder.name, spec.mode, trials)
    write_plan(folder, spec, trials, source)
    queued = enqueue(study, trials)
    threads = 0 if "threads" in extra or "threads" in spec.base else max(1, (os.cpu_count() or 1) // workers)
    print(f"study {spec.name}: {len(trials)} trials ({_count(study, trials)['complete']} already complete, "
          f"{queued} queued now) in {folder}, {workers} worker{'s' * (workers > 1)}, "
          f"storage {url.split('://')[0]}", flush=True)
    if workers <= 1:
        work(folder, url, threads, heartbeat)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(work, folder, url, threads, heartbeat) for _ in range(workers)]:
                done.result()  # a worker's error (a DigitlabError) is raised here, after the others end
    return _count(study, trials)


def _count(study, trials: list[TrialSpec]) -> dict:
    complete = {t.key for t in trials} & _attempts(study, TrialState.COMPLETE).keys()
    return {"trials": len(trials), "complete": len(complete)}
