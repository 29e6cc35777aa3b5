"""Configs as complete data: every mode a family sets is a field that config.json carries and reads back,
bad values are refused by name, and the blocks built from the fields compute what their names say."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

import clipx
from clipx.errors import CheckpointError
from clipx.families.siglip import SiglipConfig
from clipx.model.config import CLIPConfig, TextConfig, VisionConfig
from clipx.model.layers import Block, RMSNorm

from floats import assert_float32_close

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
MODES = {
    "vision": dict(norm_type="rmsnorm", mlp_type="swiglu", attention_bias=False, mlp_bias=False, pooling="probe",
                   pre_layernorm=False, patch_bias=True, patch_norm=True, image_size=32, patch_size=8),
    "text": dict(norm_position="post", pooling="first", causal=False, final_norm=False, embedding_norm=True,
                 type_vocab_size=2, projection_bias=True, vocab_size=99, max_position_embeddings=16),
    "joint": dict(scoring="sigmoid", logit_bias=True, logit_bias_init_value=-3.0, max_logit_scale=100.0),
}


@pytest.mark.parametrize("config_cls", [CLIPConfig, SiglipConfig])
def test_every_mode_is_written_to_config_json_and_read_back(tmp_path, config_cls):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    text_cls, vision_cls = fields["text_config"].default_factory, fields["vision_config"].default_factory
    config = config_cls(text_config=text_cls(**TINY, **MODES["text"], projection_dim=32),
                        vision_config=vision_cls(**TINY, **MODES["vision"], projection_dim=None if config_cls is SiglipConfig else 32),
                        projection_dim=32,
                        **MODES["joint"])
    config.save(tmp_path)
    again = CLIPConfig.from_json_file(tmp_path / "config.json")
    assert type(again) is config_cls and again == config


def test_a_model_built_from_a_saved_config_is_the_same_model(tmp_path):
    config = CLIPConfig(text_config=TextConfig(**TINY, **MODES["text"], projection_dim=16),
                        vision_config=VisionConfig(**TINY, **MODES["vision"], projection_dim=16), projection_dim=16,
                        **MODES["joint"])
    model = clipx.CLIP(config).eval()
    model.save_pretrained(tmp_path)
    again = clipx.load(tmp_path)
    ids = torch.randint(0, 99, (2, 7))
    pixels = torch.randn(2, 3, 32, 32)
    assert_float32_close(again(pixel_values=pixels, input_ids=ids).logits_per_image,
                         model(pixel_values=pixels, input_ids=ids).logits_per_image)


@pytest.mark.parametrize("eos, pooling", [(2, "eos_argmax"), (49407, "eos")])
def test_transformers_legacy_eos_rule_becomes_the_pooling_field(tmp_path, eos, pooling):
    d = {"model_type": "clip", "text_config": {**TINY, "eos_token_id": eos}, "vision_config": TINY}
    (tmp_path / "config.json").write_text(json.dumps(d))
    config = CLIPConfig.from_json_file(tmp_path / "config.json")
    assert config.text_config.pooling == pooling and config.text_config.eos_token_id == eos
    d["text_config"]["pooling"] = "eos"  # said outright, the field wins over the legacy rule
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert CLIPConfig.from_json_file(tmp_path / "config.json").text_config.pooling == "eos"


def test_pooling_by_id_and_by_argmax_differ_where_the_eos_is_not_the_largest_id():
    ids = torch.tensor([[0, 50, 2, 1, 1]])  # an XLM-R-like caption: <s> word </s> <pad> <pad>, EOS id 2
    towers = {p: clipx.CLIP(CLIPConfig(text_config=TextConfig(**TINY, vocab_size=99, eos_token_id=2, pooling=p),
                                       vision_config=None)).text for p in ("eos", "eos_argmax", "first", "last")}
    assert {p: t.pooled_positions(ids).item() for p, t in towers.items()} == \
        {"eos": 2, "eos_argmax": 1, "first": 0, "last": 4}


@pytest.mark.parametrize("tower, field, value", [
    ("vision_config", "norm_type", "batchnorm"), ("vision_config", "pooling", "mean"),
    ("text_config", "pooling", "cls"), ("text_config", "norm_position", "sandwich"),
    ("text_config", "mlp_type", "geglu"), ("text_config", "causal", "yes"), ("text_config", "type_vocab_size", -1),
])
def test_a_bad_mode_in_config_json_is_refused_by_its_key_path(tmp_path, tower, field, value):
    d = {"model_type": "clip", "text_config": dict(TINY), "vision_config": dict(TINY)}
    d[tower][field] = value
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=f"{tower}.{field} must be"):
        CLIPConfig.from_json_file(tmp_path / "config.json")


@pytest.mark.parametrize("field, value", [("scoring", "softmax2"), ("max_logit_scale", 0), ("logit_bias", 1)])
def test_a_bad_joint_mode_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        CLIPConfig(**{field: value})


def test_rmsnorm_is_x_over_its_root_mean_square_times_the_weight():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 8)
    expected = norm.weight * x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    assert_float32_close(norm(x), expected)


def reference_block(block: Block, x: torch.Tensor, post: bool, swiglu: bool) -> torch.Tensor:
    """A block from its weights by the textbook formulas, without clipx's modules' forward."""
    attn = block.attn

    def attention(h):
        b, n, d = h.shape
        split = lambda t: t.view(b, n, attn.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h))
        z = torch.softmax(q @ k.transpose(-1, -2) * attn.head_dim ** -0.5, -1) @ v
        return attn.out_proj(z.transpose(1, 2).reshape(b, n, d))

    def feed_forward(h):
        m = block.mlp
        if swiglu:
            return m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))
        return m.fc2(F.gelu(m.fc1(h)))

    def layer_norm(ln, h):
        if isinstance(ln, RMSNorm):
            return ln.weight * h / (h.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
        return F.layer_norm(h, h.shape[-1:], ln.weight, ln.bias, ln.eps)

    if post:
        x = layer_norm(block.ln1, x + attention(x))
        return layer_norm(block.ln2, x + feed_forward(x))
    x = x + attention(layer_norm(block.ln1, x))
    return x + feed_forward(layer_norm(block.ln2, x))


@pytest.mark.parametrize("modes", [
    dict(norm_position="post", hidden_act="gelu", layer_norm_eps=1e-12),                      # BERT's
    dict(norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu", attention_bias=False, mlp_bias=False),  # AIMv2's
])
def test_a_block_built_from_its_config_computes_its_formula(modes):
    torch.manual_seed(0)
    block = Block(TextConfig(**TINY, **modes)).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert (block.attn.q_proj.bias is None) == (modes.get("attention_bias") is False)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = reference_block(block, x, modes.get("norm_position") == "post", modes.get("mlp_type") == "swiglu")
        for overwrite in (False, True):  # the in-place sums give the same result
            assert_float32_close(block(x.clone(), overwrite)[0], expected)


def test_max_logit_scale_clamps_the_temperature():
    model = clipx.CLIP(CLIPConfig(text_config=TextConfig(**TINY, vocab_size=99), vision_config=VisionConfig(
        **TINY, image_size=32, patch_size=8), max_logit_scale=100.0, logit_scale_init_value=math.log(1000.0)))
    image, text = F.normalize(torch.randn(2, 512), dim=-1), F.normalize(torch.randn(3, 512), dim=-1)
    assert_float32_close(model.logits(image, text), 100 * image @ text.T)
