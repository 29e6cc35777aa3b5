"""Zero-shot classification: the template ensemble computed by hand, sigmoid scoring, explanations against
the class embedding, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipx
from clipx.apps.zeroshot import prompts
from floats import assert_float32_close

CLASSES = ["cat", "a red car", "dog"]
TEMPLATES = ["a photo of a {}.", lambda c: f"{c}, seen from afar", "{} {}"]


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 48, 3), dtype=np.uint8))
            for seed in range(3)]


def by_hand(model, pixel_values, classes, templates):
    """Each prompt tokenized and encoded alone, normalised; each class's mean, normalised; the logits."""
    with torch.no_grad():
        rows = []
        for c in classes:
            embeds = []
            for t in templates:
                tok = model.tokenize([t.replace("{}", c) if isinstance(t, str) else t(c)])
                embeds.append(F.normalize(model.encode_text(tok.input_ids, tok.attention_mask)[0], dim=-1))
            rows.append(F.normalize(torch.stack(embeds).mean(0), dim=-1))
        image = F.normalize(model.encode_image(pixel_values), dim=-1)
        logits = image @ torch.stack(rows).T * model.logit_scale.exp()
        return logits if model.logit_bias is None else logits + model.logit_bias


def test_the_ensemble_equals_a_hand_computation(model, images):
    result = clipx.zeroshot(model, images, CLASSES, TEMPLATES)
    expected = by_hand(model, model.preprocess(images), CLASSES, TEMPLATES)
    assert_float32_close(result.logits, expected)
    assert_float32_close(result.probs, expected.softmax(-1))
    assert result.predictions.tolist() == expected.argmax(1).tolist()
    assert result.labels == [CLASSES[c] for c in expected.argmax(1).tolist()]
    assert [name for name, _, _ in result.top(0, k=2)] == [CLASSES[c] for c in expected[0].topk(2).indices.tolist()]
    # one template is not the ensemble: the mean over prompts matters
    assert (clipx.zeroshot(model, images, CLASSES, TEMPLATES[:1]).logits - result.logits).abs().max() > 1e-3


def test_the_classifier_is_the_same_whatever_the_batch(model):
    whole = clipx.zeroshot_classifier(model, CLASSES, TEMPLATES)
    assert whole.shape == (3, model.text.proj.out_features)
    assert_float32_close(clipx.zeroshot_classifier(model, CLASSES, TEMPLATES, batch_size=2), whole)
    assert_float32_close(whole.norm(dim=1), torch.ones(3))


def test_images_in_batches_and_as_pixel_values(model, images):
    px = model.preprocess(images)
    assert_float32_close(clipx.zeroshot(model, px, CLASSES, batch_size=2).logits,
                         clipx.zeroshot(model, images, CLASSES).logits)


def test_one_image_as_a_3d_tensor_is_one_image_whatever_the_batch(model, images):
    px = model.preprocess(images[:1])[0]  # [3, H, W]
    result = clipx.zeroshot(model, px, CLASSES, batch_size=1)
    assert result.logits.shape == (1, 3)
    assert_float32_close(result.logits, clipx.zeroshot(model, images[:1], CLASSES).logits)
    assert result.explain(0).image.shape[:2] == (1, 1)


def test_sigmoid_models_get_each_class_its_own_sigmoid(tiny_siglip):
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    result = clipx.zeroshot(tiny_siglip, px, CLASSES, TEMPLATES[:2])
    expected = by_hand(tiny_siglip, px, CLASSES, TEMPLATES[:2])
    assert tiny_siglip.logit_bias is not None
    assert_float32_close(result.logits, expected)
    assert_float32_close(result.probs, torch.sigmoid(expected))
    assert (result.probs.sum(1) - 1).abs().max() > 1e-3  # not a softmax


@pytest.mark.parametrize("method", ["relevance", "integrated_gradients"])
def test_explain_uses_the_class_embedding(model, images, method):
    """With one prompt per class the class embedding is that caption's: the same maps as explaining the caption."""
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    result = clipx.zeroshot(model, images, CLASSES)
    exp = result.explain(1, method=method, **options)
    c = int(result.predictions[1])
    direct = clipx.explain(model, [images[1]], [CLASSES[c]], method=method, **options)
    assert_float32_close(exp.image, direct.image, rtol=1e-4)
    assert_float32_close(exp.scores[0, 0], result.logits[1, c])
    assert exp.texts == [CLASSES[c]] and exp.text is None
    ensemble = clipx.zeroshot(model, images, CLASSES, TEMPLATES)  # an ensemble's own score is explained
    assert_float32_close(ensemble.explain(1, method=method, **options).scores[0, 0],
                         ensemble.logits[1, int(ensemble.predictions[1])])


def test_templates_module():
    assert len(clipx.templates.OPENAI_IMAGENET) == len(set(clipx.templates.OPENAI_IMAGENET)) == 80
    assert all("{}" in t for t in clipx.templates.OPENAI_IMAGENET + clipx.templates.DEFAULT)
    assert prompts(["a red circle"], clipx.templates.SHAPES) == \
        [["a red circle", "a picture with a red circle", "there is a red circle"]]


@pytest.mark.parametrize("classes, templates, error, match", [
    ([], None, ValueError, "no class names"),
    (["cat", "dog", "cat"], None, ValueError, "repeated: 'cat'"),
    (["cat", " "], None, ValueError, "must not be empty"),
    ("cat", None, TypeError, "list of strings"),
    (["cat"], ["a photo of a cat"], ValueError, "has no '{}'"),
    (["cat"], [], ValueError, "no templates"),
    (["cat"], [3], TypeError, "a string with '{}' or a callable"),
    (["cat"], [lambda c: 3], TypeError, "returned int"),
])
def test_bad_input_is_a_clear_error(model, images, classes, templates, error, match):
    with pytest.raises(error, match=match):
        clipx.zeroshot(model, images, classes, templates)


def test_classes_from_a_generator_are_read_once(model, images):
    """all(...) over a generator used to consume it, leaving 'no class names given'."""
    classes = ["a red circle", "a blue star"]
    assert torch.equal(clipx.zeroshot(model, images, (c for c in classes)).logits,
                       clipx.zeroshot(model, images, classes).logits)
