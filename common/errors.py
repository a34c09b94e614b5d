"""User-facing errors: one line that says what is wrong, where, and how to fix it.

Anything a user can cause (bad config key, missing dataset folder, missing weights,
corrupt image, empty caption, diverging loss) raises a :class:`UserError`; the chapter
entry points (:func:`common.cli.main`) print its message as one log line and exit 2.
"""
from __future__ import annotations


class UserError(Exception):
    """An error whose message is a complete, actionable one-line explanation."""


class DataError(UserError):
    """Missing or malformed data: dataset folders, images, captions, checkpoints."""


class TrainingDiverged(UserError):
    """The loss became NaN/inf, or the weights about to be saved diverged; the last good
    checkpoint (finite loss, sane weights) is kept and named."""
