"""SigLIP 2 NaFlex: parity with transformers' Siglip2Model (random weights written by save_pretrained) on a
batch of images with different patch grids, its NaFlex image processor against transformers', loading and
saving, and every explanation method on a NaFlex image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import clipx
from clipx.assets import CLIP_BPE_DIR
from clipx.errors import CheckpointError
from clipx.families.siglip2 import Siglip2Config
from clipx.preprocess.image import ImageProcessor
from clipx.preprocess.naflex import NaFlexImageProcessor, PatchedImages, size_for_patch_budget
from checkpoints import randomise
from floats import assert_float32_close
from siglip_head import pooling_head_by_hand
from transformers_parity import assert_outputs_match, check_tower_round_trip, load_strictly, load_weights_only

CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "two birds"]
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(TOWER, vocab_size=49408, max_position_embeddings=16)  # CLIP's BPE stands in for Gemma's here
VISION = dict(TOWER, patch_size=4, num_patches=16)  # a 4 x 4 grid of learned positions
# each image's (rows, cols) of patches: the table's own grid, finer, coarser, and other aspect ratios
SPATIAL = torch.tensor([[4, 4], [3, 5], [2, 9], [5, 3], [1, 1]])
MAX_PATCHES = 20


def hf_siglip2(text=TEXT, vision=VISION, seed=0) -> transformers.Siglip2Model:
    torch.manual_seed(seed)
    config = transformers.Siglip2Config(text_config=text, vision_config=vision)
    config._attn_implementation = "eager"
    model = randomise(transformers.Siglip2Model(config).eval(), seed)
    with torch.no_grad():  # SigLIP's trained values, so logits have their real scale
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-siglip2")
    hf = hf_siglip2()
    hf.save_pretrained(folder)
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    hf_processor().save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_strictly(checkpoint[0])


def hf_processor(max_num_patches=MAX_PATCHES):
    return transformers.Siglip2ImageProcessorPil(patch_size=4, max_num_patches=max_num_patches)


def patches(spatial=SPATIAL, length=MAX_PATCHES, seed=1):
    """Patched pixel_values [B, length, 48], zero past each image's rows * cols, and the mask."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(length)[None] < spatial.prod(-1)[:, None]).int()
    return (torch.rand(len(spatial), length, 48, generator=g) * 2 - 1) * mask[..., None], mask


def captions(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 49408, (3, 16), generator=g)


def pictures(sizes=((40, 70), (64, 64), (30, 200), (90, 20))):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


# --- the model against transformers ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_on_images_of_different_grids(checkpoint, model, backend):
    """Every output of both towers, padding included (transformers computes the padding rows as we do:
    they attend to the real patches only, and nothing real attends to them)."""
    _, hf = checkpoint
    px, mask = patches()
    ids = captions()
    inputs = dict(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=SPATIAL, input_ids=ids)
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True, output_attentions=True)
        with model.attention(backend), model.recording("vision.head.attn.hook_pattern") as cache:
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
    # pooled after the head, as SigLIP's; hidden states [0] after the embeddings, [i] after block i, the last
    # before post_layernorm / final_layer_norm
    assert_outputs_match(out, ref, n_layers=2)
    for attention in out.vision_model_output.attentions:  # padding is no key
        assert attention.masked_select(~mask.bool()[:, None, None]).abs().max() == 0
    if backend == "sdpa":  # asking for attentions ran the blocks eagerly: now the fused kernel, masked
        with torch.no_grad(), model.attention(backend):
            fused = model(**inputs)
        assert_float32_close(fused.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)
        assert_float32_close(fused.image_embeds, ref.image_embeds, floor=1)
    if backend == "eager":  # only eager records patterns
        pattern, pooled = pooling_head_by_hand(hf, ref.vision_model_output.last_hidden_state, mask)
        assert_float32_close(pooled, ref.vision_model_output.pooler_output, floor=1)  # the reference is right
        assert_float32_close(cache["vision.head.attn.hook_pattern"], pattern, floor=1)


def test_padding_never_reaches_an_image(model):
    px, mask = patches()
    noisy = px + (1 - mask)[..., None] * torch.randn(px.shape)
    longer = torch.cat([px, torch.randn(len(px), 7, 48)], dim=1)  # more padding, of any value
    with torch.no_grad():
        embeds = model.encode_image(px, pixel_attention_mask=mask, spatial_shapes=SPATIAL)
        assert_float32_close(model.encode_image(noisy, pixel_attention_mask=mask, spatial_shapes=SPATIAL), embeds)
        assert_float32_close(model.encode_image(longer, spatial_shapes=SPATIAL), embeds)  # mask from the shapes


def test_an_image_tensor_is_its_own_patches(model):
    """The linear patch embedding takes images [B, 3, H, W] too: the same as their patches, no padding."""
    g = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 12, 20, generator=g) * 2 - 1  # a 3 x 5 grid
    as_patches = image.reshape(2, 3, 3, 4, 5, 4).permute(0, 2, 4, 3, 5, 1).reshape(2, 15, 48)
    with torch.no_grad():
        assert_float32_close(model.encode_image(image),
                             model.encode_image(as_patches, spatial_shapes=torch.tensor([[3, 5], [3, 5]])))


def test_positions_resize_per_image_like_transformers(checkpoint, model):
    """The learned 4 x 4 grid resized (bilinear, antialiased) to each image's own grid; padding takes the
    first position, as transformers fills it."""
    _, hf = checkpoint
    table = hf.vision_model.embeddings.position_embedding.weight.reshape(4, 4, -1)
    expected = hf.vision_model.embeddings.resize_positional_embeddings(table, SPATIAL, MAX_PATCHES)
    with torch.no_grad():
        got = model.vision.padded_position_embeddings(SPATIAL, MAX_PATCHES)
    assert_float32_close(got, expected)
    rows, cols = SPATIAL[1].tolist()
    assert torch.equal(got[1, rows * cols:], got[1, :1].expand(MAX_PATCHES - rows * cols, -1))


@pytest.mark.parametrize("change, message", [
    (dict(spatial_shapes=None), "spatial_shapes must be an integer tensor"),  # patches without their shapes
    (dict(spatial_shapes=SPATIAL[:2]), "spatial_shapes must be an integer tensor"),
    (dict(spatial_shapes=SPATIAL * 3), "at most the 20 patches"),
    (dict(spatial_shapes=SPATIAL.float()), "spatial_shapes must be an integer tensor"),
    (dict(pixel_attention_mask=torch.ones(5, MAX_PATCHES, dtype=torch.int32)), "pixel_attention_mask must be 1"),
    (dict(pixel_values=torch.zeros(5, MAX_PATCHES, 47)), r"\[batch, patches, 48\]"),
])
def test_inconsistent_patches_are_refused_by_name(model, change, message):
    px, mask = patches()
    inputs = {"pixel_values": px, "pixel_attention_mask": mask, "spatial_shapes": SPATIAL, **change}
    with pytest.raises(ValueError, match=message):
        model.encode_image(**inputs)


def test_patches_need_a_linear_patch_embedding(tmp_path):
    from checkpoints import hf_siglip

    hf_siglip().save_pretrained(tmp_path)
    siglip = load_weights_only(tmp_path)
    with pytest.raises(ValueError, match="convolution"):
        siglip.encode_image(torch.zeros(1, 4, 192), spatial_shapes=torch.tensor([[2, 2]]))


@pytest.mark.slow
def test_siglip2_base_patch16_naflex_shapes(tmp_path):
    """google/siglip2-base-patch16-naflex's shapes (random weights): 12 layers of width 768 in both towers,
    a 16 x 16 grid of positions, 64 text positions; a vocabulary of 32,000 (transformers' default), not
    Gemma's 256,000, to keep memory modest. Two images of different grids in a budget of 256 patches."""
    width = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    hf = hf_siglip2(dict(width, vocab_size=32000, max_position_embeddings=64),
                    dict(width, patch_size=16, num_patches=256), seed=3)
    hf.save_pretrained(tmp_path)
    spatial = torch.tensor([[12, 21], [8, 32]])
    g = torch.Generator().manual_seed(4)
    mask = (torch.arange(256)[None] < spatial.prod(-1)[:, None]).int()
    px = (torch.rand(2, 256, 768, generator=g) * 2 - 1) * mask[..., None]
    ids = torch.randint(0, 32000, (2, 64), generator=g)
    inputs = dict(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=spatial, input_ids=ids)
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True, output_attentions=True)
        head_pattern = pooling_head_by_hand(hf, ref.vision_model_output.last_hidden_state, mask)[0]
        model = load_weights_only(tmp_path)
        for backend in ("eager", "sdpa"):
            with model.attention(backend), model.recording("vision.head.attn.hook_pattern") as cache:
                out = model(**inputs, output_hidden_states=True, output_attentions=True)
            assert_float32_close(out.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)
            for ours, theirs in ((out.vision_model_output, ref.vision_model_output),
                                 (out.text_model_output, ref.text_model_output)):
                assert_float32_close(ours.embeds, theirs.pooler_output, floor=1)
                for a, b in zip(ours.hidden_states + ours.attentions, theirs.hidden_states + theirs.attentions):
                    assert_float32_close(a, b, floor=1)
            assert_float32_close(cache["vision.head.attn.hook_pattern"], head_pattern, floor=1)


# --- the NaFlex image processor ------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(480, 640), (224, 224), (100, 1000), (1000, 100), (17, 23), (4000, 3000), (1, 1)])
@pytest.mark.parametrize("patch, budget", [(16, 256), (16, 1024), (4, 16), (14, 729)])
def test_patch_budget_sizes_like_transformers(hw, patch, budget):
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

    assert size_for_patch_budget(*hw, patch, budget) == get_image_size_for_max_num_patches(*hw, patch, budget)


def test_processor_is_transformers_bit_for_bit():
    hf = hf_processor()
    ours = ImageProcessor.from_dict(hf.to_dict())
    assert isinstance(ours, NaFlexImageProcessor) and (ours.patch_size, ours.max_num_patches) == (4, 20)
    images = pictures() + [Image.new("RGB", (9, 5), (77, 8, 200)), Image.new("RGB", (33, 21), (10, 200, 30))]
    expected = hf(images, return_tensors="pt")
    got = ours(images)
    assert isinstance(got, PatchedImages) and got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key
    assert got.grids == [(3, 6), (4, 4), (2, 10), (9, 2), (3, 6), (4, 5)]  # each at its own aspect ratio


def test_processor_config_round_trips_through_transformers(tmp_path):
    ours = NaFlexImageProcessor(patch_size=4, max_num_patches=20, rescale_factor=1 / 127)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(hf).__name__.startswith("Siglip2ImageProcessor") and (hf.patch_size, hf.max_num_patches) == (4, 20)
    assert ImageProcessor.from_pretrained(tmp_path) == ours
    images = pictures()
    assert torch.equal(ours(images)["pixel_values"], hf(images, return_tensors="pt")["pixel_values"])


def test_images_to_logits_like_transformers(checkpoint, model):
    """model.preprocess gives what model(...) and encode_image take, as transformers' processor does."""
    _, hf = checkpoint
    images, ids = pictures(), captions()
    batch = model.preprocess(images)
    with torch.no_grad():
        expected = hf(**hf_processor()(images, return_tensors="pt"), input_ids=ids)
        assert_float32_close(model(**batch, input_ids=ids).logits_per_image, expected.logits_per_image,
                             rtol=1e-4, floor=1)
        assert_float32_close(model(pixel_values=batch, input_ids=ids).image_embeds, expected.image_embeds, floor=1)
        features = hf.get_image_features(**hf_processor()(images, return_tensors="pt")).pooler_output
        assert_float32_close(model.encode_image(batch), features, floor=1)
        zeroshot = clipx.zeroshot(model, images, ["cat", "dog"], templates=["{}"])
    assert zeroshot.logits.shape == (4, 2)


# --- loading and saving --------------------------------------------------------------------------

def test_loads_with_its_processor(model):
    assert isinstance(model.config, Siglip2Config)
    assert model.config.vision_config.patch_embedding == "linear"
    assert model.config.vision_config.grid_size == 4 and isinstance(model.vision.patch_embedding, torch.nn.Linear)
    assert isinstance(model.processor, NaFlexImageProcessor) and model.processor.max_num_patches == MAX_PATCHES


def test_save_pretrained_loads_back_in_transformers(checkpoint, model, tmp_path):
    _, hf = checkpoint
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "siglip2" and config["vision_config"]["num_patches"] == 16
    assert "image_size" not in config["vision_config"]
    again = transformers.Siglip2Model.from_pretrained(tmp_path).eval()
    assert again.state_dict().keys() == hf.state_dict().keys()
    for name, value in hf.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    px, mask = patches()
    inputs = dict(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=SPATIAL, input_ids=captions())
    with torch.no_grad():  # transformers' sdpa there, eager here
        assert_float32_close(again(**inputs).logits_per_image, hf(**inputs).logits_per_image, rtol=1e-4, floor=1)
    back = load_strictly(tmp_path)
    for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert back.processor == model.processor


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_tower_only_checkpoints(checkpoint, tower, tmp_path):
    _, hf = checkpoint
    px, mask = patches()
    ids = captions()
    if tower == "vision":
        ref = transformers.Siglip2VisionModel(hf.config.vision_config).eval()
        ref.load_state_dict(hf.vision_model.state_dict())
        with torch.no_grad():
            expected = ref(pixel_values=px, pixel_attention_mask=mask, spatial_shapes=SPATIAL).pooler_output
    else:
        ref = transformers.Siglip2TextModel(hf.config.text_config).eval()
        ref.load_state_dict(hf.text_model.state_dict())
        with torch.no_grad():
            expected = ref(input_ids=ids).pooler_output
    check_tower_round_trip(ref, tmp_path, tower, lambda model: model.encode_image(
        px, pixel_attention_mask=mask, spatial_shapes=SPATIAL) if tower == "vision" else model.encode_text(ids),
        expected)


@pytest.mark.parametrize("change, message", [
    ({"num_patches": 15}, "vision_config.num_patches must be a square number"),
    ({"num_patches": 25}, "needs 25 positions but the weights have 16"),  # the grid the weights do not have
    ({"patch_size": 5}, "patch_size=5 with num_channels=3, which take 75 inputs"),
    ({"vision_use_head": False}, "vision_use_head"),
])
def test_bad_configs_are_refused_by_name(checkpoint, tmp_path, change, message):
    checkpoint[1].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        clipx.load(tmp_path)


# --- explanations on NaFlex images ---------------------------------------------------------------

@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_maps_an_image_on_its_own_grid(checkpoint, model, method):
    """A 40 x 70 image cut into a 3 x 6 grid (18 of the 20 patches): the maps are on that grid, the scores
    are transformers' logits of the processor's patches, and the maps land on the original image."""
    _, hf = checkpoint
    image = pictures()[0]
    exp = clipx.explain(model, image, CAPTIONS, method=method)
    assert exp.image.shape == (1, 3, 3, 6) and torch.isfinite(exp.image).all()
    assert exp.image.abs().sum() > 0
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        expected = hf(**hf_processor()([image], return_tensors="pt"), input_ids=tok.input_ids).logits_per_image
    assert_float32_close(exp.scores, expected, rtol=1e-4, floor=1)
    assert exp.images.shape == (1, 12, 24, 3)  # the image as the model saw it
    assert exp.pixel_maps(original=True)[0].shape == (3, 40, 70)


def test_relevance_of_a_naflex_image_equals_its_image_tensor(model):
    """explain(images) runs the processor's patches as the image they cut: the same maps as that image."""
    image = pictures()[3]  # 90 x 20 -> a 9 x 2 grid
    batch = model.preprocess([image])
    as_image = batch.images(4)
    assert as_image.shape == (1, 3, 36, 8)
    for method in ("relevance", "rollout", "attention", "gradcam", "legrad"):
        a = clipx.explain(model, image, CAPTIONS[:2], method=method)
        b = clipx.explain(model, as_image, CAPTIONS[:2], method=method)
        assert a.image.shape == (1, 2, 9, 2)
        assert_float32_close(a.image, b.image)


def test_images_of_different_grids_are_explained_apart(model):
    images = pictures()[:2]
    with pytest.raises(ValueError, match=r"patch grids of different shapes \[\(3, 6\), \(4, 4\)\].*one image per call"):
        clipx.explain(model, images, CAPTIONS, method="relevance")
    same_ratio = [images[0], images[0].resize((140, 80))]
    exp = clipx.explain(model, same_ratio, CAPTIONS, method="relevance")
    assert exp.image.shape == (2, 3, 3, 6)


def test_views_show_a_naflex_image_on_its_grid(model):
    from clipx.views import AttentionView

    view = AttentionView(model, pictures()[0], CAPTIONS[:1])
    assert view.grid == (3, 6) and view.pixel_values.shape == (1, 3, 12, 24)


@pytest.mark.parametrize("cls", ["LayerGradCam", "LayerIntegratedGradients"])
def test_captum_layer_methods_see_a_linear_patch_embedding_as_a_convolution(model, cls):
    """A linear patch embedding hands Captum the [d, grid_h, grid_w] map a convolution would: the maps equal
    those of the same model with the linear weights as a convolution's."""
    import copy

    import captum.attr

    linear = model.vision.patch_embedding
    p, d = linear.patch_size, linear.out_features
    conv = torch.nn.Conv2d(3, d, p, p, bias=linear.bias is not None)
    with torch.no_grad():  # patchify flattens each patch as (row, column, channel)
        conv.weight.copy_(linear.weight.reshape(d, p, p, 3).permute(0, 3, 1, 2))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    as_conv = copy.deepcopy(model)
    as_conv.vision.patch_embedding = conv
    image = pictures()[0]
    method = getattr(captum.attr, cls)
    ours, expected = (clipx.explain(m, image, CAPTIONS[:2], method=method) for m in (model, as_conv))
    assert ours.image.shape == (1, 2, 3, 6) and ours.image.abs().sum() > 0
    assert_float32_close(ours.image, expected.image)
