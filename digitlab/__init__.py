"""digitlab: train, evaluate and serve models for handwritten digits.

`import digitlab` is cheap (no torch): `digitlab.load` and `digitlab.train` come from digitlab.api,
imported on first use through the module __getattr__ below (PEP 562)."""

__version__ = "0.1.0"

# Public names served lazily from digitlab.api, so the CLI and `import digitlab` stay instant.
_API = ("load", "train")


def __getattr__(name: str):
    if name in _API:
        from digitlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
