"""digitlab: train, evaluate and serve models for handwritten digits.

    import digitlab
    digitlab.load("recognize").predict("my.png")

`load`, `train` and the result types come from digitlab.api, imported on first use so that
`import digitlab` (and the CLI's start) does not import torch.
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "Recognizer", "Denoiser", "Comparer", "Reading", "Denoised", "Same", "Run"]


def __getattr__(name: str):
    if name in __all__:
        from digitlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")
