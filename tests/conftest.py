"""Fixtures shared by the test modules; plain helpers live in modules of their own (checkpoints,
inputs, explain_checks, floats, ...), imported by name.

The tiny models come in three kinds on purpose: `model` (clipx's default attention) and `eager_model`
(eager attention, whose weights views and hooks read) are loaded once per test module, so a module's
tests share one and may change it without reaching another module's; `tiny_model` is a fresh one for
each test that needs its own.
"""

from __future__ import annotations

import pytest
import torch

import clipx
from clipx.families.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from clipx.preprocess.bpe import Tokenizer
from checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, the transformers model saved there)."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    return folder, make_checkpoint(folder)


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    return clipx.load(tiny_checkpoint[0], attention="eager")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """The tiny CLIP with clipx's default attention, one per test module."""
    return clipx.load(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def eager_model(tiny_checkpoint):
    """The tiny CLIP with eager attention, one per test module."""
    return clipx.load(tiny_checkpoint[0], attention="eager")


@pytest.fixture()
def forward_calls(eager_model, monkeypatch):
    """How many times eager_model.forward runs (every explain and run_with_cache goes through it)."""
    count = {"n": 0}
    forward = eager_model.forward

    def counted(*args, **kwargs):
        count["n"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(eager_model, "forward", counted)
    return count


@pytest.fixture(scope="module")
def demo():
    return clipx.load("demo")


@pytest.fixture(scope="module")
def tiny_siglip():
    """A tiny SigLIP built in memory from its config (no checkpoint, CLIP's BPE), one per test module."""
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, vocab_size=49408, projection_dim=48)
    model = clipx.CLIP(SiglipConfig(text_config=SiglipTextConfig(**text), vision_config=SiglipVisionConfig(**vision)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the identity LayerNorms and zero biases of a fresh model
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.tokenizer = Tokenizer.default(context_length=16)
    return model
