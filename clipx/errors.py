"""Errors clipx raises on bad checkpoints, so callers can catch them apart from bugs, and the check of an
integer option every layer shares."""

import numbers
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be read or does not fit the model (nothing is loaded)."""


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint could be found for the given name, path or hub id."""


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """An integer option as an int, or a TypeError naming it (a bool is not an integer here); a
    ValueError below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)
