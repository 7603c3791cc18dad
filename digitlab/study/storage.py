"""The Optuna database of a study or a tuning: SQLite in the study folder by default, PostgreSQL for
several machines. Its trials carry heartbeats; one whose worker died is failed and queued again."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from digitlab.errors import DigitlabError

HEARTBEAT_S = 10
MAX_RETRY = 3  # a trial whose worker died this often stays failed until the next rerun
TABLE_RACE_TRIES = 5


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat: float = HEARTBEAT_S):
    """RDBStorage whose RUNNING trials go stale after 3 x `heartbeat` s of silence and are then queued again."""
    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sqlite = url.startswith("sqlite")
    kwargs = dict(heartbeat_interval=max(1, round(heartbeat)), grace_period=max(3, round(3 * heartbeat)),
                  heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
                  # SQLite: wait up to 60 s for another process's write; pysqlite's own BEGIN off (see below)
                  engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {})
    for attempt in range(TABLE_RACE_TRIES):
        try:
            storage = optuna.storages.RDBStorage(_postgres_driver(url), **kwargs)
            break
        except ImportError as exc:
            raise DigitlabError(f"cannot open {url.split('://')[0]} storage: {exc}",
                                "pip install 'digitlab[postgres]' (psycopg2-binary) for PostgreSQL") from None
        except Exception as exc:  # sqlalchemy.exc.OperationalError etc.: name the URL, not a stack
            # Two processes creating a new database's tables at once: the loser only has to open it again.
            raced = any(m in str(exc) for m in ("already exists", "UNIQUE constraint failed: alembic_version"))
            if not raced or attempt + 1 == TABLE_RACE_TRIES:
                raise DigitlabError(f"cannot open storage {url}: {exc}", "check the URL and that the server is up") from None
            time.sleep(0.1 * (attempt + 1))
    if sqlite:
        # pysqlite would run Optuna's "still WAITING? then RUNNING" as a read outside any transaction plus a
        # write, so two workers could pop the same trial; BEGIN IMMEDIATE takes the write lock first and makes
        # it one step (SQLAlchemy's SQLite dialect docs, "Serializable isolation / Savepoints / Transactional DDL").
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (our [postgres] extra) if that is what is installed."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url
