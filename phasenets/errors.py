"""The errors a user causes, shared by every layer (this module imports nothing of phasenets).

``UserError`` is the base of every error whose message is meant for the person running phasenets:
a bad option, an unusable dataset, a missing or damaged checkpoint, a model that cannot be built.
The command line prints such an error as it is, with exit code 2 and no traceback; anything else
that escapes the library is a bug and keeps its traceback. The library's own error classes
derive from ``UserError`` and from ``ValueError`` (what a caller catching ``ValueError`` expects).

``ConfigError`` lives here rather than in ``config.py`` so that the modules ``config.py`` takes its
choice lists from (the plan, the optimizers) can raise it without importing ``config.py`` back.
"""
from __future__ import annotations

__all__ = ["CheckpointDamaged", "CheckpointError", "ConfigError", "UserError"]


class UserError(Exception):
    """Something the user can fix; the message says what is wrong, where, and what is valid."""


class ConfigError(UserError, ValueError):
    """An option has a value the trainer cannot use; the message says which values are valid."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, damaged or not a phasenets checkpoint, or a folder holds none."""


class CheckpointDamaged(CheckpointError):
    """A phasenets checkpoint whose bytes are torn or changed: never to be used, nor read as
    anything else (a plain weights file, say)."""
