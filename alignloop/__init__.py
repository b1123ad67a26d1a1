"""alignloop: the whole RLHF loop from one CLI and one Python API."""

__version__ = "0.1.0"
