"""The optional parts of digitlab (pip extras) and the one check that names the extra a command needs.

`pip install digitlab` brings what recognising, denoising and comparing digits (and training those
models, with their figures and reports) need. The rest is opt-in; a command that needs an extra
calls `require(...)` before importing it, so a missing package gives one error with the fix instead
of a ModuleNotFoundError traceback. EXTRAS must list the same distributions as pyproject.toml's
[project.optional-dependencies] (tests/test_startup.py checks it).
"""

from __future__ import annotations

import importlib.util

from digitlab.errors import DigitlabError

# extra -> ((module to look for, distribution pip installs), ...)
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "serve": (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")),
    "export": (("onnx", "onnx"),),  # onnxruntime is a core dependency (digitlab/lite.py)
    "study": (("optuna", "optuna"),),
    "tensorboard": (("tensorboard", "tensorboard"),),
    "baselines": (("skimage", "scikit-image"), ("scipy", "scipy")),
}


def missing(extra: str) -> str | None:
    """The first distribution of `extra` that is not installed, or None when all are.

    find_spec only locates the package on sys.path; nothing is imported, so the check is cheap."""
    for module, distribution in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return distribution
    return None


def require(extra: str, what: str) -> None:
    """Raise DigitlabError naming `what` (e.g. "`digitlab serve`") and the extra when it is not installed."""
    distribution = missing(extra)
    if distribution is not None:
        raise DigitlabError(f"{what} needs the {extra} extra ({distribution} is not installed)",
                            f"pip install 'digitlab[{extra}]'")


def note_missing(extra: str, skipped: str) -> str | None:
    """For optional steps that are skipped rather than fatal: the line saying what is skipped and why."""
    distribution = missing(extra)
    if distribution is None:
        return None
    return f"note: {distribution} is not installed, so {skipped} (pip install 'digitlab[{extra}]')"
