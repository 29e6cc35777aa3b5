"""Methods and tools that should agree, given what makes them disagree: a user's hook on the logits, a
resample ablation over different batches, a half-precision model, captions with no words or classes that
differ only in case, an empty choice of methods."""

import warnings

import pytest
import torch

import clipx
from clipx.cli import main
from clipx.mech.ablation import ablate
from clipx.model.inputs import text_embeds
from inputs import images, pixels

CAPTIONS = ["a photo of a cat", "two birds"]
METHOD_OPTIONS = {"rise": {"n_masks": 16}, "integrated_gradients": {"n_steps": 4}}


def _caption_0_for_all(logits, hook):
    """A user's hook on hook_logits_per_image: every caption scored as caption 0 is."""
    return logits[:, :1].expand_as(logits).clone()


@pytest.mark.parametrize("method", sorted(set(clipx.methods()) - {"similarity"}))
def test_a_hook_on_the_logits_shapes_every_methods_scores_and_maps(model, method):
    """Scored through the hook, caption 1 is caption 0: its scores and image maps become caption 0's."""
    options = METHOD_OPTIONS.get(method, {})
    plain = clipx.explain(model, images(2), CAPTIONS, method=method, **options)
    with model.hooks(fwd_hooks=[("hook_logits_per_image", _caption_0_for_all)]):
        hooked = clipx.explain(model, images(2), CAPTIONS, method=method, **options)
    assert torch.equal(hooked.scores[:, 1], plain.scores[:, 0])
    assert not hooked.image.requires_grad  # no graph kept
    scale = plain.image[:, 0].abs().max().item()
    torch.testing.assert_close(hooked.image[:, 1], plain.image[:, 0], rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(hooked.image[:, 0], plain.image[:, 0], rtol=0, atol=1e-5 * scale)


def test_similarity_says_a_hook_on_the_logits_leaves_its_maps(model):
    plain = clipx.explain(model, images(2), CAPTIONS, method="similarity")
    with model.hooks(fwd_hooks=[("hook_logits_per_image", _caption_0_for_all)]), \
            pytest.warns(UserWarning, match="similarity's maps are cosines, which no logit enters: the hook on "
                                            "hook_logits_per_image changes its scores, not its maps"):
        hooked = clipx.explain(model, images(2), CAPTIONS, method="similarity")
    assert torch.equal(hooked.scores[:, 1], plain.scores[:, 0]) and torch.equal(hooked.image, plain.image)


def test_no_hook_no_warning_from_similarity(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipx.explain(model, images(1), CAPTIONS, method="similarity")


def test_a_resampled_rows_output_depends_on_neither_the_batch_nor_earlier_forwards(model):
    name, reference = "vision.blocks.1.attn.hook_z", pixels(6, seed=6)
    px = pixels(5, seed=7)

    def outputs(batch):
        with torch.no_grad(), model.recording([name]) as cache:
            model.encode_image(batch)
        return cache[name][:, :, 2]

    with ablate(model, "vision.blocks.1.attn.head.2", mode="resample", reference=reference, seed=3):
        first, whole, again = outputs(px[:2]), outputs(px), outputs(px[:2])
    assert torch.equal(again, first)
    torch.testing.assert_close(whole[:2], first, rtol=0, atol=1e-5 * first.abs().max().item())
    with ablate(model, "vision.blocks.1.attn.head.2", mode="resample", reference=reference, seed=3):
        assert torch.equal(outputs(px[:2]), first)  # a new block, the same draws
    assert len({tuple(row.flatten()[:4].tolist()) for row in whole}) > 1  # rows still draw different items


@pytest.mark.parametrize("method", ["integrated_gradients", "relevance", "occlusion"])
def test_maps_come_in_the_models_dtype(tiny_checkpoint, method):
    model = clipx.load(tiny_checkpoint[0], dtype=torch.bfloat16)
    exp = clipx.explain(model, images(1), CAPTIONS, method=method, **METHOD_OPTIONS.get(method, {}))
    assert exp.image.dtype == exp.scores.dtype == torch.bfloat16
    assert exp.text is None or exp.text.dtype == torch.bfloat16


@pytest.mark.parametrize("captions, message", [
    (["a cat", ""], r"^texts\[1\] is empty: give each caption some words$"),
    ([" \t"], r"^texts\[0\] is only spaces \(' \\t'\): give each caption some words$"),
])
def test_captions_without_words_are_refused(model, captions, message):
    with pytest.raises(ValueError, match=message):
        clipx.explain(model, images(1), captions)
    with pytest.raises(ValueError, match=message):
        text_embeds(model, captions)  # what a search or an embedding's explanation encodes


def test_an_empty_neutral_caption_and_tokenizing_an_empty_caption_still_work(model):
    exp = clipx.explain(model, images(1), ["a cat"], method="gradcam", neutral="")
    assert exp.texts == ["a cat"]
    assert model.tokenize([""]).input_ids.shape[0] == 1


def test_the_cli_refuses_an_empty_caption_before_the_model_loads(tmp_path, capsys):
    assert main(["score", "demo:shapes-scene", "a blue star", " ", "--model", str(tmp_path / "no-model")]) == 2
    assert capsys.readouterr().err == "clipx score: error: texts[1] is only spaces (' '): give each caption some words\n"


def test_zeroshot_warns_of_classes_that_differ_only_in_case(model):
    with pytest.warns(UserWarning, match=r"class names differ only in case or spaces: 'Cat', 'cat'"):
        clipx.zeroshot(model, images(1), ["Cat", "cat", "dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipx.zeroshot(model, images(1), ["cat", "dog"])


def test_compare_of_no_methods_is_refused(model):
    from clipx.views.compare import Compare

    with pytest.raises(ValueError, match=r"methods is empty: name one or more \(clipx.methods\(\) lists them\), "
                                         "or None for all"):
        Compare(model, images(1), CAPTIONS, methods=[])
