"""Small builders several test files share: an untrained run folder, a live server in a thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from digitlab import io as dio
from digitlab.config import resolve
from digitlab.engine import run as runs
from digitlab.models import registry


def untrained_run(run: Path, task: str = "recognize", model: str = "digitnet", model_args: dict | None = None,
                  seed: int = 0, metrics: dict | None = None) -> Path:
    """A run folder with untrained, seeded weights: enough to check the plumbing, in well under a second."""
    cfg = resolve(task, None, {"model": model, "model_args": model_args or {}})
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    dio.write_json(run / "config.json", cfg.to_dict())
    runs.save_model(run, registry.create(cfg.model, **cfg.model_kwargs()).eval(), cfg)
    if metrics is not None:
        dio.write_json(run / "metrics.json", metrics)
    return run


@contextmanager
def live_server(app, **config) -> Iterator[int]:
    """`app` under a real uvicorn server on a free loopback port, in a thread; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
