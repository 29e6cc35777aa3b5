"""A Captum attribution class as `method`: the same maps as Captum called by hand, caption by caption,
reduced to the patch grid; anything else is a TypeError naming it."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam, LayerIntegratedGradients, NoiseTunnel, Saliency

import clipx
from clipx import Explanation
from floats import assert_float32_close
from inputs import CAPTIONS, images


def forward(model, captions):
    """Captum's forward by hand: pixel values -> the logits of every caption."""
    tok = model.tokenize(captions)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tok.input_ids, tok.attention_mask), dim=-1)
    return lambda px: F.normalize(model.encode_image(px), dim=-1) @ text.T * model.logit_scale.exp()


def test_saliency_equals_captum_summed_over_channels_and_patches(model):
    px = images(2)
    exp = clipx.explain(model, px, CAPTIONS, method=Saliency)
    saliency = Saliency(forward(model, CAPTIONS))
    assert exp.method == "captum.Saliency" and exp.text is None and exp.image.shape == (2, 3, 4, 4)
    for j in range(3):
        attr = saliency.attribute(px.clone().requires_grad_(), target=j)   # [2, 3, 32, 32]
        expected = attr.sum(1).reshape(2, 4, 8, 4, 8).sum((2, 4))
        assert_float32_close(exp.image[:, j], expected)
    with torch.no_grad():
        assert_float32_close(exp.scores, model(pixel_values=px, **model.tokenize(CAPTIONS)).logits_per_image)


def test_layer_gradcam_on_the_patch_embedding_equals_captum(model):
    px = images(2)
    exp = clipx.explain(model, px, CAPTIONS, method=LayerGradCam, relu_attributions=True)
    gradcam = LayerGradCam(forward(model, CAPTIONS), model.vision.patch_embedding)
    for j in range(3):
        expected = gradcam.attribute(px, target=j, relu_attributions=True)[:, 0]   # [2, 4, 4]
        assert_float32_close(exp.image[:, j], expected)


def test_layer_integrated_gradients_with_a_baseline_per_image(model):
    """A baselines tensor of one image per image goes with that image for every caption."""
    px, baselines = images(2), images(2, seed=2) * 0.1
    exp = clipx.explain(model, px, CAPTIONS[:2], method=LayerIntegratedGradients, baselines=baselines, n_steps=8)
    ig = LayerIntegratedGradients(forward(model, CAPTIONS[:2]), model.vision.patch_embedding)
    for j in range(2):
        expected = ig.attribute(px, baselines, target=j, n_steps=8).sum(1)   # [2, 4, 4]
        assert_float32_close(exp.image[:, j], expected)


def test_options_are_checked_and_saved(model, tmp_path):
    with pytest.raises(TypeError, match=r"'captum.Saliency' takes no option 'n_steps'; its options are: abs=True"):
        clipx.explain(model, images(1), CAPTIONS, method=Saliency, n_steps=4)
    exp = clipx.explain(model, images(1), CAPTIONS[:2], method=Saliency, abs=False)
    exp.save(tmp_path / "e.safetensors")
    back = Explanation.load(tmp_path / "e.safetensors")
    assert back.method == "captum.Saliency" and back.options == {"abs": False}
    assert torch.equal(back.image, exp.image)


@pytest.mark.parametrize("method, message", [
    (torch.nn.Linear, r"method torch.nn.modules.linear.Linear is not a Captum attribution class"),
    (NoiseTunnel, r"NoiseTunnel is not built from a model \(its first argument is 'attribution_method'\)"),
    (Saliency(lambda x: x), r"a method's name \(a str\) or a Captum attribution class, got Saliency"),
    (3, r"or a Captum attribution class, got int")])
def test_what_is_not_an_attribution_class_is_a_type_error_naming_it(model, method, message):
    with pytest.raises(TypeError, match=message):
        clipx.explain(model, images(1), CAPTIONS, method=method)
