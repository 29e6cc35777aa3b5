"""Taking the embedding apart: the parts sum to the model's embedding and logits, per-position parts to
per-head parts, the logit lens ends at the model's logits (CLIP and SigLIP), and bad input is an error."""

from __future__ import annotations

import pytest
import torch

import clipx
from checkpoints import VIT_B_TEXT, make_checkpoint
from floats import assert_float32_close
from inputs import pixels

CAPTIONS = ["a red circle", "a blue square above a green triangle", "x"]
PARITY = dict(rtol=1e-4, floor=1)  # the parity target: within 1e-4, relative where large


def logits(model, px, captions=CAPTIONS):
    tok = model.tokenize(captions)
    with torch.no_grad():
        return model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask).logits_per_image


def embedding(model, px):
    with torch.no_grad():
        return model.encode_image(px)


@pytest.mark.parametrize("name", [pytest.param("model", id="tiny"), "demo"])
def test_image_parts_sum_to_the_embedding_and_per_position_parts_to_the_heads(name, request):
    model = request.getfixturevalue(name)
    size = model.vision.config.image_size
    px = pixels(3, size=size)
    parts = clipx.decompose(model, px, per_position=True)
    n_layers, n_heads = len(model.vision.blocks), model.vision.blocks[0].attn.num_heads
    assert parts.components.shape == (3, 1 + n_layers * (n_heads + 2) + 1, model.config.projection_dim)
    assert parts.labels[:2] == ["vision.embed", "vision.blocks.0.attn.head.0"]
    assert parts.labels[-3:] == [f"vision.blocks.{n_layers - 1}.attn.bias", f"vision.blocks.{n_layers - 1}.mlp",
                                 "vision.ln_post.bias"]
    assert_float32_close(parts.total(), embedding(model, px), **PARITY)
    tokens = 1 + (size // model.vision.config.patch_size) ** 2
    assert parts.per_position.shape == (3, n_layers, n_heads, tokens, model.config.projection_dim)
    assert_float32_close(parts.per_position.sum(3), parts.heads(), **PARITY)
    assert not any(model.hook_point(n).active for n in model.hook_names())


def test_images_as_files_are_preprocessed(demo, tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(path)
    assert_float32_close(clipx.decompose(demo, [path]).total(), embedding(demo, demo.preprocess([path])), **PARITY)


def test_direct_logit_attribution_sums_to_the_logits(model):
    px = pixels(2)
    parts = clipx.decompose(model, px)
    direct = parts.logits(model, CAPTIONS)
    assert direct.values.shape == (2, len(parts.labels), len(CAPTIONS)) and direct.labels == parts.labels
    expected = logits(model, px)
    assert_float32_close(direct.total(), expected, **PARITY)
    tok = model.tokenize(CAPTIONS)  # text embeddings instead of captions: the same
    with torch.no_grad():
        embeds = model.encode_text(tok.input_ids, tok.attention_mask)
    assert_float32_close(parts.logits(model, embeds).values, direct.values)

    layers = direct.by_layer()
    assert layers.labels == ["vision.embed", "vision.blocks.0", "vision.blocks.1", "vision.ln_post.bias"]
    assert_float32_close(layers.total(), expected, **PARITY)
    up, down = direct.top(1, k=3, image_index=1)
    column = direct.values[1, :, 1]
    assert [v for _, v in up] == sorted(column.tolist(), reverse=True)[:3]
    assert [v for _, v in down] == sorted(column.tolist())[:3]
    assert all(direct.values[1, direct.labels.index(label), 1] == v for label, v in up + down)
    n = len(parts.labels)
    assert repr(direct) == (f"DirectLogits([2 images, {n} parts, {len(CAPTIONS)} texts]: vision.embed, "
                            "vision.blocks.0.attn.head.0, ..., vision.ln_post.bias)")
    assert repr(layers) == ("DirectLogits([2 images, 4 parts, 3 texts]: vision.embed, vision.blocks.0, "
                            "vision.blocks.1, vision.ln_post.bias)")
    dim = parts.values.shape[-1]
    assert repr(parts).startswith(f"Decomposition([2 items, {n} parts, {dim} dim]: vision.embed, ")
    per_position = clipx.decompose(model, px, per_position=True)
    assert repr(per_position).endswith(f"; per_position {list(per_position.per_position.shape)})")


def test_caption_parts_sum_to_the_text_embedding(model, tiny_siglip):
    """CLIP's causal tower pooled at EOS; SigLIP's pooled at the last position, with a projection bias."""
    for each, extra in ((model, []), (tiny_siglip, ["text.proj.bias"])):
        parts = clipx.decompose_text(each, CAPTIONS, per_position=True)
        tok = each.tokenize(CAPTIONS)
        with torch.no_grad():
            expected = each.encode_text(tok.input_ids, tok.attention_mask)
        assert parts.labels[0] == "text.embed" and parts.labels[-len(extra) - 1:] == ["text.ln_final.bias", *extra]
        assert_float32_close(parts.total(), expected, **PARITY)
        assert_float32_close(parts.per_position.sum(3), parts.heads(), **PARITY)


@pytest.mark.parametrize("name", [pytest.param("model", id="tiny"), pytest.param("tiny_siglip", id="siglip")])
def test_the_logit_lens_ends_at_the_logits(name, request):
    model = request.getfixturevalue(name)
    px = pixels(2) * 0.3  # within SigLIP's preprocessed [-1, 1], roughly
    lens = clipx.logit_lens(model, px, CAPTIONS)
    assert lens.shape == (len(model.vision.blocks) + 1, 2, len(CAPTIONS))
    assert_float32_close(lens[-1], logits(model, px), **PARITY)
    assert not torch.allclose(lens[0], lens[-1])


def test_a_model_pooling_through_an_attention_head_is_not_taken_apart(tiny_siglip):
    with pytest.raises(ValueError, match="pools through an attention head.*pooling='attention'.*not sum"):
        clipx.decompose(tiny_siglip, pixels(1))


def test_bad_input_is_an_error_naming_it(model):
    with pytest.raises(ValueError, match="no images given"):
        clipx.decompose(model, [])
    with pytest.raises(ValueError, match=r"shape \[B,3,H,W\].*got shape \[1, 2, 3, 32, 32\]"):
        clipx.decompose(model, torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="no texts given"):
        clipx.logit_lens(model, pixels(1), [])
    parts = clipx.decompose(model, pixels(1))
    with pytest.raises(ValueError, match="7-dimensional but these parts are 24-dimensional"):
        parts.logits(model, torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"float tensor \[n_texts, dim\], got a torch.int64 tensor"):
        parts.logits(model, torch.ones(2, 24, dtype=torch.long))


@pytest.mark.slow
def test_vit_b_32_parts_sum_to_the_embedding(tmp_path):
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32)
    make_checkpoint(tmp_path, text=VIT_B_TEXT, vision=vision, projection_dim=512, eos_token_id=2)
    model = clipx.load(tmp_path)
    px = pixels(2, size=224)
    parts = clipx.decompose(model, px, per_position=True)
    assert len(parts.labels) == 1 + 12 * 14 + 1
    assert_float32_close(parts.total(), embedding(model, px), **PARITY)
    assert_float32_close(parts.per_position.sum(3), parts.heads(), **PARITY)
    assert_float32_close(parts.logits(model, CAPTIONS).total(), logits(model, px), **PARITY)
