"""Shared test fixtures. Keep this small: put fixtures used by one file in that file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The repository is cloned beside shared/, which holds the MNIST .gz files.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Folder with the four real MNIST IDX files (env DIGITLAB_TEST_MNIST overrides); read-only."""
    path = Path(os.environ.get("DIGITLAB_TEST_MNIST") or SHARED_MNIST)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if not all((path / n).is_file() or (path / f"{n}.gz").is_file() for n in names):
        pytest.skip(f"real MNIST not found in {path}: set DIGITLAB_TEST_MNIST to a folder with the four IDX files")
    return path


@pytest.fixture(autouse=True)
def digitlab_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own DIGITLAB_CACHE, so no test reads or writes the user's cache."""
    cache = tmp_path_factory.mktemp("digitlab-cache")
    monkeypatch.setenv("DIGITLAB_CACHE", str(cache))
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)  # a developer's setting must not leak in
    return cache
