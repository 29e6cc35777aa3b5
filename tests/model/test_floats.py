"""The float32 tolerance the suite uses (tests/floats.py) passes rounding and fails real bugs."""

import copy

import pytest
import torch

from floats import assert_float32_close
from inputs import texts_to_ids


def logits(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 32, 32, generator=g)
    ids, mask = texts_to_ids()
    with torch.no_grad():
        return model(pixel_values=px.to(model.logit_scale.dtype), input_ids=ids, attention_mask=mask).logits_per_image


def test_float32_rounding_passes(tiny_model):
    """float32 against the same model in float64: all the rounding float32 does, in every op."""
    exact = logits(copy.deepcopy(tiny_model).double())
    for backend in ("eager", "sdpa"):
        with tiny_model.attention(backend):
            assert_float32_close(logits(tiny_model).double(), exact)


def _scale_last_attention(model):
    model.vision.blocks[-1].attn.scale *= 1.001


def _drop_a_head(model):
    with torch.no_grad():
        attn = model.text.blocks[0].attn
        attn.out_proj.weight[:, :attn.head_dim] = 0


def _other_activation(model):
    for block in model.vision.blocks:
        block.mlp.act = torch.nn.functional.gelu


def _layer_norm_eps(model):
    model.vision.ln_post.eps = 1e-3


@pytest.mark.parametrize("bug", [_scale_last_attention, _drop_a_head, _other_activation, _layer_norm_eps])
def test_small_real_bugs_fail(tiny_model, bug):
    broken = copy.deepcopy(tiny_model)
    bug(broken)
    with pytest.raises(AssertionError, match="above 1e-05"):
        assert_float32_close(logits(broken), logits(tiny_model))
