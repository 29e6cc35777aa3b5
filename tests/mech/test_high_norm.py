"""Artifact-robust maps: the high-norm token detector, `exclude_high_norm` on the attention-based methods,
and `neutral=` (a neutral caption's map subtracted) on the caption-dependent ones."""

import pytest
import torch

import clipx
from clipx.explain.method.rollout import rollout_matrix
from clipx.mech.high_norm import high_norm_tokens
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from inputs import CAPTIONS, images

ATTENTION_BASED = ["rollout", "attention", "relevance", "legrad"]
PLANTED = 6  # the patch (row 1, column 2 of the tiny model's 4x4 grid) made high-norm from block 1 on


def planted(model, patch=PLANTED, scale=30.0):
    """Hooks that give one patch token a large norm from block 1's input on, as a ViT's artifact tokens have."""
    position = model.vision.prefix_tokens + patch

    def plant(x, hook):
        # the norm is read before the clone is written, so relevance through every layer can differentiate it
        boost = scale * x[:, position].norm(dim=-1, keepdim=True) * torch.ones_like(x[:, position])
        x = x.clone()
        x[:, position] += boost
        return x

    return model.hooks(fwd_hooks=[("vision.blocks.1.hook_resid_pre", plant)])


# --- the detector ---------------------------------------------------------------------------------

def test_detector_finds_a_planted_high_norm_patch_from_its_layer_on(model):
    with planted(model):
        found = high_norm_tokens(model, images())
    assert found.mask.shape == (2, 3, 4, 4)
    assert not found.mask[0].any()  # block 0's output is before the plant
    for image in range(3):
        assert found.patches(layer=1, image=image) == [(1, 2)]
    assert found.any_layer.sum() == 3 and found.relative[1, :, 1, 2].min() > 3
    assert repr(found) == "HighNormTokens(2 layers x 3 images of 4x4 patches, ratio 3: 3 high-norm)"
    report = str(found)
    assert "| 0 |" in report and "| 1 |" in report and "3 of 3" in report
    fig = found.plot(image=0)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["layer 0", "layer 1"]


def test_detector_flags_nothing_on_a_model_without_artifacts(model):
    found = high_norm_tokens(model, images())
    assert not found.mask.any() and found.relative.max() < 3


@pytest.mark.parametrize("ratio", [1, 0.5, True, "3", float("nan"), float("inf")])
def test_bad_ratios_are_refused(model, ratio):
    with pytest.raises(ValueError, match="ratio must be a number above 1"):
        high_norm_tokens(model, images(1), ratio=ratio)
    with pytest.raises(ValueError, match="exclude_high_norm must be a number above 1"):
        clipx.explain(model, images(1), CAPTIONS[:1], method="rollout", exclude_high_norm=ratio)


# --- exclusion from attention-based maps ------------------------------------------------------------

@pytest.mark.parametrize("method", ATTENTION_BASED)
def test_excluded_patches_get_nothing_and_others_keep_their_maps_when_none_is_flagged(model, method):
    px = images()
    plain = clipx.explain(model, px, CAPTIONS, method=method)
    assert torch.equal(clipx.explain(model, px, CAPTIONS, method=method, exclude_high_norm=1e6).image, plain.image)
    with planted(model):
        excluded = clipx.explain(model, px, CAPTIONS, method=method, exclude_high_norm=3.0)
        kept = clipx.explain(model, px, CAPTIONS, method=method)
    row, col = divmod(PLANTED, 4)
    assert (excluded.image[:, :, row, col] == 0).all()
    assert (kept.image[:, :, row, col] != 0).any()
    assert excluded.options["exclude_high_norm"] == 3.0


def test_exclusion_equals_rollout_and_attention_with_the_keys_dropped_by_hand(model):
    px = images()
    n_layers, position = 2, 1 + PLANTED
    with planted(model), model.recording([f"vision.blocks.{i}.attn.hook_pattern" for i in range(n_layers)]) as cache:
        model.encode_image(px)
        rolled = clipx.explain(model, px, CAPTIONS[:1], method="rollout", exclude_high_norm=3.0)
        attended = clipx.explain(model, px, CAPTIONS[:1], method="attention", exclude_high_norm=3.0)
    patterns = [cache[f"vision.blocks.{i}.attn.hook_pattern"].clone() for i in range(n_layers)]
    for p in patterns:
        p[..., position] = 0
    assert_float32_close(rolled.image[:, 0].flatten(1), rollout_matrix(patterns)[:, 0, 1:])
    assert_float32_close(attended.image[:, 0].flatten(1), patterns[-1].mean(1)[:, 0, 1:])


def test_exclusion_drops_the_patch_from_an_attention_pooling_probe():
    model = clipx.load("demo-siglip")
    grid = model.vision.config.image_size // model.vision.config.patch_size
    size = model.vision.config.image_size
    px = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1  # SigLIP's range
    with planted(model, patch=grid + 2):
        for method in ("attention", "rollout", "relevance"):
            exp = clipx.explain(model, px, ["a red circle"], method=method, exclude_high_norm=3.0)
            assert (exp.image[:, :, 1, 2] == 0).all()


@pytest.mark.parametrize("method, options", [("rollout", {"exclude_high_norm": 1.05}),
                                             ("relevance", {"exclude_high_norm": 1.05, "start_layer": 0}),
                                             ("legrad", {"exclude_high_norm": 1.05}),
                                             ("relevance", {"neutral": "a photo"}),
                                             ("gradcam", {"neutral": "an image of something rather long"})])
def test_batched_equals_single_pair_with_the_options(model, method, options):
    check_batched_equals_single(model, images(), CAPTIONS, method, **options)


# --- neutral caption subtraction ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["relevance", "gradcam", "legrad", "integrated_gradients", "similarity",
                                    "occlusion", "rise"])
def test_neutral_subtracts_the_neutral_captions_map_and_keeps_the_rest(model, method):
    px, neutral = images(2), "a photo of something, anything at all"  # longer than every caption
    exp = clipx.explain(model, px, CAPTIONS, method=method, neutral=neutral)
    plain = clipx.explain(model, px, CAPTIONS, method=method)
    with_neutral = clipx.explain(model, px, CAPTIONS + [neutral], method=method)
    assert_float32_close(exp.image, with_neutral.image[:, :3] - with_neutral.image[:, 3:])
    assert_float32_close(exp.scores, plain.scores)  # the text batch is one caption shorter: last bits may differ
    assert exp.tokens == plain.tokens and exp.texts == CAPTIONS
    if plain.text is not None:
        assert exp.text.shape == plain.text.shape
        assert_float32_close(exp.text, plain.text)
    if plain.token_maps is not None:  # the captions' own positions, not the neutral caption's padding
        assert exp.token_maps.shape == plain.token_maps.shape
        assert_float32_close(exp.token_maps, plain.token_maps)
    assert exp.options["neutral"] == neutral


def test_neutral_tokenizes_the_captions_once(model):
    long = " ".join(["cat"] * 2 * model.tokenizer.context_length)
    with pytest.warns(UserWarning, match="longer than context_length") as caught:
        exp = clipx.explain(model, images(1), [long, "two birds"], method="gradcam", neutral="a photo")
    assert len([w for w in caught if "longer than context_length" in str(w.message)]) == 1
    assert exp.text.shape[-1] == model.tokenizer.context_length


def test_neutral_passes_the_sanity_check(tiny_checkpoint):
    change = map_change_after_rerandomising(clipx.load(tiny_checkpoint[0]), images(2), CAPTIONS, "relevance",
                                            neutral="a photo")
    assert change > 1e-3


def test_neutral_is_refused_where_it_means_nothing(model):
    for method in ("rollout", "attention"):
        with pytest.raises(ValueError, match=f"method '{method}' gives every caption the same image map"):
            clipx.explain(model, images(1), CAPTIONS, method=method, neutral="a photo")
    with pytest.raises(TypeError, match="neutral must be a caption"):
        clipx.explain(model, images(1), CAPTIONS, method="relevance", neutral=["a photo"])
    with pytest.raises(ValueError, match="neutral= takes captions as strings"):
        clipx.explain(model, images(1), model.tokenize(CAPTIONS), method="relevance", neutral="a photo")
