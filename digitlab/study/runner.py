"""Run a study's trials through an Optuna study in a database, one process or many, one machine or many.

The trial list is fixed (settings x seeds). Each Optuna trial carries its spec's `key` as a user
attribute; a worker claims the next key that has no COMPLETE or RUNNING trial. Claims are made
under a lock, so two workers never run the same key:

  * the lock is a row with a unique name (an Optuna study called `NAME:lock`): creating it succeeds
    for exactly one process, on SQLite and PostgreSQL alike; the holder deletes it by id. A lock
    seen unchanged for LOCK_STALE_S (its holder died inside a sub-second section) is broken by id,
    so a breaker can never delete a newer lock.
  * Optuna's own WAITING->RUNNING pop is not used: on SQLite its read and write are not one
    transaction, so two processes could both pop the same trial.

Dead trials are redone. Before claiming, a worker fails RUNNING trials whose owner is gone: on this
host, a pid that no longer exists (immediate); anywhere, a heartbeat older than 3 x the interval
(Optuna's RDBStorage heartbeat, for other machines). A run directory left by a dead trial resumes
from its checkpoint. Finished trials are never run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

from digitlab import io
from digitlab.errors import DigitlabError
from digitlab.study.spec import StudySpec, TrialSpec

HEARTBEAT_S = 10
LOCK_STALE_S = 30.0
TABLE_RACE_TRIES = 5


# --------------------------------------------------------------------------- storage and lock


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat: float = HEARTBEAT_S):
    """RDBStorage with heartbeats; SQLite waits for its write lock instead of failing at once."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive heartbeats ourselves (claim + Heartbeat), not through Study.optimize: silence that.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    url = _postgres_driver(url)
    for attempt in range(TABLE_RACE_TRIES):
        try:
            with _creation_lock(url):
                return optuna.storages.RDBStorage(url, heartbeat_interval=max(1, int(heartbeat)),
                                                  grace_period=max(3, int(3 * heartbeat)), **kwargs)
        except ImportError as exc:
            raise DigitlabError(f"cannot open {url.split('://')[0]} storage: {exc}",
                                "pip install 'digitlab[postgres]' (psycopg2-binary) for PostgreSQL") from None
        except Exception as exc:  # sqlalchemy.exc.OperationalError etc.: name the URL, not a stack
            # Two processes opening a new database at once both create its tables; the loser sees
            # "table ... already exists" (or a duplicate schema version) and only has to open it again.
            raced = any(m in str(exc) for m in ("already exists", "UNIQUE constraint failed: alembic_version"))
            if raced and attempt + 1 < TABLE_RACE_TRIES:
                time.sleep(0.1 * (attempt + 1))
                continue
            raise DigitlabError(f"cannot open storage {url}: {exc}", "check the URL and that the server is up") from None


def _creation_lock(url: str):
    """For a SQLite file, a lock file beside it so that processes of this machine open (and on
    first use create) the database one at a time; servers (PostgreSQL) rely on the retry above."""
    from filelock import FileLock

    path = url.split("sqlite:///", 1)[1] if url.startswith("sqlite:///") else ""
    return FileLock(f"{path}.lock") if path and path != ":memory:" else contextlib.nullcontext()


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (our [postgres] extra) if that is what is installed."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


@contextlib.contextmanager
def storage_lock(storage, name: str):
    """Mutual exclusion across processes and machines through the unique study-name constraint.

    The lock records its owner; a lock whose owner died on this host is taken over at once, any
    other after LOCK_STALE_S (its owner may be alive on another machine)."""
    import optuna
    from optuna.study import StudyDirection

    lock, seen = f"{name}:lock", {}
    while True:
        try:
            lock_id = storage.create_new_study([StudyDirection.MINIMIZE], lock)
            break
        except optuna.exceptions.DuplicatedStudyError:
            with contextlib.suppress(KeyError):
                other = storage.get_study_id_from_name(lock)
                owner = storage.get_study_user_attrs(other).get("owner", {})
                if _died_here(owner) or time.monotonic() - seen.setdefault(other, time.monotonic()) > LOCK_STALE_S:
                    with contextlib.suppress(KeyError):
                        storage.delete_study(other)  # by id: a newer lock is never removed
            time.sleep(0.02 + 0.08 * random.random())
    try:
        storage.set_study_user_attr(lock_id, "owner", _this_process())
        yield
    finally:
        with contextlib.suppress(KeyError):
            storage.delete_study(lock_id)


def open_study(storage, name: str, direction: str, fingerprint: str):
    """Create the study (first process) or load it, checking it was made for the same trial list."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=f"{direction}imize")
        study.set_user_attr("trials", fingerprint)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    for _ in range(100):  # its creator may not have written the fingerprint yet
        stored = study.user_attrs.get("trials")
        if stored is not None:
            break
        time.sleep(0.1)
    if stored != fingerprint:
        if not extends(stored, fingerprint):
            raise DigitlabError(f"the database already holds a study {name!r} with a different trial list",
                                "use another --out folder (or --storage), or delete the old study")
        study.set_user_attr("trials", fingerprint)  # more seeds or settings: finished trials are kept
    return study


def extends(old: str, new: str) -> bool:
    """True when the fingerprint `new` keeps every trial of `old` unchanged and only adds trials."""
    return only_adds(json.loads(old), json.loads(new))


def only_adds(old: list, new: list) -> bool:
    """True when the trial list `new` holds every entry of `old` unchanged (and maybe more)."""
    return all(t in new for t in old)


# --------------------------------------------------------------------------- claiming


def _this_process() -> dict:
    """Who holds a lock or runs a trial: {"host", "pid"}, so others can tell whether it died."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _died_here(owner: dict) -> bool:
    """True when `owner` ({"host", "pid"}) was a process of this host that no longer exists."""
    return owner.get("host") == socket.gethostname() and not _alive(owner.get("pid"))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def reap_dead(study) -> int:
    """Fail RUNNING trials whose process is gone (this host) or whose heartbeat went stale, and
    trials without a key: claim() sets the key under the lock, which is held now, so a keyless
    RUNNING trial is one whose claimer died between ask() and naming it."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "key" not in t.user_attrs or _died_here(t.user_attrs):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                n += bool(study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL))
    return n


def claim(study, trials: list[TrialSpec], skip: set[str]):
    """(optuna trial, spec) for the next key with no COMPLETE or RUNNING trial, else (None, busy)."""
    from optuna.trial import TrialState

    with storage_lock(study._storage, study.study_name):
        reap_dead(study)  # under the lock: see its docstring
        states: dict[str, set] = {}
        for t in study.get_trials(deepcopy=False):
            if "key" in t.user_attrs:
                states.setdefault(t.user_attrs["key"], set()).add(t.state)
        busy = False
        for spec in trials:
            got = states.get(spec.key, set())
            if TrialState.COMPLETE in got:
                continue
            if TrialState.RUNNING in got:
                busy = True
                continue
            if spec.key in skip:
                continue
            trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)  # so a crash right here goes stale
            for name, value in {"key": spec.key, "label": spec.label, "seed": spec.seed,
                                **_this_process()}.items():
                trial.set_user_attr(name, value)
            return (trial, spec), busy
    return None, busy


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the block runs."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat only matters if many are missed
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


# --------------------------------------------------------------------------- study folder


def read_plan(folder: Path) -> tuple[StudySpec, list[TrialSpec]]:
    plan = io.read_json(folder / "study.json")
    spec = StudySpec(**{k: v for k, v in plan["spec"].items() if k != "settings"})
    return spec, [TrialSpec(**t) for t in plan["trials"]]


def write_plan(folder: Path, spec: StudySpec, trials: list[TrialSpec], source: str) -> None:
    """STUDY/study.json: what every worker runs. A rerun that only adds trials (more seeds, more
    settings) extends the plan; one that changes a trial (epochs, subset, other overrides) is refused."""
    plan = {"spec": {k: v for k, v in dataclasses.asdict(spec).items() if k != "settings"},
            "source": source, "trials": [dataclasses.asdict(t) for t in trials]}
    path = folder / "study.json"
    if path.is_file():
        old = io.read_json(path)
        if old.get("trials") == plan["trials"]:
            return
        if not only_adds(old.get("trials", []), plan["trials"]):
            raise DigitlabError(f"{folder} holds a study with other settings (epochs, subset or overrides differ)",
                                "rerun with the same options (adding seeds or settings is fine), "
                                "pick another --out, or delete the folder")
        print(f"study {folder.name}: adding {len(plan['trials']) - len(old.get('trials', []))} trials "
              f"to the {len(old.get('trials', []))} it had", flush=True)
    io.write_json(path, plan)


def fingerprint(trials: list[TrialSpec]) -> str:
    return json.dumps([[t.key, t.overrides] for t in trials], sort_keys=True)


# --------------------------------------------------------------------------- running


def run_trial(folder: Path, spec: StudySpec, ts: TrialSpec, trial, threads: int, heartbeat: float) -> bool:
    """Train one trial into STUDY/runs/KEY (resuming a dead attempt's checkpoint) and tell Optuna."""
    from optuna.trial import TrialState

    from digitlab.engine import loop

    study = trial.study
    run_dir = folder / "runs" / ts.key
    overrides = {"progress": False, **({"threads": threads} if threads else {}), **ts.overrides}
    cfg = spec.resolve(dataclasses.replace(ts, overrides=overrides))
    resume = _resumable(run_dir, cfg, ts.key)
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with Heartbeat(study._storage, trial._trial_id, heartbeat):
            loop.train(cfg, run_dir=run_dir, resume=resume, quiet=True)
        metrics = io.read_json(run_dir / "metrics.json")
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        print(f"  {ts.key}: FAILED ({type(exc).__name__}: {exc})", flush=True)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / SystemExit: stop the worker too
        return False
    trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    value = metrics.get(f"val_{spec.metric}")
    if not isinstance(value, (int, float)) or value != value:
        trial.set_user_attr("error", f"metrics.json has no finite val_{spec.metric}")
        study.tell(trial, state=TrialState.FAIL)
        return False
    study.tell(trial, float(value))
    test = metrics.get(f"test_{spec.metric}")
    print(f"  {ts.key}: val {spec.metric} {_fmt(value)}  test {spec.metric} {_fmt(test)}  "
          f"({time.perf_counter() - t0:.1f} s, pid {os.getpid()})", flush=True)
    return True


def _resumable(run_dir: Path, cfg, key: str) -> bool:
    """A dead attempt's checkpoint is resumed if it is for this config and loads; a damaged one
    would fail every retry, so the trial then starts from scratch instead."""
    from digitlab.engine import run as runs
    from digitlab.errors import DigitlabError

    if not ((run_dir / "checkpoint.pt").is_file() and _same_config(run_dir, cfg)):
        return False
    try:
        runs.load_checkpoint(run_dir)
    except DigitlabError as exc:
        print(f"  {key}: {exc.problem}; starting this trial from scratch", flush=True)
        return False
    return True


def _same_config(run_dir: Path, cfg) -> bool:
    try:
        return io.read_json(run_dir / "config.json") == json.loads(json.dumps(cfg.to_dict()))
    except (OSError, ValueError):
        return False


def _fmt(value) -> str:
    if isinstance(value, float) and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def work(folder: str | Path, url: str, threads: int = 0, heartbeat: float = HEARTBEAT_S) -> int:
    """One worker: claim and run trials until every key is COMPLETE (or failed here). Returns runs done."""
    folder = Path(folder)
    spec, trials = read_plan(folder)
    study = open_study(open_storage(url, heartbeat), folder.name, spec.mode, fingerprint(trials))
    skip: set[str] = set()  # keys that raised in this worker: retried on the next rerun, not now
    done = 0
    while True:
        got, busy = claim(study, trials, skip)
        if got is None:
            if not busy:
                return done
            time.sleep(min(heartbeat, 5))  # others still run trials; a dead one becomes claimable
            continue
        trial, ts = got
        if run_trial(folder, spec, ts, trial, threads, heartbeat):
            done += 1
        else:
            skip.add(ts.key)


def _worker_entry(folder: str, url: str, threads: int, heartbeat: float) -> None:
    try:
        work(folder, url, threads, heartbeat)
    except KeyboardInterrupt:
        pass
    except DigitlabError as exc:
        print(f"error: {exc}", flush=True)
        raise SystemExit(2) from None


def run_study(spec: StudySpec, folder: Path, extra: dict, source: str = "", workers: int = 1,
              storage: str | None = None, heartbeat: float = HEARTBEAT_S) -> dict:
    """Plan the trials, run them with `workers` processes, and return a status count."""
    trials = spec.trials(extra)
    for ts in trials:  # a typo fails now, not after an hour of training
        spec.resolve(ts)
    folder.mkdir(parents=True, exist_ok=True)
    write_plan(folder, spec, trials, source)
    url = storage or default_storage(folder)
    study = open_study(open_storage(url, heartbeat), folder.name, spec.mode, fingerprint(trials))
    explicit = "threads" in extra or "threads" in spec.base
    threads = 0 if explicit else max(1, (os.cpu_count() or 1) // workers)
    done_before = _count(study, trials)["complete"]
    print(f"study {spec.name}: {len(trials)} trials ({done_before} already complete) in {folder}, "
          f"{workers} worker{'s' * (workers > 1)}, storage {url.split('://')[0]}", flush=True)
    if workers <= 1:
        work(folder, url, threads, heartbeat)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_entry, args=(str(folder), url, threads, heartbeat))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join(30)
            raise
    return _count(study, trials)


def _count(study, trials: list[TrialSpec]) -> dict:
    from optuna.trial import TrialState

    keys = {t.key for t in trials}
    complete = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return {"trials": len(keys), "complete": len(keys & complete)}
