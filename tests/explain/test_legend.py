"""clipx.explain.legend: the colour scales every picture of a map is drawn on (limits by what the method
declares its values to be, colours, the opacity that leaves the image alone where a map says nothing) and
the titles (scores, the method with its non-default options)."""

import numpy as np
import pytest
import torch
from PIL import Image

import clipx
from clipx.explain.core import VALUES, Values
from clipx.explain.legend import (DIVERGING, SEQUENTIAL, WORDS, Scale, image_scale, map_values, method_title,
                                  non_default, pair_title, score_title, text_scale)
from inputs import CAPTIONS, images


# --- limits ----------------------------------------------------------------------------------------------------

def test_fit_gives_each_kind_its_limits():
    values = [torch.tensor([[-0.5, 2.0]]), np.array([1.0, np.nan, -3.0])]  # several maps, a NaN among them
    assert Scale.fit(values, "signed") == Scale(-3.0, 3.0, True)  # centred: zero is no effect
    assert Scale.fit(values, "positive") == Scale(0.0, 2.0)       # from zero, whatever the data's smallest
    assert Scale.fit(values, "level") == Scale(-3.0, 2.0)         # from the smallest: only differences count
    for kind in ("signed", "positive", "level"):  # all-zero maps draw as nothing, not as a division by zero
        flat = Scale.fit(torch.zeros(3, 3), kind)
        assert flat.high > flat.low and (flat.rgba(torch.zeros(3, 3))[..., 3] == 0).all()
    assert Scale.fit(torch.zeros(2), "signed").colormap == DIVERGING
    assert Scale.fit([1.0], "level").colormap == SEQUENTIAL


def test_bad_scales_are_refused_by_name():
    with pytest.raises(ValueError, match="kind must be one of signed, positive, level, got 'diverging'"):
        Scale.fit([1.0], "diverging")
    with pytest.raises(ValueError, match="low < high"):
        Scale(1.0, 1.0)
    with pytest.raises(ValueError, match="centred at zero"):
        Scale(-1.0, 2.0, signed=True)
    with pytest.raises(ValueError, match=r"alpha is an opacity in \[0, 1\], got 1.5"):
        Scale(0.0, 1.0).rgba([0.5], alpha=1.5)
    with pytest.raises(ValueError, match="Values kind must be one of"):
        Values("diverging", "relevance")


def test_opacity_follows_the_distance_from_where_the_map_says_nothing():
    sequential, signed = Scale(0.0, 4.0), Scale(-4.0, 4.0, True)
    values = np.array([0.0, 1.0, 2.0, 4.0, 9.0, np.nan])
    assert sequential.rgba(values, alpha=1.0)[:, 3].tolist() == [0, 64, 128, 255, 255, 0]  # beyond the limit: the limit
    halfway = signed.rgba(np.array([-4.0, -2.0, 0.0, 2.0, 4.0]), alpha=1.0)[:, 3].astype(int)
    assert halfway[[0, 2, 4]].tolist() == [255, 0, 255] and (abs(halfway[[1, 3]] - 128) <= 2).all()
    assert (signed.rgba(values, alpha=0.5)[:, 3] <= 128).all()
    blue, white, red = signed.colours([-4.0, 0.0, 4.0])
    assert blue[2] > blue[0] and red[0] > red[2] and white.min() > 240  # RdBu_r: blue below zero, red above


def test_words_are_shaded_light_where_low_on_white():
    positive = Scale(0.0, 1.0, label="relevance")
    low, high = positive.on_white().colours([0.0, 1.0])
    assert positive.on_white().colormap == WORDS and low.min() > 230 and high.sum() < low.sum() - 200
    assert Scale(-1.0, 1.0, True).on_white() == Scale(-1.0, 1.0, True)  # white at zero already
    assert Scale(0.0, 1.0, cmap="viridis").on_white().colormap == "viridis"  # a chosen map is kept


def test_tick_labels_have_digits_for_their_range():
    assert [Scale(-9.5, 9.5, True).format(v) for v in Scale(-9.5, 9.5, True).ticks] == ["-9.5", "0.0", "9.5"]
    assert [Scale(0.0, 0.062).format(v) for v in (0.0, 0.0341)] == ["0.000", "0.034"]
    assert Scale(-1.0, 1.0, True).format(-0.001) == "0.0"  # no "-0.0"


# --- what each method's maps hold --------------------------------------------------------------------------

def test_every_method_declares_its_values_from_its_maths():
    """Signed: attributions and differences that may have either sign; positive: relevance, attention and
    Grad-CAM's ReLU, LeGrad's min-max; level: RISE's expected logit, whose zero means nothing."""
    assert set(VALUES) == set(clipx.methods())
    kinds = {name: values.kind for name, values in VALUES.items()}
    assert {m for m, k in kinds.items() if k == "signed"} == {"integrated_gradients", "occlusion", "similarity"}
    assert {m for m, k in kinds.items() if k == "level"} == {"rise"}
    assert VALUES["integrated_gradients"].label == "attribution (logit units)"


@pytest.mark.parametrize("method", [m for m, v in VALUES.items() if v.kind == "positive"])
def test_methods_declared_positive_give_no_negative_value(model, method):
    exp = clipx.explain(model, images(), CAPTIONS, method=method)
    assert exp.image.min() >= 0 and (exp.text is None or exp.text.min() >= 0)


def test_captum_and_neutral_maps_are_signed(model):
    assert map_values("captum.Saliency") == Values("signed", "attribution")
    assert map_values("someone's method").kind == "signed"  # unknown sign: the scale that misleads least
    exp = clipx.explain(model, images(), CAPTIONS[:2], method="relevance", neutral="a photo")
    assert map_values(exp.method, exp.options) == Values("signed", "relevance minus the neutral caption's")
    assert map_values(exp.method, exp.options, "text").kind == "positive"  # text maps stay the captions' own
    assert image_scale(exp).signed and exp.image.min() < 0 < exp.image.max()


def test_shared_scales_hold_every_pair_and_pair_scales_one(model):
    exp = clipx.explain(model, images(), CAPTIONS, method="relevance", start_layer=0)
    shared = image_scale(exp)
    assert shared == Scale(0.0, float(exp.image.max()), False, "relevance")
    assert image_scale(exp, (1, 2)).high == pytest.approx(float(exp.image[1, 2].max()))
    words = text_scale(exp)  # the words only: EOS's own relevance (about 1) is left out
    values = [exp.text[i, j, 1:len(t) - 1] for i in range(3) for j, t in enumerate(exp.tokens)]
    assert words.high == pytest.approx(max(float(v.max()) for v in values)) and words.colormap == WORDS


# --- titles ------------------------------------------------------------------------------------------------

def test_titles_name_the_options_that_differ_from_the_defaults(model):
    default = clipx.explain(model, images(1), CAPTIONS[:2], method="relevance")
    assert method_title(default.method, default.options) == "relevance"
    changed = clipx.explain(model, images(1), CAPTIONS[:2], method="relevance", start_layer=-1, start_layer_text=-1,
                            neutral="")
    assert method_title(changed.method, changed.options) == "relevance (start_layer=-1, neutral='')"
    baseline = torch.zeros(3, 32, 32)
    passed = non_default("integrated_gradients", {"n_steps": 32, "image_baseline": baseline})
    assert list(passed) == ["image_baseline"] and passed["image_baseline"] is baseline
    assert method_title("integrated_gradients", {"n_steps": 8, "image_baseline": baseline}) == \
        "integrated_gradients (n_steps=8, image_baseline=tensor[3, 32, 32])"
    assert method_title("someone's method", {"k": 1.5}) == "someone's method (k=1.5)"  # no defaults known: all shown


def test_captum_titles_compare_with_its_own_defaults(model):
    from captum.attr import Saliency

    exp = clipx.explain(model, images(1), CAPTIONS[:1], method=Saliency, abs=False)
    assert method_title(exp.method, exp.options) == "captum.Saliency (abs=False)"
    assert method_title(exp.method, {**exp.options, "abs": True}) == "captum.Saliency"


def test_scores_say_which_probability():
    logits = torch.tensor([10.0, 11.0])
    assert score_title(logits, 0) == "logit 10.00"
    assert score_title(logits, 0, "softmax") == f"logit 10.00, softmax {1 / (1 + np.e):.2f}"
    assert score_title(logits, 1, "sigmoid") == f"logit 11.00, sigmoid {1 / (1 + np.exp(-11.0)):.2f}"
    assert score_title(logits[:1], 0, "softmax") == "logit 10.00"  # a softmax over one caption says nothing
    with pytest.raises(ValueError, match="scoring must be 'softmax', 'sigmoid' or None, got 'max'"):
        score_title(logits, 0, "max")


def test_pair_titles(model):
    exp = clipx.explain(model, [Image.new("RGB", (40, 30), "red")], CAPTIONS[:2], method="rollout")
    assert pair_title(exp, 0, 1, "softmax") == [CAPTIONS[1], score_title(exp.scores[0], 1, "softmax"), "rollout"]
