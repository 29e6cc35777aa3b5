"""open_clip state dicts: the architecture from open_clip_config.json or `model=`, never silently guessed.

The weights are written here in open_clip's published key layout with tiny random values, and the
logits are checked against a forward pass written here in plain torch, independent of clipx. The
towers have heads wider than 64 (open_clip's ViT-H/g/bigG do), so the width / 64 guess is wrong.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

import clipx
from clipx.families import open_clip
from clipx.families.openai import OpenAIShapes
from clipx.errors import CheckpointError
from floats import assert_float32_close, max_relative_error
import open_clip_weights
from open_clip_weights import open_clip_state

# the vocabulary is not CLIP's, so clipx rightly says it has no tokenizer for it; these tests pass ids
pytestmark = [pytest.mark.filterwarnings("error::UserWarning"),
              pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning")]

# 4 vision heads of 80 (width / 64 would give 5), 8 text heads of 32 (width / 64 would give 4)
VISION = {"image_size": 32, "layers": 2, "width": 320, "head_width": 80, "mlp_ratio": 2.0, "patch_size": 8}
TEXT = {"context_length": 16, "vocab_size": 1000, "width": 256, "heads": 8, "layers": 2}
MODEL_CFG = {"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT}


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def reference_logits(sd, vision_heads, text_heads, act, pixels, ids):
    """open_clip's CLIP forward, written with torch.nn.MultiheadAttention on the fused weights."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])

    def transformer(x, prefix, heads, mask=None):
        width, i = x.shape[-1], 0
        while f"{prefix}transformer.resblocks.{i}.ln_1.weight" in sd:
            b = f"{prefix}transformer.resblocks.{i}."
            attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
            attn.load_state_dict({k: sd[b + "attn." + k] for k in
                                  ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
            h = ln(x, b + "ln_1")
            x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            h = act(F.linear(ln(x, b + "ln_2"), sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
            x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
            i += 1
        return x

    with torch.no_grad():
        conv = sd["visual.conv1.weight"]
        x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
        x = torch.cat([sd["visual.class_embedding"].expand(len(x), 1, -1), x], dim=1)
        x = x + sd["visual.positional_embedding"]
        x = transformer(ln(x, "visual.ln_pre"), "visual.", vision_heads)
        image = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]

        n = ids.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1)
        t = transformer(sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n], "", text_heads, causal)
        text = ln(t, "ln_final")[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return sd["logit_scale"].exp() * image @ text.T


def inputs():
    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(1, TEXT["vocab_size"] - 1, (3, TEXT["context_length"]), generator=g)
    ids[torch.arange(3), torch.tensor([5, 15, 9])] = TEXT["vocab_size"] - 1  # the end token: the largest id
    return pixels, ids


def clipx_logits(model):
    pixels, ids = inputs()
    with torch.no_grad():
        return model(pixel_values=pixels, input_ids=ids).logits_per_image


def write_release(folder, model_cfg=MODEL_CFG, preprocess_cfg=None):
    """This file's release: MODEL_CFG's weights, under `model_cfg`'s config (none: no config file)."""
    return open_clip_weights.write_release(folder, open_clip_state(MODEL_CFG), model_cfg, preprocess_cfg)


@pytest.mark.parametrize("quick", [False, True])
def test_open_clip_config_gives_open_clips_logits(tmp_path, quick):
    folder = write_release(tmp_path, {**MODEL_CFG, "quick_gelu": quick})
    expected = reference_logits(open_clip_state(MODEL_CFG), 4, 8, quick_gelu if quick else F.gelu, *inputs())
    for path in (folder, folder / "open_clip_pytorch_model.bin"):
        model = clipx.load(path)
        vision, text = model.config.vision_config, model.config.text_config
        assert (vision.num_attention_heads, text.num_attention_heads) == (4, 8)
        assert vision.intermediate_size == 640 and vision.hidden_act == ("quick_gelu" if quick else "gelu")
        assert_float32_close(clipx_logits(model), expected, rtol=1e-4, floor=1)


def test_the_width_64_guess_would_be_far_off(tmp_path):
    """The same weights with 64-wide heads (5 and 4) and QuickGELU: what clipx used to load silently."""
    folder = write_release(tmp_path, model_cfg=None)
    with pytest.warns(UserWarning, match="5 vision and 4 text attention heads"):
        guessed = clipx.load(folder)
    expected = reference_logits(open_clip_state(MODEL_CFG), 4, 8, F.gelu, *inputs())
    assert max_relative_error(clipx_logits(guessed), expected, floor=1) > 1e-2
    # and the reference itself tells the head counts apart
    wrong_heads = reference_logits(open_clip_state(MODEL_CFG), 5, 4, F.gelu, *inputs())
    assert max_relative_error(wrong_heads, expected, floor=1) > 1e-2


@pytest.mark.parametrize("tower, field, value", [
    ("vision_cfg", "pool_type", "avg"), ("vision_cfg", "no_ln_pre", True), ("vision_cfg", "final_ln_after_pool", True),
    ("vision_cfg", "ls_init_value", 1e-5), ("vision_cfg", "attentional_pool", True),
    ("vision_cfg", "attn_pooler_queries", 64), ("vision_cfg", "timm_model_name", "vit_base_patch16_224"),
    ("vision_cfg", "input_patchnorm", True), ("vision_cfg", "act_kwargs", {"approximate": "tanh"}),
    ("vision_cfg", "norm_kwargs", {"eps": 1e-6}), ("vision_cfg", "qk_norm", True),
    ("text_cfg", "pool_type", "last"), ("text_cfg", "proj_type", "mlp"), ("text_cfg", "proj_bias", True),
    ("text_cfg", "no_causal_mask", True), ("text_cfg", "embed_cls", True), ("text_cfg", "pad_id", 1),
    ("text_cfg", "hf_model_name", "roberta-base"), ("text_cfg", "hf_tokenizer_name", "google/mt5-base"),
    ("text_cfg", "ls_init_value", 1e-5), ("text_cfg", "text_arch", "modern"),
    (None, "init_logit_bias", -10.0), (None, "multimodal_cfg", {"width": 512}),
])
def test_unimplemented_settings_are_refused_by_name(tmp_path, tower, field, value):
    cfg = json.loads(json.dumps(MODEL_CFG))
    (cfg[tower] if tower else cfg)[field] = value
    name = f"{tower}.{field}" if tower else field
    with pytest.raises(CheckpointError, match=re.escape(f"model_cfg.{name}={value!r} is an open_clip feature "
                                                        "clipx does not implement")):
        clipx.load(write_release(tmp_path, cfg))


def test_unknown_settings_are_refused_and_harmless_ones_ignored(tmp_path):
    harmless = {"patch_dropout": 0.5, "output_tokens": True, "pool_type": "tok", "act_kwargs": {}}
    cfg = {**MODEL_CFG, "vision_cfg": {**VISION, **harmless}, "text_cfg": {**TEXT, "pool_type": "argmax"},
           "custom_text": False, "init_logit_scale": 2.65}
    clipx.load(write_release(tmp_path / "harmless", cfg))
    cfg = {**MODEL_CFG, "vision_cfg": {**VISION, "register_tokens": 4}}
    with pytest.raises(CheckpointError, match=r"vision_cfg\.register_tokens is a setting clipx does not know"):
        clipx.load(write_release(tmp_path / "unknown", cfg))


def test_config_that_disagrees_with_the_weights_names_the_field(tmp_path):
    cfg = {**MODEL_CFG, "vision_cfg": {**VISION, "width": 384, "mlp_ratio": 4.0},
           "text_cfg": {**TEXT, "heads": 6}}
    with pytest.raises(CheckpointError, match=r"open_clip_config.json: model_cfg does not fit the weights") as e:
        clipx.load(write_release(tmp_path / "sizes", cfg))
    assert "vision_cfg.width=384, but the weights have 320 (visual.conv1.weight)" in str(e.value)
    assert "vision_cfg.mlp_ratio=4.0 (MLP width 1536), but the weights have 640" in str(e.value)
    with pytest.raises(CheckpointError, match=r"text_cfg\.heads=6 does not divide text_cfg\.width=256"):
        clipx.load(write_release(tmp_path / "heads", {**MODEL_CFG, "text_cfg": {**TEXT, "heads": 6}}))


def test_model_argument_names_the_architecture(tmp_path, monkeypatch):
    path = write_release(tmp_path, model_cfg=None) / "open_clip_pytorch_model.bin"
    monkeypatch.setitem(open_clip.ARCHITECTURES, "ViT-tiny-80", MODEL_CFG)
    model = clipx.load(path, model="ViT-tiny-80")  # no warning: nothing is guessed
    assert_float32_close(clipx_logits(model), reference_logits(open_clip_state(MODEL_CFG), 4, 8, F.gelu, *inputs()),
                         rtol=1e-4, floor=1)
    # a real architecture is checked against the weights like a config file
    with pytest.raises(CheckpointError, match=r"model='ViT-B-32' does not fit the weights in .*open_clip_pytorch"
                                              r"_model\.bin:\n  vision_cfg\.width=768, but the weights have 320"):
        clipx.load(path, model="ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip architecture model='ViT-Z-99'; clipx knows: .*ViT-H-14,"):
        clipx.load(path, model="ViT-Z-99")
    with pytest.raises(ValueError, match="model='ViT-B-32' names the architecture of an OpenAI / open_clip state "
                                         "dict, but .* has a config.json"):
        clipx.CLIPConfig().save(tmp_path)
        clipx.load(tmp_path, model="ViT-B-32")


def shapes_of(cfg: dict) -> OpenAIShapes:
    """The shapes an architecture's weights have, written out from open_clip's formulas."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return OpenAIShapes(width=v["width"], patch_size=v["patch_size"],
                        positions=(v["image_size"] // v["patch_size"]) ** 2 + 1, vision_layers=v["layers"],
                        vision_mlp=int(v["width"] * v.get("mlp_ratio", 4.0)), text_width=t["width"],
                        vocab_size=t["vocab_size"], context_length=t["context_length"], text_layers=t["layers"],
                        text_mlp=4 * t["width"], embed_dim=cfg["embed_dim"])


@pytest.mark.parametrize("name, vision_heads, text_heads, mlp", [
    ("ViT-B-32", 12, 8, 3072), ("ViT-L-14-336-quickgelu", 16, 12, 4096), ("ViT-H-14", 16, 16, 5120),
    ("ViT-H-14-378-quickgelu", 16, 16, 5120), ("ViT-g-14", 16, 16, 6144), ("ViT-bigG-14", 16, 20, 8192),
])
def test_table_gives_open_clips_head_counts(name, vision_heads, text_heads, mlp):
    cfg = open_clip.model_cfg(name)
    config = open_clip.config_from_model_cfg(cfg, shapes_of(cfg), f"model={name!r}", "weights")
    vision, text = config.vision_config, config.text_config
    assert (vision.num_attention_heads, text.num_attention_heads, vision.intermediate_size) == \
        (vision_heads, text_heads, mlp)
    assert vision.hidden_act == ("quick_gelu" if name.endswith("-quickgelu") else "gelu")


def test_guess_warns_and_says_so_for_openai_shapes():
    with pytest.warns(UserWarning, match="shapes of OpenAI's ViT-B-32 .* assuming OpenAI's QuickGELU.* "
                                         "model='ViT-B-32-quickgelu'"):
        config = open_clip.guessed_config(shapes_of(open_clip.model_cfg("ViT-B-32")), "ViT-B-32.pt")
    assert config.vision_config.hidden_act == "quick_gelu" and config.vision_config.num_attention_heads == 12
    with pytest.warns(UserWarning, match=r"guessed from the weights' shapes: 20 vision and 16 text attention heads "
                                         r"\(width / 64\) and QuickGELU.*model=NAME"):
        open_clip.guessed_config(shapes_of(open_clip.model_cfg("ViT-H-14")), "ViT-H-14.pt")


def test_preprocess_cfg_reaches_the_image_processor(tmp_path):
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    model = clipx.load(write_release(tmp_path / "a", preprocess_cfg={
        "mean": mean, "std": std, "interpolation": "bilinear", "resize_mode": "squash"}))
    processor = model.processor
    assert (list(processor.image_mean), list(processor.image_std), processor.resample) == (mean, std, 2)
    assert processor.size == {"height": 32, "width": 32}
    with pytest.warns(UserWarning, match=r"resize_mode='longest' is not a resize clipx implements"):
        model = clipx.load(write_release(tmp_path / "b", preprocess_cfg={"resize_mode": "longest"}))
    assert model.processor.size == {"shortest_edge": 32}
    with pytest.raises(CheckpointError, match=r"open_clip_config.json: preprocess_cfg: image_std must not contain 0"):
        clipx.load(write_release(tmp_path / "c", preprocess_cfg={"std": [0, 1, 1]}))
