"""Occlusion and RISE: batching, one image forward per perturbation whatever the number of captions,
occlusion against the logit drop by hand and Captum's Occlusion, RISE's seeding, bad options."""

import pytest
import torch
import torch.nn.functional as F

import clipx
from checkpoints import hf_siglip, save_siglip
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from inputs import CAPTIONS, images

FAST_RISE = {"n_masks": 40, "batch_size": 16}


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_batched_equals_single_pair(model, method):
    check_batched_equals_single(model, images(), CAPTIONS, method)


@pytest.mark.parametrize("method, options", [("occlusion", {"window": 2, "stride": (1, 2), "baseline": "blur"}),
                                             ("rise", {**FAST_RISE, "baseline": "mean", "cell_size": 1, "p": 0.3})])
def test_batched_equals_single_pair_with_options(model, method, options):
    px = images()
    exp = clipx.explain(model, px, CAPTIONS, method=method, **options)
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        single = clipx.explain(model, px[i:i + 1], [CAPTIONS[j]], method=method, **options)
        assert_float32_close(single.image[0, 0], exp.image[i, j])


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_maps_change_when_the_last_block_is_rerandomised(tiny_checkpoint, method):
    assert map_change_after_rerandomising(clipx.load(tiny_checkpoint[0]), images(2), CAPTIONS, method) > 1e-3


@pytest.mark.parametrize("method, options, per_image", [("occlusion", {}, 1 + 16),
                                                        ("occlusion", {"window": 3, "stride": 1}, 1 + 4),
                                                        ("rise", FAST_RISE, 1 + 40)])
def test_one_image_forward_per_perturbation_whatever_the_captions(model, method, options, per_image):
    """The captions are encoded once and every perturbed image scores all of them."""
    for n_texts in (1, 3):
        counts = {"vision": 0, "text": 0}

        def count(tensor, hook, tower):
            counts[tower] += tensor.shape[0]

        with model.hooks(fwd_hooks=[(f"{tower}.hook_embed", lambda t, h, tower=tower: count(t, h, tower))
                              for tower in counts]):
            clipx.explain(model, images(2), CAPTIONS[:n_texts], method=method, **options)
        assert counts == {"vision": 2 * per_image, "text": n_texts}


def logit(model, pixel_values, caption):
    with torch.no_grad():
        return model(pixel_values=pixel_values, **model.tokenize([caption])).logits_per_image[:, 0]


def test_occlusion_is_the_logit_drop_by_hand(model):
    px = images(2)
    exp = clipx.explain(model, px, CAPTIONS[:2], method="occlusion")
    wide = clipx.explain(model, px, CAPTIONS[:2], method="occlusion", window=2, baseline="mean")
    for j, caption in enumerate(CAPTIONS[:2]):
        full = logit(model, px, caption)
        assert_float32_close(exp.scores[:, j], full)
        hidden = px.clone()
        hidden[:, :, 8:16, 16:24] = 0  # patch (1, 2) of the 4x4 grid, the "zero" baseline
        assert_float32_close(exp.image[:, j, 1, 2], full - logit(model, hidden, caption), floor=full.abs().max())
        # the corner patch lies in one 2x2 window only: its value is that window's drop
        hidden = px.clone()
        hidden[:, :, :16, :16] = px.mean((2, 3), keepdim=True)  # "mean": the image's mean colour
        assert_float32_close(wide.image[:, j, 0, 0], full - logit(model, hidden, caption), floor=full.abs().max())


def test_occlusion_equals_captums_occlusion_with_the_same_windows(model):
    from captum.attr import Occlusion

    px, captions = images(2), CAPTIONS
    exp = clipx.explain(model, px, captions, method="occlusion", window=2, stride=1)
    tok = model.tokenize(captions)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tok.input_ids, tok.attention_mask), dim=-1)

        def logits(pixel_values):
            return F.normalize(model.encode_image(pixel_values), dim=-1) @ text.T * model.logit_scale.exp()

        occlusion = Occlusion(logits)
        for j in range(len(captions)):
            attr = occlusion.attribute(px, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0,
                                       target=j)
            # rounding is relative to the logits, whose differences the map holds
            assert_float32_close(exp.image[:, j], attr[:, 0, ::8, ::8], floor=exp.scores.abs().max())


def test_only_the_patch_that_matters_gets_a_value(model):
    """A model that reads a single patch: cut every token but patch (2, 1) off before the blocks."""
    keep = 1 + 2 * 4 + 1  # the class token, then the patches in raster order

    def only_one_patch(tokens, hook):
        out = torch.zeros_like(tokens)
        out[:, keep] = tokens[:, keep]
        return out

    with model.hooks(fwd_hooks=[("vision.hook_embed", only_one_patch)]):
        exp = clipx.explain(model, images(2), CAPTIONS, method="occlusion")
    others = exp.image.flatten(2)[..., [k for k in range(16) if k != keep - 1]]
    assert others.abs().max() < 1e-4 * exp.scores.abs().max()
    assert exp.image[:, :, 2, 1].abs().min() > 1e-3


def test_rise_is_seeded(model):
    px = images(2)
    first, again, other = (clipx.explain(model, px, CAPTIONS[:2], method="rise", seed=s, **FAST_RISE)
                           for s in (3, 3, 4))
    assert torch.equal(first.image, again.image)
    assert (first.image - other.image).abs().max() > 1e-3
    other_batches = clipx.explain(model, px, CAPTIONS[:2], method="rise", seed=3, n_masks=40, batch_size=7)
    assert_float32_close(other_batches.image, first.image)  # the masks do not depend on the batches


def test_rise_is_the_expected_logit_where_a_patch_shows(model):
    """Every mask shows a patch or hides it; whatever the model, the map lies within the logits' range,
    near the full image's where most of it shows (p close to 1)."""
    px = images(1)
    exp = clipx.explain(model, px, CAPTIONS[:1], method="rise", p=0.999, **FAST_RISE)
    assert_float32_close(exp.image[0, 0], exp.scores[0, 0].expand(4, 4), rtol=2e-2)


@pytest.mark.parametrize("method, option, value, error, message", [
    ("occlusion", "window", 5, ValueError, r"window 5 is larger than the 4x4 patch grid"),
    ("occlusion", "window", (1, 5), ValueError, r"window \(1, 5\) is larger than the 4x4 patch grid"),
    ("occlusion", "window", 0, ValueError, "window must be at least 1, got 0"),
    ("occlusion", "window", (1, 2, 3), ValueError, "window must be an int or a"),
    ("occlusion", "stride", 1.5, TypeError, "stride must be an int, got 1.5"),
    ("occlusion", "baseline", "black", ValueError, "baseline must be one of 'zero', 'mean', 'blur', got 'black'"),
    ("occlusion", "batch_size", 0, ValueError, "batch_size must be at least 1, got 0"),
    ("rise", "n_masks", 0, ValueError, "n_masks must be at least 1, got 0"),
    ("rise", "p", 0, ValueError, r"p must be a number strictly between 0 and 1, got 0"),
    ("rise", "p", 1.0, ValueError, r"p must be a number strictly between 0 and 1, got 1.0"),
    ("rise", "p", True, ValueError, r"p must be a number strictly between 0 and 1, got True"),
    ("rise", "cell_size", 0, ValueError, "cell_size must be at least 1, got 0"),
    ("rise", "seed", "1", TypeError, "seed must be an int, got '1'")])
def test_bad_options_are_named(model, method, option, value, error, message):
    with pytest.raises(error, match=message):
        clipx.explain(model, images(1), CAPTIONS[:1], method=method, **{option: value})


def test_scores_carry_siglips_bias(tmp_path):
    save_siglip(hf_siglip(), tmp_path)
    siglip = clipx.load(tmp_path)
    px = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # SigLIP's range
    exp = clipx.explain(siglip, px, CAPTIONS[:2], method="occlusion")
    with torch.no_grad():
        expected = siglip(pixel_values=px, **siglip.tokenize(CAPTIONS[:2])).logits_per_image
    assert_float32_close(exp.scores, expected)
    assert exp.text is None and exp.image.shape == (2, 2, 4, 4)
