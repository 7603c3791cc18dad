"""digitlab: train, evaluate and serve models for handwritten digits.

    import digitlab
    digitlab.load("recognize").predict("my.png")

`import digitlab` is cheap (no torch): `load`, `train` and the result types come from digitlab.api,
imported on first use through the module __getattr__ below (PEP 562), so the CLI starts at once.
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "Recognizer", "Denoiser", "Comparer", "Reading", "Denoised", "Same", "Run"]


def __getattr__(name: str):
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("digitlab.api"), name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
