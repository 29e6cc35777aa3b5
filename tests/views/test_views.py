"""Rendering functions and the ipywidgets explorers, headless: controls are set from Python and
the Image widget's bytes, the HTML panel and the model's forward calls are checked."""

from __future__ import annotations

import io

import ipywidgets
import numpy as np
import pytest
import torch
from IPython.core.formatters import DisplayFormatter
from PIL import Image

import clipx
from clipx.explain.legend import Scale
from clipx.views import (AttentionView, Compare, Explorer, TokenPatchView, explanation_grid, grid, heads_grid,
                         matrix, overlay, to_png, token_html)
from widgets import changes, png_size

TEXTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 48, 3), dtype=np.uint8))
            for seed in range(2)]


# --- render --------------------------------------------------------------------------------------
def test_overlay_takes_any_heatmap_resolution_and_keeps_the_image_size():
    image = Image.fromarray(np.full((30, 50, 3), 128, np.uint8))
    for heatmap in (torch.rand(4, 4), np.random.rand(30, 50), torch.rand(7, 3)):
        out = overlay(image, heatmap)
        assert out.size == (50, 30) and out.mode == "RGB"
    assert np.array_equal(np.asarray(overlay(image, torch.rand(4, 4), alpha=0)), np.asarray(image))
    assert overlay(image.convert("L"), torch.rand(2, 2)).mode == "RGB"
    assert overlay(np.asarray(image), None).size == (50, 30)
    low, high = (np.asarray(overlay(image, torch.tensor([[0.0, 1.0]]), alpha=1))[15, x] for x in (0, 49))
    assert low.tolist() == [128] * 3  # the map's smallest value: the image as it is
    assert high.tolist() == Scale(0.0, 1.0).colours(1.0).tolist()  # its largest: the colour map's top, opaque


def test_overlay_leaves_the_image_where_the_map_is_low():
    """Where a map is low the picture is the image within a few grey levels; where it reaches the scale's
    limit, the blend at `alpha`; on a signed scale, where it is near zero, whichever the sign around it."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    original = np.asarray(image, np.int16)
    heatmap = rng.random((64, 64), dtype=np.float32) * 0.02  # at most 2% of the limit, but for a hot square
    heatmap[20:30, 20:30] = 1.0
    low = heatmap < 0.01  # 1% of the limit
    for scale in (Scale(0.0, 1.0), Scale(-1.0, 1.0, True)):
        out = np.asarray(overlay(image, heatmap, scale=scale, alpha=0.8), np.int16)
        assert np.abs(out - original)[low].max() <= 3
        top = scale.colours(1.0).astype(np.float64)
        assert np.abs(out[25, 25] - (0.2 * original[25, 25] + 0.8 * top)).max() <= 1
    signed = np.asarray(overlay(image, -heatmap, scale=Scale(-1.0, 1.0, True)), np.int16)
    assert np.abs(signed - original)[low].max() <= 3 and signed[25, 25, 2] > signed[25, 25, 0]  # blue
    # a map of the image's own range, min-max: its smallest values leave the image alone too
    plain = np.asarray(overlay(image, heatmap), np.int16)
    assert np.abs(plain - original)[low].max() <= 3


def test_overlay_lays_the_map_inside_the_crop_and_outlines_it():
    image = Image.fromarray(np.full((30, 60, 3), 100, np.uint8))
    out = np.asarray(overlay(image, np.ones((30, 60)), scale=Scale(0.0, 1.0), crop=(15.0, 0.0, 45.0, 30.0)))
    assert (out[:, :13] == 100).all() and (out[:, 48:] == 100).all()  # outside the crop and its outline: the image
    assert (out[5:25, 15] == 255).all() and (out[5:25, 14] == 20).all()  # the outline: white, a dark line outside
    assert (out[5:25, 20:40] != 100).any(-1).all()  # inside: the map
    whole = np.asarray(overlay(image, np.ones((30, 60)), scale=Scale(0.0, 1.0), crop=(0.0, 0.0, 60.0, 30.0)))
    assert (whole == whole[15, 30]).all()  # a crop that is the whole image is not outlined


def test_overlay_contour_outlines_the_top_region():
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    heatmap = torch.zeros(8, 8)
    heatmap[2:4, 2:4] = 1
    plain = np.asarray(overlay(image, heatmap))
    outlined = np.asarray(overlay(image, heatmap, contour_top=10))
    edge = (outlined != plain).any(-1)
    assert edge.any() and (outlined[edge] == 255).all()
    rows, cols = np.nonzero(edge)
    assert 8 <= rows.min() and rows.max() < 40 and 8 <= cols.min() and cols.max() < 40  # around the hot square
    with pytest.raises(ValueError, match="percentage"):
        overlay(image, heatmap, contour_top=0)


def test_to_png_round_trips():
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (12, 20, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_png(image)))), np.asarray(image))


def test_token_html_escapes_includes_every_token_and_dims_bos_eos():
    tokens = ["<|startoftext|>", "a", "<b>", "&", "<|endoftext|>"]
    out = token_html(tokens, [9.0, 1.0, 2.0, 3.0, 9.0])
    assert out.count('title="') == len(tokens)  # a span per token, the value on hover
    for token in ("&lt;|startoftext|&gt;", ">a<br>", "&lt;b&gt;", "&amp;", "&lt;|endoftext|&gt;"):
        assert token in out
    assert "<b>" not in out
    assert out.count("color:#999") == 2  # BOS and EOS, unshaded
    assert 'title="3"' in out  # the value on hover
    assert token_html(tokens).count("<span") == len(tokens)  # no values: tokens only, no legend


def test_token_html_writes_each_words_value_and_a_legend():
    tokens = ["<|startoftext|>", "a", "red", "dog", "<|endoftext|>"]
    scale = Scale(-2.0, 2.0, True, "attribution")
    out = token_html(tokens, [5.0, -2.0, 0.0, 1.0, 5.0], scale=scale)
    assert ">a<br><small>-2.0</small>" in out and ">dog<br><small>1.0</small>" in out
    r, g, b = scale.colours(-2.0)
    assert f"background:rgb({r},{g},{b})" in out  # the scale given, not one fitted to these words
    assert "-2.0 <span" in out and "</span> 2.0 <i>words: attribution</i>" in out  # its limits and what they are
    white = Scale(0.0, 1.0).on_white().colours(0.0)
    assert "rgb({},{},{})".format(*white) in token_html(tokens, [5.0, 0.0, 0.5, 1.0, 5.0])  # light where low


# Captions are text wherever they are drawn: maths markup, TeX escapes and HTML all shown as typed.
AWKWARD = ["a $\\frac$ star", "$$ 100% x_1^2 $", "<script>alert('&')</script> \"q\""]


@pytest.mark.parametrize("usetex", [False, True], ids=["mathtext", "usetex"])
def test_figure_draws_captions_and_tokens_literally(usetex):
    import matplotlib

    from clipx import Explanation

    tokens = [["<|startoftext|>", *caption.split(), "<|endoftext|>"] for caption in AWKWARD]
    length = max(map(len, tokens))
    exp = Explanation(image=torch.rand(1, 3, 2, 2), text=torch.rand(1, 3, length), scores=torch.rand(1, 3),
                      tokens=tokens, texts=AWKWARD, method="$method_^$",
                      images=torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with matplotlib.rc_context({"text.usetex": usetex}):  # neither mathtext nor LaTeX may reinterpret them
        fig = exp.figure()
        fig.savefig(io.BytesIO(), format="png")  # draws every text: maths parsing raised here
    drawn = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)
                               if t.get_text()]  # captions, words and their values, colour bars' labels and ticks
    assert fig._suptitle.get_text() == "$method_^$"
    panels = fig.axes[:3]  # the colour bars come after them
    assert [ax.title.get_text().split("\n")[0] for ax in panels] == AWKWARD
    assert [[t.get_text().split("\n")[0] for t in ax.texts] for ax in panels] == [t[1:-1] for t in tokens]
    for text in drawn:  # drawn as plain text: no mathtext, no TeX
        assert not text.get_usetex() and text._preprocess_math(text.get_text()) == (text.get_text(), False)


def test_html_escapes_captions_and_tokens(eager_model, images):
    from html import unescape

    out = token_html(AWKWARD, [1.0, 2.0, 3.0])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&#x27;&amp;&#x27;" in out and "&quot;q&quot;" in out
    assert [unescape(span.split("<br>")[0].rsplit(">", 1)[1]) for span in out.split("</span>")[:3]] == AWKWARD
    table = clipx.views.scores_table(AWKWARD, [1.0, 2.0, 3.0], selected=AWKWARD[2])
    assert "<script>" not in table and table.count("&lt;script&gt;alert(&#x27;&amp;&#x27;)&lt;/script&gt;") == 1
    view = Explorer(eager_model, images[:1], [AWKWARD[2]])
    assert "<script>" not in view.panel.value and "&lt;script&gt;" in view.panel.value


def test_grids_have_a_cell_per_entry(eager_model, images):
    cell = Image.new("RGB", (20, 16), "red")
    out = grid([[cell] * 3] * 2, ["row a", "row b"], ["x", "y", "z"])
    assert out.width > 3 * 20 and out.height > 2 * 16
    exps = {m: clipx.explain(eager_model, images, TEXTS, method=m) for m in ("relevance", "rollout")}
    assert explanation_grid(exps, size=50).width >= 2 * 50 and explanation_grid(exps, size=50).height >= 2 * 50
    heads = heads_grid(cell, torch.rand(2, 3, 4, 4))
    assert heads.width > 3 * 20 and heads.height > 2 * 16
    square = matrix(torch.rand(5, 5), ["<|startoftext|>", "a", "b", "c", "<|endoftext|>"], cell=10)
    assert square.width > 50 and square.height > square.width - 50  # the matrix, its colour bar beneath


# --- Explorer ------------------------------------------------------------------------------------
def test_explorer_is_a_widget_and_every_choice_changes_the_picture(eager_model, images):
    view = Explorer(eager_model, images, TEXTS)
    assert isinstance(view, ipywidgets.VBox) and isinstance(clipx.views.Explorer, type)
    assert png_size(view.picture.value) == (224, 224)
    assert changes(view, view.caption_choice, TEXTS[1])
    assert changes(view, view.method, "rollout")
    assert changes(view, view.image_choice, 1)
    assert changes(view, view.opacity, 0.9)
    assert "blue square" in view.panel.value and "logit" in view.panel.value


def test_display_only_changes_never_run_the_model(eager_model, images, forward_calls):
    view = Explorer(eager_model, images, TEXTS, method="relevance")
    view.method.value = "gradcam"
    forward_calls["n"] = 0
    for control, value in ((view.opacity, 0.2), (view.caption_choice, TEXTS[1]), (view.image_choice, 1),
                           (view.method, "relevance"), (view.method, "gradcam")):
        control.value = value
    assert forward_calls["n"] == 0


def test_typing_a_caption_recomputes_and_shows_progress(eager_model, images, forward_calls):
    view = Explorer(eager_model, images, TEXTS)
    seen = []
    forward_calls["n"] = 0
    view.status.observe(lambda change: seen.append(change["new"]), "value")
    assert changes(view, view.new_caption, "  a green triangle ")
    assert forward_calls["n"] >= 1
    assert view.caption_choice.value == "a green triangle" and "a green triangle" in view.caption_choice.options
    assert "triangle" in view.panel.value
    assert any("computing" in s for s in seen) and view.status.value == ""
    forward_calls["n"] = 0
    view.caption_choice.value = TEXTS[0]
    view.method.value = "rollout"  # a new method: computed once for all three captions
    view.caption_choice.value = "a green triangle"
    assert forward_calls["n"] == 1


# --- TokenPatchView ------------------------------------------------------------------------------
def test_token_patch_view(eager_model, images, forward_calls):
    view = TokenPatchView(eager_model, images, TEXTS)
    forward_calls["n"] = 0
    assert [label.split(": ", 1)[1] for label, _ in view.token.options] == \
        ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    assert changes(view, view.token, 3)
    assert changes(view, view.row, 0) and changes(view, view.col, 0)
    assert changes(view, view.row, 3, what="panel")
    view.caption_choice.value = TEXTS[1]
    assert "square" in view.token.options[3][0]
    assert forward_calls["n"] == 0  # all similarity maps came from the first call
    assert view.variant.value == "maskclip" and changes(view, view.variant, "tokens")
    assert forward_calls["n"] == 1  # the other variant: one call for all pairs
    view.variant.value = "maskclip"
    assert forward_calls["n"] == 1
    plain = TokenPatchView(eager_model, images, TEXTS, variant="tokens")
    expected = clipx.explain(eager_model, images, TEXTS, method="similarity").token_maps[0, 1, 3]
    exp, j = plain.results.get("similarity", TEXTS[1], variant="tokens")
    torch.testing.assert_close(exp.token_maps[0, j, 3], expected)
    with pytest.raises(ValueError, match="maskclip"):
        TokenPatchView(eager_model, images, TEXTS, variant="value path")


# --- AttentionView -------------------------------------------------------------------------------
def test_attention_view_records_once_and_only_rerenders(eager_model, images, forward_calls):
    view = AttentionView(eager_model, images, TEXTS)
    assert forward_calls["n"] == 1  # one run_with_cache for every layer of both towers
    assert changes(view, view.layer, 1)
    assert changes(view, view.head, 2)
    assert changes(view, view.source, "patch")
    assert changes(view, view.col, 0)
    assert changes(view, view.tower, "text")
    assert view.caption_choice.layout.display is None and view.image_choice.layout.display == "none"
    assert changes(view, view.caption_choice, TEXTS[1])
    assert changes(view, view.query, 1, what="panel")
    assert changes(view, view.head, -1)
    assert forward_calls["n"] == 1


# --- Compare -------------------------------------------------------------------------------------
def test_compare_shows_each_chosen_method(eager_model, images):
    view = Compare(eager_model, images, TEXTS, methods=["relevance", "rollout"], size=64)
    two = png_size(view.picture.value)
    view.methods.value = ("relevance", "rollout", "similarity")
    three = png_size(view.picture.value)
    assert three[0] > two[0] > 2 * 64 and "similarity" in view.panel.value
    assert changes(view, view.caption_choice, TEXTS[1])
    view.methods.value = ()
    assert png_size(view.picture.value) == (64, 64)


# --- static fallbacks ----------------------------------------------------------------------------
@pytest.mark.parametrize("view_class", [Explorer, TokenPatchView, AttentionView, Compare])
def test_static_fallbacks_show_what_the_widget_shows(eager_model, images, view_class):
    kwargs = {"methods": ["relevance"]} if view_class is Compare else {}
    view = view_class(eager_model, images, TEXTS, size=96, **kwargs)
    png = view._repr_png_()
    assert isinstance(png, bytes) and png == bytes(view.picture.value)
    width, height = png_size(png)
    assert width == 96 and (height > 96 if view_class is Compare else height == 96)  # Compare labels its columns
    assert view._repr_html_().startswith('<div') and "data:image/png;base64," in view._repr_html_()
    bundle, _ = DisplayFormatter().format(view)  # what a notebook stores: the widget and its pictures
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/html", "text/plain"} <= set(bundle)
    assert bundle["text/plain"] == f"{view_class.__name__}(2 images x 2 captions)"


def test_explanation_grid_refuses_rows_that_would_sit_under_the_wrong_captions(eager_model, images):
    forward = clipx.explain(eager_model, images, TEXTS, method="rollout")
    reversed_ = clipx.explain(eager_model, images, TEXTS[::-1], method="relevance")
    fewer = clipx.explain(eager_model, images, TEXTS[:1], method="relevance")
    one_image = clipx.explain(eager_model, images[:1], TEXTS, method="relevance")
    with pytest.raises(ValueError, match=r"'relevance' explains the captions \['a blue square', 'a red circle'\]"):
        explanation_grid({"rollout": forward, "relevance": reversed_})
    with pytest.raises(ValueError, match="same captions in the same order"):
        explanation_grid({"rollout": forward, "relevance": fewer})
    with pytest.raises(ValueError, match="'relevance' explains 1 image"):
        explanation_grid({"rollout": forward, "relevance": one_image})
    with pytest.raises(ValueError, match="at least one explanation"):
        explanation_grid({})
    with pytest.raises(ValueError, match="image 2 is out of range"):
        explanation_grid({"rollout": forward}, image=2)
