"""clipx.interactions: the paper's Eq. 10 written out here the authors' way (the dense integrated Jacobians
of both towers and their full (tokens * width) x (patches * width) product), the pair-by-pair sharing, the
two ways of reading the matrix, and the refusals. tests/explain/test_interactions_exclip.py (slow) checks
the same numbers against the authors' package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipx
from clipx.explain.integrated_jacobian import integrated_jacobian
from floats import assert_float32_close, max_relative_error

CAPTIONS = ["a red circle", "a blue square left of a green triangle"]


def pixels(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 0.5


def residual(model, tower, block, encode):
    name = f"{tower}.blocks.{block}.hook_resid_pre"
    with torch.no_grad(), model.recording(name) as cache:
        embedding = encode()
    return cache[name][0], embedding[0]


def dense_integrated_jacobian(model, tower, block, encode, x, r, n_steps):
    """exCLIP's Eq. 9: (1/N) sum over the right Riemann points of the full Jacobian [D, S, width]."""
    name = f"{tower}.blocks.{block}.hook_resid_pre"

    def embed(h):
        with model.hooks(fwd_hooks=[(name, lambda _, hook: h[None])]):
            return encode()[0]

    alphas = [(n_steps - k) / n_steps for k in range(n_steps)]
    return sum(torch.autograd.functional.jacobian(embed, r + a * (x - r)) for a in alphas) / n_steps


def eq10(model, image, ids, layer, n_steps, reference_ids):
    """The token x token-of-the-image matrix of one pair [L, prefix + patches], Eq. 10 as the authors compute it."""
    mask = torch.ones_like(ids)
    encode_image = lambda: model.encode_image(image[None])                             # noqa: E731
    encode_reference_image = lambda: model.encode_image(torch.zeros_like(image)[None])  # noqa: E731
    encode_text = lambda: model.encode_text(ids[None], mask[None])                     # noqa: E731
    encode_reference_text = lambda: model.encode_text(reference_ids[None], mask[None])  # noqa: E731
    xi, ei = residual(model, "vision", layer, encode_image)
    ri, _ = residual(model, "vision", layer, encode_reference_image)
    xt, et = residual(model, "text", layer, encode_text)
    rt, _ = residual(model, "text", layer, encode_reference_text)
    with torch.enable_grad():
        ji = dense_integrated_jacobian(model, "vision", layer, encode_image, xi, ri, n_steps)
        jt = dense_integrated_jacobian(model, "text", layer, encode_text, xt, rt, n_steps)
    d = ji.shape[0]
    product = jt.reshape(d, -1).T @ ji.reshape(d, -1)                  # [(L * width), (patches * width)]
    a = (xt - rt).reshape(-1, 1) * product * (xi - ri).reshape(1, -1)
    return a.reshape(*xt.shape, *xi.shape).sum(dim=(1, 3)) / (ei.norm() * et.norm())


@pytest.mark.parametrize("layer", [0, 1])
def test_values_equal_the_papers_eq10_written_out(eager_model, layer):
    model, images = eager_model, pixels()
    tok = model.tokenize(CAPTIONS)
    ours = clipx.interactions(model, images, CAPTIONS, text_layer=layer, image_layer=layer, n_steps=4)
    bos, eos = tok.input_ids[0, 0].item(), model.tokenizer.eos_token_id
    assert model.tokenizer.pad_token_id == eos  # transformers' CLIP tokenizer: the reference pads with 0, as OpenAI's
    reference = torch.tensor([bos, 0, eos] + [0] * (tok.input_ids.shape[1] - 3))
    for i in range(2):
        for j in range(2):
            # positions past a caption's length: exCLIP reads padding unmasked, clipx masked; the EOS sees neither
            n = int(tok.attention_mask[j].sum())
            expected = eq10(model, images[i], tok.input_ids[j, :n], layer, 4, reference[:n])
            got = torch.cat([ours.prefix_values[i, j, :n], ours.values[i, j, :n].flatten(1)], dim=1)
            assert_float32_close(got, expected, rtol=1e-4)
            assert ours.values[i, j, n:].abs().sum() == 0


def test_a_pair_alone_equals_the_pair_in_a_batch(eager_model):
    images = pixels(3)
    batch = clipx.interactions(eager_model, images, CAPTIONS, n_steps=3)
    alone = clipx.interactions(eager_model, images[2:], CAPTIONS[1:], n_steps=3)
    assert batch.shape[:2] == (3, 2)
    assert_float32_close(alone.values[0, 0], batch.values[2, 1], rtol=1e-4)
    assert_float32_close(alone.similarity[0, 0], batch.similarity[2, 1])


def test_forward_and_reverse_products_give_the_same_jacobian(eager_model):
    model = eager_model
    images = pixels()
    name = "vision.blocks.1.hook_resid_pre"
    with torch.no_grad(), model.recording(name) as cache:
        dim = model.encode_image(images).shape[-1]
    x = cache[name]

    def embed(h, which):
        with model.hooks(fwd_hooks=[(name, lambda _, hook: h)]):
            return model.encode_image(images[which])

    with model.attention("eager"):
        u = [integrated_jacobian(embed, x, torch.zeros_like(x[:1]), 3, dim, 1 << 20, budget, mode)
             for mode, budget in (("forward", 1 << 30), ("reverse", 1 << 30), ("reverse", 1 << 21))]
    assert u[0].shape == (2, dim, x.shape[1])
    assert u[0].abs().max() > 0
    for other in u[1:]:  # a small budget: one row and a few products per call
        assert_float32_close(other, u[0], rtol=1e-4)


def test_the_identity_terms_are_the_cosines_and_the_gap_their_difference(eager_model):
    images = pixels()
    result = clipx.interactions(eager_model, images, CAPTIONS, n_steps=2)
    with torch.no_grad():
        e_image = F.normalize(eager_model.encode_image(images), dim=-1)
        tok = eager_model.tokenize(CAPTIONS)
        e_text = F.normalize(eager_model.encode_text(tok.input_ids, tok.attention_mask), dim=-1)
    assert_float32_close(result.similarity, e_image @ e_text.T)
    total = result.values.sum(dim=(2, 3, 4)) + result.prefix_values.sum(dim=(2, 3))
    assert_float32_close(result.gap, total - result.expected)
    scaled = clipx.interactions(eager_model, images, CAPTIONS, n_steps=2, scale=True)
    factor = eager_model.logit_scale.exp().item()
    assert_float32_close(scaled.values, result.values * factor, rtol=1e-4)
    assert_float32_close(scaled.similarity, result.similarity * factor, rtol=1e-4)


def test_more_steps_close_the_gap_where_the_path_ends_at_the_reference(tiny_siglip):
    """SigLIP pools its last position, the path's and the reference's alike: the gap is the Riemann sum's
    error plus a fixed part (values are divided by the inputs' lengths, the terms by each embedding's own)."""
    images = pixels()
    totals = {n: clipx.interactions(tiny_siglip, images, CAPTIONS[:1], n_steps=n).total for n in (2, 8, 32)}
    assert max_relative_error(totals[8], totals[32]) < max_relative_error(totals[2], totals[32]) / 2


def test_siglip_has_no_class_token_column_and_token_ids_keep_their_positions(tiny_siglip):
    tok = tiny_siglip.tokenize(CAPTIONS)
    result = clipx.interactions(tiny_siglip, pixels(1), {"input_ids": tok.input_ids}, n_steps=2)
    assert result.prefix_values.shape[-1] == 0
    assert result.values.shape == (1, 2, tok.input_ids.shape[1], 4, 4)
    assert result.tokens == tiny_siglip.tokenizer.tokens(tok.input_ids, torch.ones_like(tok.input_ids))
    assert len(result.tokens[1]) == tok.input_ids.shape[1] and "blue" in result.tokens[1][2]


def test_span_and_box_sum_rows_and_columns(eager_model):
    result = clipx.interactions(eager_model, pixels(), CAPTIONS, n_steps=2)
    pair = result.values[1, 0]
    assert_float32_close(result.span(1, 0, [1, 3]), pair[1] + pair[3])
    assert_float32_close(result.span(1, 0, slice(1, 3)), pair[1] + pair[2])
    assert_float32_close(result.span(1, 0, 2), pair[2])
    assert_float32_close(result.box(1, 0, slice(0, 2), slice(1, 3)), pair[:, 0:2, 1:3].sum(dim=(1, 2)))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[3, 0] = mask[0, 3] = True
    assert_float32_close(result.box(1, 0, mask=mask), pair[:, 3, 0] + pair[:, 0, 3])
    assert "2 images x 2 captions" in repr(result)


@pytest.mark.parametrize("call, error, match", [
    (lambda r: r.span(0, 0, []), ValueError, "holds none of the caption's"),
    (lambda r: r.span(2, 0, 1), IndexError, "image 2 is not one of the 2 images"),
    (lambda r: r.box(0, 5, 1, 1), IndexError, "text 5 is not one of the 1 captions"),
    (lambda r: r.box(0, 0, slice(4, 9), None), ValueError, "holds no patch"),
    (lambda r: r.box(0, 0, mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "shaped like the patch grid"),
    (lambda r: r.box(0, 0, rows=[1, 2]), TypeError, "rows must be a slice"),
])
def test_reading_refuses_what_is_not_there(eager_model, call, error, match):
    result = clipx.interactions(eager_model, pixels(), CAPTIONS[:1], n_steps=1)
    with pytest.raises(error, match=match):
        call(result)


@pytest.mark.parametrize("options, error, match", [
    ({"image_layer": 2}, ValueError, "image_layer 2 is outside the vision tower's 2 blocks"),
    ({"text_layer": -3}, ValueError, "text_layer -3 is outside the text tower's 2 blocks"),
    ({"n_steps": 0}, ValueError, "n_steps"),
    ({"text_reference": "blank"}, ValueError, "text_reference must be one of 'pad', 'empty'"),
    ({"text_reference": torch.arange(40)}, ValueError, "text_reference holds 40 ids, more than"),
    ({"text_reference": 0.5}, TypeError, "text_reference must be"),
    ({"image_reference": "blur"}, TypeError, "image_reference must be a number"),
    ({"image_reference": torch.zeros(3, 8, 8)}, ValueError, "image_reference of shape"),
    ({"scale": 1}, TypeError, "scale must be True or False"),
])
def test_bad_options_are_refused_by_name(eager_model, options, error, match):
    with pytest.raises(error, match=match):
        clipx.interactions(eager_model, pixels(1), CAPTIONS[:1], **options)


def test_an_empty_caption_reference_is_bos_then_eos(eager_model):
    base = clipx.interactions(eager_model, pixels(1), CAPTIONS[:1], n_steps=2)
    empty = clipx.interactions(eager_model, pixels(1), CAPTIONS[:1], n_steps=2, text_reference="empty")
    assert max_relative_error(empty.values, base.values) > 1e-3
    assert not empty.values.requires_grad and all(p.requires_grad for p in eager_model.parameters())
    assert_float32_close(empty.similarity, base.similarity)
