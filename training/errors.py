"""Errors the training package raises for things a user can fix.

Each message is one line that says what was wrong and what to do about it; the command line
prints it without a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data folder, image or data set that cannot be used (missing, empty, too small, corrupt)."""


class TrainingError(RuntimeError):
    """A training run that cannot start or go on (bad resume state, non-finite loss, bad options)."""
