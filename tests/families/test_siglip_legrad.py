"""LeGrad on SigLIP as its authors do it (WalBouss/LeGrad's `compute_legrad_siglip`): the pooling head re-run
on each layer's tokens, gradients with respect to its probe's attention, and the "a photo of a" mask;
checked against their code written out on transformers' SiglipModel with the same weights."""

from __future__ import annotations

import pytest
import torch

import clipx
from checkpoints import SIGLIP_VISION, hf_siglip, save_siglip
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from siglip_head import legrad_authors
from transformers_parity import load_strictly

CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "two birds"]
N_LAYERS = SIGLIP_VISION["num_hidden_layers"]


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """(the weights' folder, transformers' tiny SiglipModel that wrote them)."""
    hf, folder = hf_siglip(), tmp_path_factory.mktemp("tiny-siglip-legrad")
    save_siglip(hf, folder)
    return folder, hf


@pytest.fixture(scope="module")
def model(siglip):
    return load_strictly(siglip[0])


def pixels(n=2, seed=3):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("start_layer", [0, -1])
def test_probe_variant_equals_the_authors_siglip_path(siglip, model, start_layer):
    hf, px, tok = siglip[1], pixels(), model.tokenize(CAPTIONS)
    layers = range(N_LAYERS + start_layer if start_layer < 0 else start_layer, N_LAYERS)
    neutral_tok = model.tokenize(["a photo of a"])
    ref = legrad_authors(hf, px, tok, layers, neutral_tok)
    plain = legrad_authors(hf, px, tok, layers)
    assert (ref == 0).sum() > (plain == 0).sum()  # the mask zeroes patches the plain map kept
    assert (legrad_authors(hf, px, tok, layers, ln_post=True) - plain).abs().max() > 1e-2  # ln_post matters
    exp = clipx.explain(model, px, CAPTIONS, method="legrad", start_layer=start_layer, variant="probe")
    assert_float32_close(exp.image.flatten(2), ref)
    exp = clipx.explain(model, px, CAPTIONS, method="legrad", start_layer=start_layer, variant="probe",
                        correction=False)
    assert_float32_close(exp.image.flatten(2), plain)


def test_the_correction_masks_the_same_patches_for_every_caption(model):
    px = pixels(3)
    kept = clipx.explain(model, px, CAPTIONS, method="legrad", variant="probe", start_layer=0, correction=False).image
    masked = clipx.explain(model, px, CAPTIONS, method="legrad", variant="probe", start_layer=0).image
    zeroed = (masked == 0) & (kept > 0)
    assert zeroed.any()
    assert (zeroed == zeroed[:, :1]).all()  # the neutral map is the image's, whatever the caption
    # a threshold nothing exceeds (the neutral map's max is 1) is no correction
    loose = clipx.explain(model, px, CAPTIONS, method="legrad", variant="probe", start_layer=0, correction_threshold=1.0).image
    assert_float32_close(loose, kept)
    other = clipx.explain(model, px, CAPTIONS, method="legrad", variant="probe", start_layer=0, correction="two birds").image
    assert ((other == 0) != (masked == 0)).any()  # the prompt chooses the mask


@pytest.mark.parametrize("options", [{"variant": "blocks"}, {"variant": "blocks", "correction": "a photo"},
                                     {"variant": "probe", "correction": "two birds", "correction_threshold": 0.5}])
def test_variants_batched_equal_single_pairs(model, options):
    check_batched_equals_single(model, pixels(3), CAPTIONS, "legrad", **options)


@pytest.mark.parametrize("variant", ["blocks", "probe"])
def test_both_variants_change_when_the_last_block_is_rerandomised(siglip, variant):
    change = map_change_after_rerandomising(load_strictly(siglip[0]), pixels(), CAPTIONS, "legrad",
                                            variant=variant)
    assert change > 1e-3


def test_blocks_variant_is_the_default_and_has_no_correction_unless_asked(model):
    px = pixels()
    exp = clipx.explain(model, px, CAPTIONS, method="legrad")
    assert exp.options["variant"] == "blocks"  # also on an attention-pooled tower: it points better on the demo
    base = exp.image
    assert_float32_close(base, clipx.explain(model, px, CAPTIONS, method="legrad", variant="blocks",
                                             correction=False).image)
    assert (clipx.explain(model, px, CAPTIONS, method="legrad", variant="blocks", correction="a photo of a").image
            != base).any()


@pytest.mark.parametrize("options, match", [
    ({"variant": "cls"}, "variant 'cls' is not one of"),
    ({"correction": ""}, "correction must be True, False or a non-empty prompt"),
    ({"correction": 3}, "correction must be True, False or a non-empty prompt"),
    ({"correction_threshold": 1.5}, "correction_threshold must lie in 0..1"),
])
def test_bad_options_are_refused(model, options, match):
    with pytest.raises(ValueError, match=match):
        clipx.explain(model, pixels(1), CAPTIONS[:1], method="legrad", **options)


def test_the_correction_without_a_tokenizer_says_how_to_go_on(siglip):
    bare = load_strictly(siglip[0])
    tok = bare.tokenize(CAPTIONS[:1])
    bare.tokenizer = None
    with pytest.raises(ValueError, match="needs the model's tokenizer.*correction=False"):
        clipx.explain(bare, pixels(1), tok, method="legrad", variant="probe")
    exp = clipx.explain(bare, pixels(1), tok, method="legrad", variant="probe", correction=False)
    assert exp.image.shape == (1, 1, 4, 4)
