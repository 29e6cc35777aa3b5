"""Fixtures shared by the test modules; plain helpers live in modules of their own (checkpoints,
inputs, explain_checks, floats, ...), imported by name."""

from __future__ import annotations

import pytest

from checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, the transformers model saved there)."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    return folder, make_checkpoint(folder)


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    import clipx

    return clipx.load(tiny_checkpoint[0], attention="eager")
