"""Studies: grid expansion, a 4-trial study end to end, resume after a kill, claims that never
collide (two processes on SQLite, and on a PostgreSQL server started here when installed), reports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from digitlab.errors import DigitlabError
from digitlab.study import report, runner, spec as specs, storage as storages

TINY = {"model": "cnn_r3", "epochs": 1, "subset": 0.01, "val_size": 500, "threads": 1,
        "schedule": "none", "figures": False, "progress": False}


def _study_file(tmp_path: Path, mnist_dir: Path, name: str = "tiny", **base) -> Path:
    data = {"name": name, "task": "recognize", "base": {**TINY, "data_dir": str(mnist_dir), **base},
            "grid": {"lr": [0.003, 0.001, 0.0003, 0.0001]}, "seeds": [0], "metric": "acc"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _trials_by_key(folder: Path) -> dict[str, list]:
    import optuna

    study = optuna.load_study(study_name=folder.name, storage=storages.open_storage(storages.default_storage(folder)))
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs.get("key"), []).append(t.state.name)
    return out


# --------------------------------------------------------------------------- spec


def test_grid_expands_settings_times_seeds_with_stable_keys():
    spec = specs.from_dict({"task": "recognize", "name": "s", "grid": {"optimizer": ["adam", "sgd"], "lr": [0.1, 0.01]},
                            "seeds": [0, 1], "labels": {"optimizer=adam, lr=0.1": "Adam fast"}})
    trials = spec.trials({"epochs": 1})
    assert len(trials) == 8
    assert trials[0].key == "Adam_fast-s0" and trials[0].label == "Adam fast"
    assert trials[2].key == "optimizer-adam_lr-0.01-s0"
    assert trials[3].overrides == {"optimizer": "adam", "lr": 0.01, "seed": 1, "epochs": 1}
    assert len({t.key for t in trials}) == 8


def test_trials_list_and_errors():
    spec = specs.from_dict({"task": "recognize", "trials": [{"label": "off"}, {"label": "on", "augment": {"rotate": 10}}]})
    assert [t.key for t in spec.trials()] == ["off-s0", "on-s0"]
    assert spec.resolve(spec.trials()[1]).augment == {"rotate": 10}
    with pytest.raises(DigitlabError, match="exactly one of"):
        specs.from_dict({"task": "recognize", "grid": {"lr": [1]}, "trials": [{}]})
    with pytest.raises(DigitlabError, match="unknown keys"):
        specs.from_dict({"task": "recognize", "grid": {"lr": [1]}, "sedes": [1]})
    bad = specs.from_dict({"task": "recognize", "grid": {"lrr": [1]}})
    with pytest.raises(DigitlabError, match="unknown config key 'lrr'"):
        runner.run_study(bad, Path(tempfile.mkdtemp()), {})


def test_every_shipped_study_file_parses_and_resolves():
    root = Path(__file__).resolve().parents[1] / "configs" / "studies"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        spec = specs.load(path)
        trials = spec.trials(spec.quick)
        assert trials and spec.quick, path
        if spec.task == "recognize":
            for t in trials:
                spec.resolve(t)  # every key is a real config key


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("study")
    path = _study_file(tmp, mnist_dir)
    folder = tmp / "tiny"
    counts = runner.run_study(specs.load(path), folder, {}, source=str(path))
    report.study_report(folder)
    return folder, counts


def test_four_trials_give_four_runs_and_a_four_row_report(tiny_study):
    folder, counts = tiny_study
    assert counts == {"trials": 4, "complete": 4}
    runs = sorted(p.name for p in (folder / "runs").iterdir() if (p / "metrics.json").is_file())
    assert runs == ["lr-0.0001-s0", "lr-0.0003-s0", "lr-0.001-s0", "lr-0.003-s0"]
    assert all(states == ["COMPLETE"] for states in _trials_by_key(folder).values())
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["setting"] for r in summary["rows"]] == ["lr=0.003", "lr=0.001", "lr=0.0003", "lr=0.0001"]
    page = (folder / "report.html").read_text()
    table = page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 4  # header + one row per setting
    md = (folder / "report.md").read_text()
    assert "lr=0.0001" in md and "won with" in md and "| setting |" in md
    # every trial's TensorBoard events sit under the study folder: one logdir shows them all
    assert len(list(folder.glob("runs/*/tb/**/events.out.tfevents.*"))) >= 4


def test_html_report_has_no_external_references(tiny_study):
    folder, _ = tiny_study
    page = (folder / "report.html").read_text()
    assert "<img" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert not re.search(r"https?://|url\(|@import", page)


def test_report_command_for_one_and_several_runs(tiny_study, tmp_path):
    from digitlab.cli import main

    folder, _ = tiny_study
    runs = sorted((folder / "runs").iterdir())
    assert main(["report", str(runs[0])]) == 0
    assert (runs[0] / "report.html").is_file() and (runs[0] / "report.md").is_file()
    assert main(["report", *map(str, runs[:3]), "-o", str(tmp_path / "cmp")]) == 0
    assert len(json.loads((tmp_path / "cmp" / "summary.json").read_text())["rows"]) == 3
    assert main(["report", str(folder)]) == 0  # a study folder: its study report


def test_seeds_option_replaces_the_files_seeds(tmp_path, mnist_dir):
    from digitlab.cli import main

    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"name": "one", "task": "recognize", "base": {**TINY, "data_dir": str(mnist_dir)},
                                    "trials": [{"label": "base"}], "seeds": [0, 1, 2]}))
    folder = tmp_path / "one"
    assert main(["study", str(path), "--seeds", "7", "--out", str(folder), "--no-report"]) == 0
    assert [p.name for p in (folder / "runs").iterdir()] == ["base-s7"]
    assert json.loads((folder / "runs" / "base-s7" / "config.json").read_text())["seed"] == 7
    # more seeds later: the study grows, the finished trial is kept, not run again
    first = (folder / "runs" / "base-s7" / "metrics.json").stat().st_mtime_ns
    assert main(["study", str(path), "--seeds", "7", "8", "--out", str(folder)]) == 0
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["base-s7", "base-s8"]
    assert (folder / "runs" / "base-s7" / "metrics.json").stat().st_mtime_ns == first
    assert json.loads((folder / "summary.json").read_text())["rows"][0]["runs"] == 2


def test_rerun_with_other_settings_is_refused(tiny_study, mnist_dir):
    folder, _ = tiny_study
    spec = specs.load(next(folder.parent.glob("*.yaml")))
    with pytest.raises(DigitlabError, match="other settings"):
        runner.run_study(spec, folder, {"epochs": 2})
    fewer = dataclasses.replace(spec, settings=spec.settings[:2])  # a trial list that drops two of four
    with pytest.raises(DigitlabError, match="2 trials this command leaves out") as caught:
        runner.run_study(fewer, folder, {})
    assert "same --seeds" in caught.value.fix


def test_killed_study_resumes_without_redoing_finished_trials(tmp_path, mnist_dir):
    # Several epochs per trial: a wide window between the 2nd and 3rd trial finishing, even on a quiet machine.
    path = _study_file(tmp_path, mnist_dir, "killed", epochs=6)
    folder = tmp_path / "killed"
    cmd = [sys.executable, "-m", "digitlab", "study", str(path), "--out", str(folder), "--heartbeat", "1", "--no-report"]
    log = open(tmp_path / "study.log", "w")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240

    def complete() -> list[str]:
        if not (folder / "optuna.db").is_file():
            return []
        with contextlib.suppress(Exception):  # the study may not exist yet
            return [k for k, s in _trials_by_key(folder).items() if "COMPLETE" in s]
        return []

    try:
        while time.monotonic() < deadline and len(complete()) < 2:
            assert proc.poll() is None, "study ended before it could be killed:\n" + (tmp_path / "study.log").read_text()[-2000:]
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    before = {k: (folder / "runs" / k / "metrics.json").stat().st_mtime_ns for k in complete()}
    assert 2 <= len(before) < 4
    counts = runner.run_study(specs.load(path), folder, {}, heartbeat=1)
    assert counts == {"trials": 4, "complete": 4}
    after = {p.parent.name: p.stat().st_mtime_ns for p in (folder / "runs").glob("*/metrics.json")}
    assert len(after) == 4
    assert all(after[k] == v for k, v in before.items())  # finished trials were not run again
    states = _trials_by_key(folder)
    assert not any("RUNNING" in s for s in states.values()), states  # the kill's trial was failed, even unnamed
    assert all(s.count("COMPLETE") == 1 for k, s in states.items() if k is not None)
    assert sum(len(s) for k, s in states.items() if k in before) == len(before)


def test_two_worker_processes_share_a_study(tmp_path, mnist_dir):
    path = _study_file(tmp_path, mnist_dir, "two")
    folder = tmp_path / "two"
    counts = runner.run_study(specs.load(path), folder, {}, workers=2)
    assert counts == {"trials": 4, "complete": 4}
    assert all(s == ["COMPLETE"] for s in _trials_by_key(folder).values())


# --------------------------------------------------------------------------- claims under contention


def _claim_all(url: str, name: str, keys: list[str], out: str, barrier) -> None:
    import optuna

    storage = storages.open_storage(url, 2)
    study = optuna.load_study(study_name=name, storage=storage)
    barrier.wait()
    got = []
    while (res := runner.claim(study, storage, set(keys))) is not None:
        trial, _ = res
        got.append(trial.user_attrs["key"])
        time.sleep(0.02)  # "training"
        study.tell(trial.number, 1.0)
    Path(out).write_text(json.dumps(got))


def _race(url: str, tmp_path: Path, n_keys: int = 16) -> None:
    import optuna

    keys = [f"k{i:02d}" for i in range(n_keys)]
    trials = [specs.TrialSpec(k, k, 0, {}) for k in keys]
    assert runner.enqueue(runner.open_study(storages.open_storage(url, 2), "race", "max", trials), trials) == n_keys
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_claim_all, args=(url, "race", keys, str(o), barrier)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    a, b = (json.loads(o.read_text()) for o in outs)
    assert not set(a) & set(b), "two workers ran the same trial"
    assert sorted(a + b) == keys and a and b
    study = optuna.load_study(study_name="race", storage=storages.open_storage(url, 2))
    # one trial per key and no extras: losing the race for the last trial adds no empty trial
    assert sorted(t.user_attrs["key"] for t in study.get_trials()) == keys


def test_two_processes_never_claim_the_same_trial_sqlite(tmp_path):
    _race(f"sqlite:///{tmp_path / 'race.db'}", tmp_path)


def test_trial_of_a_dead_worker_is_queued_again_once_its_heartbeat_is_stale(tmp_path):
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    trials = [specs.TrialSpec("a", "a", 0, {})]
    storage = storages.open_storage(f"sqlite:///{tmp_path / 'dead.db'}", 1)  # stale after 3 s of silence
    study = runner.open_study(storage, "dead", "max", trials)
    runner.enqueue(study, trials)
    assert runner.claim(study, storage, {"a"}) is not None  # its worker dies: no more heartbeats
    assert runner.claim(study, storage, {"a"}) is None  # not stale yet: nothing to claim
    deadline = time.monotonic() + 30
    while (got := runner.claim(study, storage, {"a"})) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert got is not None and got[0].user_attrs["key"] == "a"
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING"]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.get_trials()[1]) == 0


def test_a_key_queued_twice_runs_once_and_an_empty_queue_adds_no_trial(tmp_path):
    trials = [specs.TrialSpec("a", "a", 0, {})]
    storage = storages.open_storage(f"sqlite:///{tmp_path / 'twice.db'}", 60)
    study = runner.open_study(storage, "twice", "max", trials)
    assert runner.claim(study, storage, {"a"}) is None and study.get_trials() == []
    assert runner.enqueue(study, trials) == 1 and runner.enqueue(study, trials) == 0
    study.enqueue_trial({}, user_attrs={"key": "a"})  # a second process queued it at the same moment
    trial, _ = runner.claim(study, storage, {"a"})
    assert trial.number == 0 and runner.claim(study, storage, {"a"}) is None
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "PRUNED"]


def test_opening_a_new_database_survives_a_table_creation_race(tmp_path, monkeypatch):
    import optuna

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):  # another process created the tables between check and create
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.OperationalError) table study_system_attributes already exists")
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    assert storages.open_storage(f"sqlite:///{tmp_path / 'new.db'}") is not None
    assert len(calls) == 2
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk I/O error")))
    with pytest.raises(DigitlabError, match="disk I/O error"):  # any other failure is reported at once
        storages.open_storage(f"sqlite:///{tmp_path / 'other.db'}")


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server (Debian package `postgresql`), or a skip that says why."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server not installed (Debian package `postgresql`)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 not installed: pip install 'digitlab[postgres]'")
    bindir = bins[-1].parent
    prefix: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = data / "db"
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(pg), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(pg), "-w", "-l", str(data / "log"), "-o",
                             f"-p {port} -k {data} -h 127.0.0.1 -F", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(pg), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_processes_never_claim_the_same_trial_postgresql(postgres_url, tmp_path):
    _race(postgres_url, tmp_path)


# --------------------------------------------------------------------------- tune


def test_tune_runs_tpe_trials_reports_each_epoch_and_writes_best(tmp_path, mnist_dir):
    import optuna

    from digitlab.study import tune

    space = {"name": "t", "task": "recognize", "metric": "acc", "mode": "max",
             "base": {**TINY, "model": "digitnet", "epochs": 2, "data_dir": str(mnist_dir)},
             "params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                        "model_args.widths": {"choices": [[4, 8], [8, 16]]}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    study = tune.run_tune(tune.load_space(path), tmp_path / "t", 3, {}, seed=0)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials if t.state.name == "COMPLETE")
    best = yaml.safe_load((tmp_path / "t" / "best.yaml").read_text())
    assert best["lr"] == pytest.approx(study.best_params["lr"])
    assert best["model_args.widths"] in ([4, 8], [8, 16])  # decoded back from JSON
    assert (tmp_path / "t" / "report.html").is_file()
    again = tune.run_tune(tune.load_space(path), tmp_path / "t", 3, {}, seed=0)  # resumes: nothing to do
    assert len(again.get_trials()) == 3
