"""Explanation.figure(): overlays that keep the image, scales shared across the pairs (or not, on request), colour
bars that say what the values are, titles with the score and the method's non-default options, words labelled
with their values."""

import io

import numpy as np
import pytest
import torch

import clipx
from clipx import Explanation
from clipx.explain.legend import ALPHA
from inputs import CAPTIONS, images

TOKENS = [["<|startoftext|>", "a", "red", "dog", "<|endoftext|>"], ["<|startoftext|>", "a", "cat", "<|endoftext|>"]]


def two_pairs(method="relevance", image=None, text=None, **options) -> Explanation:
    """One grey image against two captions: caption 0's map strong, caption 1's a tenth of it."""
    if image is None:
        strong = torch.zeros(4, 4)
        strong[:2, 2:] = 1.0  # a block of patches: upsampled, its middle keeps the value
        image = torch.stack([strong, strong / 10])[None]
    if text is None:
        text = torch.tensor([[[0.9, 0.2, 0.6, 0.1, 1.0], [0.9, 0.3, 0.4, 1.0, 0.0]]])
    return Explanation(image=image, text=text, scores=torch.tensor([[10.0, 8.0]]), tokens=TOKENS,
                       texts=["a red dog", "a cat"], method=method, options=options,
                       images=torch.full((1, 16, 16, 3), 128, dtype=torch.uint8))


def panels(fig, n):
    return fig.axes[:n]  # the pairs' axes come first, the colour bars after them


def colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def opacity(ax) -> np.ndarray:
    """The overlay's opacity over the panel's image, 0..255."""
    return np.asarray(ax.images[1].get_array())[..., 3]


def test_a_shared_scale_makes_the_weak_pair_look_weak():
    fig = two_pairs().figure()
    strong, weak = (opacity(ax) for ax in panels(fig, 2))
    assert strong.max() == round(255 * ALPHA) and abs(weak.max() - 255 * ALPHA / 10) <= 1
    assert strong.min() == weak.min() == 0  # where the map is 0 the image shows as it is
    bars = colour_bars(fig)
    assert len(bars) == 2 and bars[0].get_ylabel() == "relevance" and bars[1].get_xlabel() == "words: relevance"
    assert bars[0].get_ylim() == pytest.approx((0.0, 1.0))  # every pair's limits, from zero: relevance is not negative


def test_a_scale_per_panel_on_request():
    fig = two_pairs().figure(scale="panel", alpha=0.5)
    assert [opacity(ax).max() for ax in panels(fig, 2)] == [128, 128]
    map_bars = [ax for ax in colour_bars(fig) if ax.get_ylabel() == "relevance"]
    assert [ax.get_ylim()[1] for ax in map_bars] == pytest.approx([1.0, 0.1])
    with pytest.raises(ValueError, match="scale must be one of 'shared', 'panel', got 'global'"):
        two_pairs().figure(scale="global")


def test_signed_maps_are_diverging_around_zero():
    image = torch.zeros(1, 2, 4, 4)
    image[0, 0, 0, 0], image[0, 1, 3, 3] = 3.0, -1.0  # mostly positive: the limits stay symmetric
    fig = two_pairs("integrated_gradients", image=image).figure()
    bar = colour_bars(fig)[0]
    assert bar.get_ylim() == pytest.approx((-3.0, 3.0)) and bar.get_ylabel() == "attribution (logit units)"
    assert bar._colorbar.cmap.name == "RdBu_r"
    first, second = panels(fig, 2)
    assert opacity(first)[0, 0] == round(255 * ALPHA) and abs(int(opacity(second)[-1, -1]) - 255 * ALPHA / 3) <= 1
    assert opacity(first)[8, 8] == 0  # zero is no effect: no colour


def test_titles_say_caption_score_and_the_options_that_differ():
    fig = two_pairs(start_layer=-1, start_layer_text=-1, exclude_high_norm=None).figure(scoring="softmax")
    assert fig._suptitle.get_text() == "relevance (start_layer=-1)"
    p = 1 / (1 + np.exp(-2.0))
    assert [ax.get_title() for ax in panels(fig, 2)] == [f"a red dog\nlogit 10.00, softmax {p:.2f}",
                                                          f"a cat\nlogit 8.00, softmax {1 - p:.2f}"]
    assert two_pairs().figure()._suptitle.get_text() == "relevance"


def test_words_carry_their_values_on_one_scale():
    fig = two_pairs().figure()
    first, second = panels(fig, 2)
    assert [t.get_text() for t in first.texts] == ["a\n0.20", "red\n0.60", "dog\n0.10"]  # BOS and EOS left out
    assert [t.get_text() for t in second.texts] == ["a\n0.30", "cat\n0.40"]
    shades = [t.get_bbox_patch().get_facecolor() for t in first.texts + second.texts]
    assert sum(shades[1][:3]) < sum(shades[3][:3]) < sum(shades[0][:3])  # darker for more: 0.6, 0.3, 0.2
    assert colour_bars(fig)[1].get_xlim() == pytest.approx((0.0, 0.6))  # the words of both captions


def test_a_map_without_images_is_drawn_whole():
    exp = two_pairs()
    exp.images = None
    fig = exp.figure()
    cells = np.asarray(panels(fig, 1)[0].images[0].get_array())
    assert cells.shape == (4, 4, 3) and len(set(map(tuple, cells.reshape(-1, 3)))) == 2  # the map's own colours


def test_figures_of_real_explanations_draw(model):
    for method, options in (("relevance", {"start_layer": 0}), ("similarity", {}), ("occlusion", {"window": 2})):
        exp = clipx.explain(model, images(2), CAPTIONS[:2], method=method, **options)
        fig = exp.figure()
        fig.savefig(io.BytesIO(), format="png")
        assert len(panels(fig, 4)) == 4 and len(colour_bars(fig)) == 1 + (exp.text is not None)
