"""Errors clipx raises on bad checkpoints, so callers can catch them apart from bugs."""


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be read or does not fit the model (nothing is loaded)."""


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint could be found for the given name, path or hub id."""
