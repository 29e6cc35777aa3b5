"""Checks every explanation method must pass, shared by the tests of each family of methods."""

from __future__ import annotations

import torch

import clipx
from floats import FLOAT32_RTOL, assert_float32_close

# Grad-CAM's map is relu(activations . weights), a dot product over the width whose terms cancel: its
# rounding is relative to the terms, about ten times the result, so it gets ten times the slack.
BATCHING_RTOL = {"gradcam": 1e-4}
# the sampling methods' options a check needs no more than
FEWER_SAMPLES = {"rise": {"n_masks": 100}, "integrated_gradients": {"n_steps": 8}}


def check_batched_equals_single(model, pixel_values, captions, method: str, **options):
    """Explain all pairs in one call, then three pairs one at a time: the same maps and scores (text maps
    up to the single caption's own padding, past which the batch gives nothing). Returns the batch's."""
    exp = clipx.explain(model, pixel_values, captions, method=method, **options)
    n_images, n_texts = pixel_values.shape[0], len(captions)
    assert exp.scores.shape == (n_images, n_texts) and exp.image.shape[:2] == (n_images, n_texts)
    assert torch.isfinite(exp.image).all()
    if exp.text is not None:
        length = model.tokenize(captions).input_ids.shape[1]
        assert exp.text.shape == (n_images, n_texts, length) and torch.isfinite(exp.text).all()
    rtol = BATCHING_RTOL.get(method, FLOAT32_RTOL)
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        single = clipx.explain(model, pixel_values[i:i + 1], [captions[j]], method=method, **options)
        assert_float32_close(single.image[0, 0], exp.image[i, j], rtol)
        assert_float32_close(single.scores[0, 0], exp.scores[i, j])
        if exp.text is not None:
            n = single.text.shape[-1]  # a single caption may be padded less
            assert_float32_close(single.text[0, 0], exp.text[i, j, :n], rtol)
            assert exp.text[i, j, n:].abs().sum() == 0  # padding gets no relevance
    return exp


def map_change_after_rerandomising(model, pixel_values, captions, method: str, **options) -> float:
    """The sanity check of Adebayo et al. (2018): the largest change in `method`'s image maps when the
    last vision block's weights are re-randomised (in place: pass a model of the test's own)."""
    before = clipx.explain(model, pixel_values, captions, method=method, **options).image
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.vision.blocks[-1].parameters():
            p.copy_(torch.randn_like(p) * p.std().clamp(min=0.05))
    after = clipx.explain(model, pixel_values, captions, method=method, **options).image
    return float((before - after).abs().max())
