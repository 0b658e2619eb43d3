"""The errors a user causes, shared by every layer (this module imports nothing of phasenets).

``ConfigError`` lives here rather than in ``config.py`` so that the modules ``config.py`` takes its
choice lists from (the plan, the optimizers) can raise it without importing ``config.py`` back.
"""
from __future__ import annotations

__all__ = ["CheckpointDamaged", "CheckpointError", "ConfigError"]


class ConfigError(ValueError):
    """An option has a value the trainer cannot use; the message says which values are valid."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or not a phasenets checkpoint, or a folder holds none."""


class CheckpointDamaged(CheckpointError):
    """A phasenets checkpoint whose bytes are torn or changed: never to be used, nor read as
    anything else (a plain weights file, say)."""
