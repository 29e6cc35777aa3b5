"""`repr(model)`: a few lines that say what the model is, asked of the model itself."""

from __future__ import annotations

import clipx


def test_the_demos_describe_their_family_towers_readout_and_scoring():
    clip, siglip = clipx.load("demo"), clipx.load("demo-siglip")
    text = repr(clip)
    assert len(text.splitlines()) <= 20
    n = sum(p.numel() for p in clip.parameters())
    assert text.startswith(f"CLIP model, family 'clip': {n / 1e6:.1f}M parameters, float32 on cpu, attention sdpa")
    assert "vision: 4 layers, width 128, 4 heads" in text and "8 x 8 grid + 1 class token" in text
    assert "pooled by the class token" in text and "causal, context 16, vocabulary 590" in text
    assert f"exp(logit_scale)={clip.logit_scale.exp().item():.4g} x cosine;" in text
    assert "softmax over captions" in text and "logit_bias" not in text
    text = repr(siglip)
    assert "family 'siglip'" in text and "attention-pooling head" in text and "bidirectional" in text
    assert "pooled at the last position" in text and "sigmoid per pair" in text
    assert f"logit_bias ({siglip.logit_bias.item():.4g})" in text
    assert "attention eager" in repr(clip.set_attention("eager"))


def test_the_module_tree_is_one_call_away(demo):
    tree = demo.tree()
    assert tree.startswith("CLIP(") and "(hook_pattern): HookPoint(vision.blocks.3.attn.hook_pattern)" in tree
