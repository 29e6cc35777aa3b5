"""The Gallery, headless: the hits' picture follows the query, k and the overlay switch; a hit's button
opens an Explorer for that image and the query; cached explanations are not recomputed."""

from __future__ import annotations

import ipywidgets
import numpy as np
import pytest
from IPython.core.formatters import DisplayFormatter
from PIL import Image

import clipx
from clipx.views import Explorer, Gallery
from widgets import changes, png_size


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    for k in range(5):
        Image.fromarray(np.random.RandomState(k).randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"{k}.png")
    return root


@pytest.fixture()
def gallery(eager_model, folder):
    return Gallery(eager_model, folder, query="a red circle", k=3, size=32)


def test_query_k_and_overlays_change_the_hits(gallery):
    assert isinstance(gallery, ipywidgets.VBox)
    assert [b.description for b in gallery.buttons.children] == ["open 1", "open 2", "open 3"]
    assert changes(gallery, gallery.query, "a blue square")
    assert gallery.hits.query == "a blue square" and "a blue square" in gallery.status.value
    width, height = png_size(gallery.picture.value)
    assert changes(gallery, gallery.k, 5)
    assert len(gallery.hits) == 5 and len(gallery.buttons.children) == 5 and png_size(gallery.picture.value)[0] > width
    assert changes(gallery, gallery.overlays, False)
    assert changes(gallery, gallery.query, "  ")  # no query: nothing to show, and no error
    assert gallery.hits is None and gallery.buttons.children == ()


def test_overlays_are_the_hits_explanations_and_are_cached(gallery, forward_calls):
    hits = gallery.hits
    expected = clipx.views.hits_grid(hits, hits.explain(), size=32)
    assert bytes(gallery.picture.value) == clipx.views.to_png(expected)
    gallery.k.value = 2
    forward_calls["n"] = 0
    gallery.k.value = 3  # back to a query and k explained before: searched again, not explained again
    assert forward_calls["n"] == 0


def test_hits_grid_shows_the_explanations_images_without_reading_the_files_again(eager_model, gallery, monkeypatch):
    hits = gallery.hits
    explanation = hits.explain()
    preprocessed = eager_model.processor.to_pil(eager_model.preprocess(hits.paths))
    assert [np.array(p).tolist() for p in preprocessed] == explanation.images.tolist()  # the same pixels
    plain = clipx.views.hits_grid(hits, size=32)
    monkeypatch.setattr(eager_model, "preprocess", None)  # the explanation holds them: nothing is preprocessed again
    explained = clipx.views.hits_grid(hits, explanation, size=32)
    assert explained.width >= plain.width and explained.height > plain.height  # the hits, their colour bar beneath


def test_clicking_a_hit_opens_an_explorer_below(gallery):
    gallery.buttons.children[1].click()
    explorer = gallery.explorer
    assert isinstance(explorer, Explorer) and gallery.below.children == (explorer,)
    assert explorer.texts == ["a red circle"]
    assert explorer.image_choice.options[0][0] == gallery.hits[1].path.rsplit("/", 1)[1]


def test_static_fallback_and_bad_input(eager_model, gallery, folder):
    bundle, _ = DisplayFormatter().format(gallery)
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/html", "text/plain"} <= set(bundle)
    assert bundle["text/plain"] == "Gallery(5 images, query 'a red circle', k=3)"
    assert Gallery(gallery.index, query="a red circle", k=3, size=32).index is gallery.index
    with pytest.raises(ValueError, match="pass the images"):
        Gallery(eager_model)
