"""Errors clipx raises on bad checkpoints, so callers can catch them apart from bugs; the check of an
integer option every layer shares; and where a warning points (the user's line)."""

import numbers
import os
import sys
from pathlib import Path
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


def check_has_values(name: str, tensor: Any) -> None:
    """A ValueError naming `name` where it is a tensor on the meta device: a shape without values, which
    torch fails on deep inside ("Cannot copy out of meta tensor")."""
    if getattr(tensor, "is_meta", False):
        raise ValueError(f"{name} is a meta tensor: it has a shape but no values (torch.device('meta')); "
                         "give one on the CPU or a GPU")


def check_grad_possible(what: str) -> None:
    """A RuntimeError saying so where `what`, which takes gradients, is called inside torch.inference_mode(),
    which no code can turn gradients back on in for tensors made there (torch's own error reads "element 0
    of tensors does not require grad")."""
    import torch

    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients, which torch.inference_mode() rules out: call it outside "
                           "the inference_mode block (inside torch.no_grad() is fine)")


def caller_level() -> int:
    """The stacklevel, for a warnings.warn in the function calling this one, of the first frame
    outside clipx and torch: the user's own line, however deep inside the call the check ran."""
    import torch  # imported here: this module is clipx's lowest layer, imported before anything heavy

    internal = tuple(str(Path(f).parent) + os.sep for f in (torch.__file__, __file__))  # torch's and clipx's code
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        level, frame = level + 1, frame.f_back
    return level
