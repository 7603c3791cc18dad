"""digitlab: train, evaluate and serve models for handwritten digits."""

__version__ = "0.1.0"
