"""What methods ask a tower instead of reaching into its modules: its readout (linearised, or of any layer's
tokens), its value path, its token features, and why it cannot serve a method, said by name."""

from __future__ import annotations

import pytest
import torch

import clipx
from clipx.model.config import CLIPConfig, TextConfig, VisionConfig
from clipx.preprocess.bpe import Tokenizer

from checkpoints import randomise
from floats import assert_float32_close
from inputs import pixels

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, projection_dim=24)
VISION = dict(TINY, image_size=32, patch_size=8)
CAPTIONS = ["a red circle", "two blue squares on a green ground"]


def tiny(text: dict | None = None, vision: dict | None = None) -> clipx.CLIP:
    config = CLIPConfig(text_config=TextConfig(**TINY, **(text or {})),
                        vision_config=VisionConfig(**VISION, **(vision or {})), projection_dim=24)
    model = randomise(clipx.CLIP(config).eval(), seed=3)
    model.tokenizer = Tokenizer.default()
    return model


@pytest.mark.parametrize("text", [
    {},                                                                      # LayerNorm, biases (CLIP)
    dict(norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu", attention_bias=False, mlp_bias=False),
    dict(final_norm=False, projection_bias=True),
])
def test_text_parts_sum_to_the_embedding_through_the_linearised_readout(text):
    model = tiny(text)
    parts = clipx.decompose_text(model, CAPTIONS)
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        embeds = model.encode_text(tok.input_ids, tok.attention_mask)
    assert_float32_close(parts.total(), embeds, rtol=1e-4)


def test_a_post_norm_tower_is_refused_by_name_where_parts_would_not_sum():
    model = tiny(text=dict(norm_position="post"), vision=dict(norm_position="post"))
    with pytest.raises(ValueError, match=r"decompose_text .* post-norm \(norm_position='post'\)"):
        clipx.decompose_text(model, CAPTIONS)
    with pytest.raises(ValueError, match=r"decompose .* post-norm"):
        clipx.decompose(model, pixels())
    with pytest.raises(ValueError, match="'maskclip' needs the last block's value path: .* post-norm"):
        clipx.explain(model, pixels(), CAPTIONS, method="similarity", variant="maskclip")


def test_a_pooling_head_is_refused_by_name_for_decomposition():
    model = tiny(vision=dict(pooling="probe", pre_layernorm=False))
    with pytest.raises(ValueError, match=r"attention head \(pooling='probe'\)"):
        clipx.decompose(model, pixels())


@pytest.mark.parametrize("vision", [{}, dict(pooling="attention", pre_layernorm=False),
                                    dict(pooling="probe", pre_layernorm=False, norm_type="rmsnorm")])
def test_the_readout_of_the_last_tokens_is_the_image_embedding(vision):
    model = tiny(vision=vision)
    px = pixels()
    name = f"vision.blocks.{model.vision.n_layers - 1}.hook_resid_post"
    with torch.no_grad(), model.recording([name]) as cache:
        embeds = model.encode_image(px)
        assert_float32_close(model.vision.readout(cache[name]), embeds)


def test_the_value_path_is_out_proj_of_v_proj_of_ln1():
    model = tiny()
    last, x = model.vision.blocks[-1], torch.randn(2, 5, 32)
    with torch.no_grad():
        normed = torch.nn.functional.layer_norm(x, (32,), last.ln1.weight, last.ln1.bias, last.ln1.eps)
        v = normed @ last.attn.v_proj.weight.T + last.attn.v_proj.bias
        assert_float32_close(model.vision.value_path(x), v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias)


def test_tower_sizes_are_asked_not_counted():
    model = tiny()
    assert (model.vision.n_layers, model.vision.n_heads, model.text.n_layers) == (2, 4, 2)
