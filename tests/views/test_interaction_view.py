"""InteractionView headless (ipyevents messages sent from Python), its static figure and the region outline:
a span shows exactly `Interactions.span`'s map, a region exactly `Interactions.box`'s strip, each pair is
computed once, and bad selections are refused clearly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from IPython.core.formatters import DisplayFormatter
from PIL import Image

import clipx
import clipx.views.cache
from clipx.explain.legend import Scale, region_edges
from clipx.views import InteractionView, interaction_figure, outline_cells
from floats import assert_float32_close
from widgets import event

TEXTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 48, 3), dtype=np.uint8))
            for seed in range(2)]


@pytest.fixture(scope="module")
def every_pair(eager_model, images):
    """All pairs in one batched call, which the view's one-pair-at-a-time cache must agree with."""
    return clipx.interactions(eager_model, images, TEXTS, n_steps=4)


@pytest.fixture()
def computed(monkeypatch):
    """The (images, captions) of every `interactions` call the views' cache makes."""
    calls = []
    compute = clipx.views.cache.interactions

    def counted(model, pixel_values, texts, **options):
        calls.append((len(pixel_values), tuple(texts)))
        return compute(model, pixel_values, texts, **options)

    monkeypatch.setattr(clipx.views.cache, "interactions", counted)
    return calls


def shown_map(view) -> np.ndarray:
    return view.pointed[0]


def strip(view) -> list[float]:
    return [float(b.tooltip.split(": ")[-1]) for b in view.token.children]


def press(view, start, end=None, shift=False):
    """A press on patch `start` and a release on `end` (default: the same patch): a click, or a drag."""
    view.pressed({**event(view, start, "mousedown"), "shiftKey": shift})
    view.pressed({**event(view, end or start, "mouseup"), "shiftKey": shift})


def test_a_span_shows_exactly_its_region_map(eager_model, images, every_pair, computed):
    view = InteractionView(eager_model, images, TEXTS, n_steps=4, size=96)
    assert view.token.tokens == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    assert view.token.value == (3, 3)  # the caption's last word
    before = bytes(view.picture.value)
    view.token.pressed(1, {"type": "mousedown"})
    view.token.pressed(1, {"type": "mouseup"})
    view.token.pressed(3, {"type": "mousedown", "shiftKey": True})  # extends the span from token 1
    assert view.token.value == (1, 3) and bytes(view.picture.value) != before
    assert_float32_close(shown_map(view), every_pair.span(0, 0, slice(1, 4)), rtol=1e-4, what="span 1-3's map")
    view.token.pressed(4, {"type": "mousedown"})
    view.token.pressed(2, {"type": "mouseup"})  # a drag from EOS back to "red"
    assert view.token.value == (2, 4)
    assert_float32_close(shown_map(view), every_pair.span(0, 0, [2, 3, 4]), rtol=1e-4)
    borders = [b.layout.border for b in view.token.children]
    assert [b.startswith("2px solid #222") for b in borders] == [False, False, True, True, True]
    assert "span “red circle <|endoftext|>” (positions 2–4)" in view.summary and "&lt;|endoftext|&gt;" in view.panel.value
    assert computed == [(1, (TEXTS[0],))]  # one pair, at the start: selections only re-slice it


def test_a_region_shows_exactly_its_token_strip(eager_model, images, every_pair, computed):
    view = InteractionView(eager_model, images, TEXTS, n_steps=4, size=96)
    assert view.region.all()  # the whole image, until a region is picked
    assert_float32_close(torch.tensor(strip(view)), every_pair.box(0, 0), rtol=1e-3)
    grid = view.grid
    before = bytes(view.picture.value)
    press(view, (0, 0), (1, 2))  # a drag: the box between the two patches
    expected = np.zeros(grid, bool)
    expected[0:2, 0:3] = True
    assert np.array_equal(view.region, expected) and bytes(view.picture.value) != before
    assert_float32_close(torch.tensor(strip(view)), every_pair.box(0, 0, slice(0, 2), slice(0, 3)), rtol=1e-3)
    press(view, (3, 3), shift=True)  # shift adds a patch
    expected[3, 3] = True
    assert np.array_equal(view.region, expected)
    assert_float32_close(torch.tensor(strip(view)), every_pair.box(0, 0, mask=torch.from_numpy(expected)), rtol=1e-3)
    press(view, (3, 3), shift=True)  # and a second shift-press takes it out again
    expected[3, 3] = False
    assert np.array_equal(view.region, expected)
    press(view, (2, 1))  # a plain press: that patch alone
    assert view.region.sum() == 1 and view.region[2, 1]
    press(view, (2, 1), shift=True)  # the region's last patch stays
    assert view.region.sum() == 1 and view.region[2, 1]
    assert "region 1 patch:" in view.panel.value
    view.pressed({"type": "mousedown", "dataX": 10 * view.shown[0], "dataY": 1})  # off the picture: nothing
    view.pressed(event(view, (0, 0), "mouseup"))
    assert view.region.sum() == 1 and view.region[2, 1]
    assert computed == [(1, (TEXTS[0],))]


def test_each_pair_is_computed_once_when_first_shown(eager_model, images, every_pair, computed):
    view = InteractionView(eager_model, images, TEXTS, n_steps=4, size=96)
    view.caption_choice.value = TEXTS[1]
    assert view.token.tokens[3] == "square" and view.token.value == (3, 3)
    view.image_choice.value = 1
    assert_float32_close(shown_map(view), every_pair.span(1, 1, 3), rtol=1e-4, what="image 1, caption 1")
    view.caption_choice.value = TEXTS[0]
    view.image_choice.value = 0  # seen before
    view.opacity.value = 0.3
    view.image_choice.value = 1
    view.caption_choice.value = TEXTS[1]
    assert computed == [(1, (TEXTS[0],)), (1, (TEXTS[1],)), (1, (TEXTS[1],)), (1, (TEXTS[0],))]
    assert list(view.results._done) == [(0, TEXTS[0]), (0, TEXTS[1]), (1, TEXTS[1]), (1, TEXTS[0])]
    assert view.status.value == ""  # the progress line is cleared


def test_the_static_fallback_and_the_figure_show_what_the_view_shows(eager_model, images):
    view = InteractionView(eager_model, images, TEXTS, n_steps=4, size=96)
    bundle, _ = DisplayFormatter().format(view)
    assert bundle["text/plain"] == "InteractionView(2 images x 2 captions)"
    assert bundle["image/png"] == bytes(view.picture.value) and "red" in bundle["text/html"]
    view.token.value = (2, 3)
    press(view, (0, 0), (1, 1))
    fig = view.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert "span: red circle" in titles and "region: 4 of 16 patches" in titles
    assert "a red circle" in fig._suptitle.get_text()


def test_the_figure_marks_the_span_and_shades_the_region_words(eager_model, images, every_pair):
    fig = every_pair.figure(1, 0, span=[2, 3], rows=slice(0, 2), cols=1)
    image_axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in image_axes] == ["span: red circle", "region: 2 of 16 patches"]
    span_words = {t.get_text(): t.get_bbox_patch().get_facecolor()[:3] for t in image_axes[0].texts}
    assert set(span_words) == {"a", "red", "circle"}  # the caption's words, BOS and EOS left out
    assert span_words["red"] == span_words["circle"] != span_words["a"]  # the span's words marked alike
    strip = every_pair.box(1, 0, slice(0, 2), 1)
    labels = [t.get_text() for t in image_axes[1].texts]
    assert labels[1].startswith("red\n") and float(labels[1].split("\n")[1]) == pytest.approx(
        float(strip[2]), abs=0.5 * 10 ** -len(labels[1].split(".")[-1]))
    only_span = interaction_figure(every_pair, 0, 1)  # no region: one picture, the last word's map
    assert [ax.get_title() for ax in only_span.axes if ax.get_title()] == ["span: square"]
    assert tuple(every_pair.images.shape) == (2, 32, 32, 3)  # what the model saw, drawn under the map


def test_without_pictures_the_figure_draws_the_map_itself(every_pair):
    bare = dataclasses.replace(every_pair, images=None)
    fig = bare.figure(0, 0, span=2, rows=0)
    drawn = fig.axes[0].get_images()[0].get_array()
    values = every_pair.span(0, 0, 2)
    scale = Scale.fit(values, "signed", "interaction")
    assert drawn.shape == (4, 4, 3) and np.array_equal(np.asarray(drawn), scale.colours(values))


def test_bad_selections_are_refused_clearly(eager_model, images, every_pair):
    with pytest.raises(ValueError, match="holds no patch"):
        every_pair.figure(0, 0, rows=slice(2, 2))
    with pytest.raises(ValueError, match="mask must be a boolean tensor shaped like the patch grid"):
        every_pair.box(0, 0, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="holds none of the caption's 5 positions"):
        every_pair.figure(0, 0, span=slice(7, 9))
    with pytest.raises(IndexError, match="image 2 is not one of the 2 images"):
        every_pair.figure(2, 0)
    with pytest.raises(ValueError, match="n_steps"):
        InteractionView(eager_model, images, TEXTS, n_steps=0)
    view = InteractionView(eager_model, images, TEXTS, n_steps=4, size=96)
    view.token.value = (3, 9)  # beyond the caption: the view falls back to its last word, not an error
    assert view.token.value == (3, 3)


def test_siglip_padding_is_left_out_of_the_strip_and_counted_beside_it(images):
    view = InteractionView(clipx.load("demo-siglip"), images[:1], ["a red circle"], n_steps=2, size=64)
    inter = view.results.get(0, "a red circle")
    assert len(inter.tokens[0]) == 16 and view.token.tokens == inter.tokens[0][:5]
    padding = float(inter.box(0, 0)[5:].sum())
    assert f"padding {padding:+.3g}" in view.summary


def test_region_outline_follows_the_mask():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    assert len(region_edges(mask)) == 8  # a 2 x 2 square: 8 patch edges
    mask[3, 3] = True  # a second piece, touching the first only at a corner
    assert len(region_edges(mask)) == 12
    image = Image.new("RGB", (41, 41), "black")
    out = np.asarray(outline_cells(image, mask))
    assert out[10, 15].tolist() == [255, 255, 255] and out[20, 20].tolist() == [0, 0, 0]  # the edge; inside
    assert np.asarray(outline_cells(image, np.ones((4, 4), bool))).max() == 0  # the whole grid: unmarked
