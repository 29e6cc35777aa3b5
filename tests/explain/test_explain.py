"""clipx.explain: every method's shapes and batching, the recipes against independent
implementations on transformers' CLIPModel, sanity checks, state and bad input."""

import gc
import warnings

import pytest
import torch
import transformers
from PIL import Image

import clipx
from clipx import Explanation
from checkpoints import make_checkpoint, save_hf
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from inputs import CAPTIONS, images


@pytest.mark.parametrize("method", clipx.methods())
def test_shapes_finite_and_batched_equals_single_pair(model, method):
    exp = check_batched_equals_single(model, images(), CAPTIONS, method)
    assert exp.image.shape == (3, 3, 4, 4)
    assert len(exp.tokens) == 3 and exp.tokens[0][0] == "<|startoftext|>"


# --- relevance against an independent implementation on transformers ----------------------------

def chefer_reference(hf, pixel_values, input_ids, attention_mask, start_layer, start_layer_text):
    """The recipe, one pair at a time, on transformers' eager attentions."""
    n_images, n_texts = pixel_values.shape[0], input_ids.shape[0]
    image_maps = torch.zeros(n_images, n_texts, 16)
    text_maps = torch.zeros(n_images, n_texts, input_ids.shape[1])
    eos = (input_ids == 49407).int().argmax(-1)
    for i in range(n_images):
        for j in range(n_texts):
            out = hf(pixel_values=pixel_values[i:i + 1], input_ids=input_ids[j:j + 1],
                     attention_mask=attention_mask[j:j + 1], output_attentions=True)
            target = out.logits_per_image[0, 0]
            for attentions, start, maps, row in (
                    (out.vision_model_output.attentions, start_layer, image_maps, 0),
                    (out.text_model_output.attentions, start_layer_text, text_maps, int(eos[j]))):
                n = attentions[0].shape[-1]
                relevance = torch.eye(n)
                layers = range(len(attentions))[start:]
                grads = torch.autograd.grad(target, [attentions[k] for k in layers], retain_graph=True)
                for k, grad in zip(layers, grads):
                    cam = (grad * attentions[k]).clamp(min=0).mean(1)[0]
                    relevance = relevance + cam @ relevance
                maps[i, j] = relevance[0, 1:] if maps is image_maps else relevance[row]
    return image_maps, text_maps


@pytest.mark.parametrize("start", [-1, 0])
def test_relevance_equals_the_recipe_on_transformers(tiny_checkpoint, model, start):
    hf = tiny_checkpoint[1]
    px = images(2)
    tok = model.tokenize(CAPTIONS[:2])
    ref_image, ref_text = chefer_reference(hf, px, tok.input_ids, tok.attention_mask, start, start)
    exp = clipx.explain(model, px, CAPTIONS[:2], method="relevance", start_layer=start, start_layer_text=start)
    assert_float32_close(exp.image.flatten(2), ref_image)
    assert_float32_close(exp.text, ref_text)


def test_rollout_equals_a_hand_computed_product(tiny_checkpoint, model):
    hf = tiny_checkpoint[1]
    px = images(2)
    tok = model.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        out = hf(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask, output_attentions=True)

    def hand(attentions):
        a1, a2 = (a.mean(1) + torch.eye(a.shape[-1]) for a in attentions)  # the tiny model has 2 layers
        a1, a2 = a1 / a1.sum(-1, keepdim=True), a2 / a2.sum(-1, keepdim=True)
        return a2 @ a1

    vision = hand(out.vision_model_output.attentions)
    text = hand(out.text_model_output.attentions)
    eos = tok.input_ids.argmax(-1)
    exp = clipx.explain(model, px, CAPTIONS[:2], method="rollout")
    for j in range(2):
        assert_float32_close(exp.image[:, j].flatten(1), vision[:, 0, 1:])
        assert_float32_close(exp.text[:, j], text[j, eos[j]].expand(2, -1))


def test_attention_per_head_and_layer(tiny_checkpoint, model):
    hf = tiny_checkpoint[1]
    px = images(1)
    with torch.no_grad():
        attn = hf.vision_model(pixel_values=px, output_attentions=True).attentions
    exp = clipx.explain(model, px, CAPTIONS[:1], method="attention", layer=0, head=2)
    assert_float32_close(exp.image[0, 0].flatten(), attn[0][0, 2, 0, 1:])


def test_similarity_cube_is_consistent(model):
    exp = clipx.explain(model, images(2), CAPTIONS, method="similarity")
    assert exp.token_maps.shape == (2, 3, exp.text.shape[-1], 4, 4)
    assert exp.image.abs().max() <= 1 + 1e-6 and exp.token_maps.abs().max() <= 1 + 1e-6
    maskclip = clipx.explain(model, images(2), CAPTIONS, method="similarity", variant="maskclip")
    assert not torch.allclose(maskclip.image, exp.image)
    torch.testing.assert_close(maskclip.text, exp.text)  # the text side does not change


def test_legrad_is_min_max_normalised(model):
    exp = clipx.explain(model, images(2), CAPTIONS, method="legrad", start_layer=0)
    flat = exp.image.flatten(2)
    torch.testing.assert_close(flat.amin(-1), torch.zeros(2, 3))
    torch.testing.assert_close(flat.amax(-1), torch.ones(2, 3))


def test_integrated_gradients_completeness(model):
    """IG's attributions sum to f(input) - f(baseline) (up to the integration error)."""
    px = images(1)
    exp = clipx.explain(model, px, CAPTIONS[:1], method="integrated_gradients", n_steps=128)
    with torch.no_grad():
        tok = model.tokenize(CAPTIONS[:1])
        full = model(pixel_values=px, **tok).logits_per_image[0, 0]
        blank = model(pixel_values=torch.zeros_like(px), **tok).logits_per_image[0, 0]
    assert abs(exp.image.sum() - (full - blank)) < 0.02 * max(1.0, abs(full - blank))


def test_integrated_gradients_equals_captums_layer_integrated_gradients(model):
    """The same attributions as Captum's LayerIntegratedGradients on the embedding layers, which
    clipx does not use because its module hooks would be shared between threads."""
    from captum.attr import LayerIntegratedGradients

    px, captions = images(2), CAPTIONS[:2]
    exp = clipx.explain(model, px, captions, method="integrated_gradients", n_steps=16)
    tok = model.tokenize(captions)
    with torch.no_grad():
        out = model(pixel_values=px, **tok)
    scale = model.logit_scale.exp()

    def image_logits(pixel_values):
        return scale * torch.nn.functional.normalize(model.encode_image(pixel_values), dim=-1) @ out.text_embeds.T

    def text_logits(input_ids, attention_mask):
        return scale * torch.nn.functional.normalize(model.encode_text(input_ids, attention_mask), dim=-1) @ out.image_embeds.T

    eos = tok.input_ids.argmax(-1)
    positions = torch.arange(tok.input_ids.shape[1])
    blank = torch.where((positions == 0) | (positions >= eos[:, None]), tok.input_ids, model.tokenizer.pad_token_id)
    vision_ig = LayerIntegratedGradients(image_logits, model.vision.patch_embedding)
    text_ig = LayerIntegratedGradients(text_logits, model.text.token_embedding)
    for j in range(2):
        expected = vision_ig.attribute(px, torch.zeros_like(px), target=j, n_steps=16).sum(1)
        assert_float32_close(exp.image[:, j], expected)
    for i in range(2):
        expected = text_ig.attribute(tok.input_ids, blank, target=i, n_steps=16,
                                     additional_forward_args=(tok.attention_mask,)).sum(-1)
        assert_float32_close(exp.text[i], expected * tok.attention_mask)



def test_integrated_gradients_runs_each_interpolated_image_once_for_all_captions(model):
    """The path of an image does not depend on the caption: the vision tower sees n_steps rows per image,
    however many captions there are, and each text path n_steps rows per caption; the maps are the same
    whatever the internal batch size."""
    px, n_steps = images(2), 4
    rows = {"vision": 0, "text": 0}

    def counter(tower):
        def count(tensor, hook):
            rows[tower] += tensor.shape[0]
        return count

    with model.hooks(fwd_hooks=[("vision.hook_embed", counter("vision")), ("text.hook_embed", counter("text"))]):
        whole = clipx.explain(model, px, CAPTIONS, method="integrated_gradients", n_steps=n_steps)
    # one plain forward of every input, its baseline, then the paths
    assert rows == {"vision": 2 + 2 + 2 * n_steps, "text": 3 + 3 + 3 * n_steps}
    for internal_batch_size in (1, 5):
        chunked = clipx.explain(model, px, CAPTIONS, method="integrated_gradients", n_steps=n_steps,
                                internal_batch_size=internal_batch_size)
        assert_float32_close(chunked.image, whole.image)
        assert_float32_close(chunked.text, whole.text)


# --- sanity checks (Adebayo et al. 2018) --------------------------------------------------------

@pytest.mark.parametrize("method", ["relevance", "gradcam", "legrad", "integrated_gradients", "similarity"])
def test_maps_change_when_the_last_blocks_are_rerandomised(tiny_checkpoint, method):
    assert map_change_after_rerandomising(clipx.load(tiny_checkpoint[0]), images(2), CAPTIONS, method) > 1e-3


@pytest.mark.parametrize("method", ["relevance", "gradcam", "legrad", "integrated_gradients", "similarity"])
def test_two_captions_give_different_maps(model, method):
    exp = clipx.explain(model, images(1), ["a red circle", "a large green triangle on the left"], method=method)
    assert (exp.image[0, 0] - exp.image[0, 1]).abs().max() > 1e-4


# --- state, leaks, bad input --------------------------------------------------------------------

def test_state_is_left_as_it_was(tiny_checkpoint):
    model = clipx.load(tiny_checkpoint[0], attention="sdpa")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.text.blocks[0].attn.q_proj.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():
        exp = clipx.explain(model, images(2), CAPTIONS, method="relevance", start_layer=0)
    assert exp.image.abs().sum() > 0
    assert model.attention_backend == "sdpa"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with torch.inference_mode():
        again = clipx.explain(model, images(2), CAPTIONS, method="relevance", start_layer=0)
    torch.testing.assert_close(again.image, exp.image)


def test_no_leaks_over_200_calls(model):
    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():  # isinstance pokes lazy torch attributes that warn
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    px = images(1)
    for method in ("relevance", "gradcam"):
        clipx.explain(model, px, CAPTIONS[:1], method=method)
    baseline = live_tensors()
    for k in range(200):
        clipx.explain(model, px, CAPTIONS[:1], method=("relevance", "gradcam", "rollout", "similarity")[k % 4])
    assert live_tensors() <= baseline
    assert not any(model.hook_point(n).active for n in model.hook_names())


def test_bad_input(model, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'grad-cam'.*gradcam.*relevance"):
        clipx.explain(model, images(1), CAPTIONS, method="grad-cam")
    with pytest.raises(TypeError, match="takes no option 'layer'.*start_layer=0"):
        clipx.explain(model, images(1), CAPTIONS, method="relevance", layer=3)
    with pytest.raises(ValueError, match="no texts"):
        clipx.explain(model, images(1), [])
    with pytest.raises(ValueError, match="no images"):
        clipx.explain(model, [], CAPTIONS)
    with pytest.raises(ValueError, match="start_layer 5 is outside"):
        clipx.explain(model, images(1), CAPTIONS, method="relevance", start_layer=5)
    config = make_checkpoint(tmp_path / "full").config.text_config
    save_hf(transformers.CLIPTextModelWithProjection(config), tmp_path / "text-only")
    with pytest.raises(ValueError, match="no vision tower"):
        clipx.explain(clipx.load(tmp_path / "text-only"), images(1), CAPTIONS)


@pytest.mark.parametrize("option, value, error, message", [
    ("n_steps", 0, ValueError, "n_steps must be at least 1, got 0"),
    ("n_steps", 2.5, TypeError, "n_steps must be an int, got 2.5"),
    ("n_steps", True, TypeError, "n_steps must be an int, got True"),
    ("internal_batch_size", -1, ValueError, "internal_batch_size must be at least 1, got -1")])
def test_integrated_gradients_counts_are_checked(model, option, value, error, message):
    """Captum would fail with a bare AssertionError (n_steps=0) or deep in torch."""
    with pytest.raises(error, match=message):
        clipx.explain(model, images(1), CAPTIONS[:1], method="integrated_gradients", **{option: value})


def test_finer_grid_through_interpolated_positions(model):
    exp = clipx.explain(model, images(1, size=48), CAPTIONS[:1], method="relevance")
    assert exp.image.shape == (1, 1, 6, 6)


def test_explanation_round_trip_and_pixel_maps(model, tmp_path):
    from PIL import Image

    original = Image.new("RGB", (60, 40), (200, 30, 30))
    exp = clipx.explain(model, [original, original], CAPTIONS[:2], method="relevance")
    assert exp.pixel_maps().shape == (2, 2, 32, 32)
    placed = exp.pixel_maps(original=True)
    assert placed[0].shape == (2, 40, 60)
    assert placed[0][:, :, :9].abs().sum() == 0  # left of the centre crop (x 10..50 of 60) stays empty
    assert exp.pixel_maps(size=(5, 7)).shape == (2, 2, 5, 7)
    for size in ((0, 0), (-1, 5), (3,), (2.5, 4), (True, 4)):
        with pytest.raises(ValueError, match=r"size must be \(height, width\), two positive ints"):
            exp.pixel_maps(size=size)
    exp.save(tmp_path / "exp.safetensors")
    back = Explanation.load(tmp_path / "exp.safetensors")
    assert back.method == "relevance" and back.tokens == exp.tokens and back.crop_boxes == exp.crop_boxes
    for key in ("image", "text", "scores", "images"):
        assert torch.equal(getattr(back, key), getattr(exp, key))
    fig = exp.figure()
    assert len(fig.axes) == 4 + 2  # the pairs, the maps' colour bar and the words'


def test_show_hands_the_figure_to_pyplot(tiny_model, monkeypatch):
    import matplotlib.pyplot as plt

    exp = clipx.explain(tiny_model, [Image.new("RGB", (32, 32), "red")], CAPTIONS[:2], method="rollout")
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append([plt.figure(n) for n in plt.get_fignums()]))
    plt.close("all")
    exp.show()
    assert len(shown) == 1 and len(shown[0]) == 1 and len(shown[0][0].axes) == 4  # 2 pairs, 2 colour bars
    plt.close("all")
    assert len(exp.figure().axes) == 4 and plt.get_fignums() == []  # figure() stays out of pyplot


@pytest.mark.parametrize("size", [(333, 1000), (1000, 333), (50, 30), (31, 77), (65, 63)])
def test_maps_onto_originals_of_any_size(model, size):
    """The crop box's edges fall between pixels: a 333x1000 photo once failed with a shape error."""
    from PIL import Image

    exp = clipx.explain(model, Image.new("RGB", size, (90, 140, 30)), CAPTIONS[:2], method="rollout")
    placed = exp.pixel_maps(original=True)[0]
    assert placed.shape == (2, size[1], size[0]) and placed.abs().sum() > 0
    assert torch.equal(exp.pixel_maps(original=True, text=1)[0][0], placed[1])
