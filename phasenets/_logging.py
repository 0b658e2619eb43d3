"""The library's console output: what a script that calls the trainer sees without configuring
logging, and the one switch that silences it.

phasenets logs through the ``"phasenets"`` logger and adds no handler to the root logger. The
library logger gets one handler of its own, :class:`_DefaultConsole`, which prints to stdout
only while the application has configured no logging of its own (no handler on the root
logger): a plain script sees the per-phase and per-epoch lines the CLI prints, and an
application that set up logging (``logging.basicConfig``, the CLI, pytest) gets the same records
through propagation, once. ``set_verbosity("warning")`` (or the environment variable
``PHASENETS_LOG_LEVEL=WARNING``) turns the lines off; ``logging.getLogger("phasenets")`` is the
usual handle for anything else.
"""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["LOGGER_NAME", "install_console", "set_verbosity"]

LOGGER_NAME = "phasenets"
LEVEL_VARIABLE = "PHASENETS_LOG_LEVEL"


class _DefaultConsole(logging.StreamHandler):
    """stdout, ``%(message)s``, only while the root logger has no handler of its own."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:  # the application logs: the record reaches it by propagation
            return
        self.stream = sys.stdout  # follow a redirected stdout (capture, a notebook)
        super().emit(record)


def install_console() -> None:
    """Give the library logger its default console and level (INFO, or ``$PHASENETS_LOG_LEVEL``);
    idempotent, and a level the application already set is kept."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(handler, _DefaultConsole) for handler in logger.handlers):
        logger.addHandler(_DefaultConsole())
    if logger.level == logging.NOTSET:
        logger.setLevel(os.environ.get(LEVEL_VARIABLE, "INFO").upper())


def set_verbosity(level: int | str) -> None:
    """How much phasenets prints: ``"info"`` (the default: phases, epochs, caches), ``"warning"``
    (only what needs attention), ``"error"``; or a ``logging`` level number."""
    logging.getLogger(LOGGER_NAME).setLevel(level.upper() if isinstance(level, str) else level)
