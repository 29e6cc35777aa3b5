"""SigLIP: parity with transformers' SiglipModel (random weights written by save_pretrained), the
readout it describes (no class token, attention-pooling head, last-position text, logit bias and
sigmoid), and every explanation method on it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import clipx
import clipx.assets
from clipx.errors import CheckpointError
from clipx.families.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from checkpoints import SIGLIP_TEXT, SIGLIP_VISION, hf_siglip, save_siglip
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from siglip_head import pooling_head_by_hand
from transformers_parity import assert_outputs_match, check_tower_round_trip, load_strictly, load_weights_only

CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "two birds"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-siglip")
    hf = hf_siglip()
    save_siglip(hf, folder)
    return folder, hf


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_strictly(checkpoint[0])


def inputs(n_images=3, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49408, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one caption right-padded: the mask must act in a bidirectional tower
    return torch.rand(n_images, 3, size, size, generator=g) * 2 - 1, ids, mask


def probe_pattern(hf, last_hidden_state):
    """The pooling head's attention, [B, heads, 1, n], from transformers' own MultiheadAttention."""
    head = hf.vision_model.head
    probe = head.probe.expand(last_hidden_state.shape[0], -1, -1)
    return head.attention(probe, last_hidden_state, last_hidden_state, need_weights=True,
                          average_attn_weights=False)[1]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_with_transformers(checkpoint, model, backend):
    _, hf = checkpoint
    px, ids, mask = inputs()
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 output_attentions=True)
        with model.attention(backend), model.recording("vision.head.attn.hook_pattern") as cache:
            out = model(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
    assert_outputs_match(out, ref, n_layers=2)  # SigLIP's pooler_output is after its head: the embedding
    if backend == "eager":  # only eager records patterns
        assert_float32_close(cache["vision.head.attn.hook_pattern"],
                             probe_pattern(hf, ref.vision_model_output.last_hidden_state), floor=1)


@pytest.mark.slow
def test_siglip_base_patch16_224_shapes(tmp_path):
    """google/siglip-base-patch16-224's shapes (random weights): 12 layers of width 768 in both towers,
    a 32,000-token vocabulary, 64 positions, 196 patches and no class token."""
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=64, vocab_size=32000)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    hf = hf_siglip(text, vision, seed=3)
    hf.save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(4)
    px = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1
    ids = torch.randint(0, 32000, (3, 64), generator=g)
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, output_hidden_states=True, output_attentions=True)
        for backend in ("eager", "sdpa"):
            model = load_weights_only(tmp_path, attention=backend)
            with model.recording("vision.head.attn.hook_pattern") as cache:
                out = model(pixel_values=px, input_ids=ids, output_hidden_states=True, output_attentions=True)
            assert_outputs_match(out, ref, n_layers=12)
            assert_float32_close(cache["vision.head.attn.hook_pattern"],
                                 probe_pattern(hf, ref.vision_model_output.last_hidden_state), floor=1)


def test_readout_described_by_the_model(model):
    vision, text = model.vision, model.text
    assert vision.prefix_tokens == 0 and vision.class_embedding is None and vision.ln_pre is None
    assert vision.head is not None and model.config.scoring == "sigmoid"
    assert not text.config.causal and text.config.pooling == "last"
    assert "vision.head.attn.hook_pattern" in model.hook_names()
    ids = torch.tensor([[5, 6, 7, 1, 1]])
    assert text.pooled_positions(ids).tolist() == [4]
    logits = torch.tensor([[-2.0, 3.0]])
    assert torch.equal(model.probabilities(logits), torch.sigmoid(logits))
    # captions are padded to the context, as SigLIP was trained
    assert model.tokenize(["a cat"]).input_ids.shape == (1, 16)


def test_the_text_tower_sees_later_tokens(model):
    """Bidirectional: changing the last word changes the first token's state (not so in CLIP)."""
    ids = torch.tensor([[10, 11, 12, 13], [10, 11, 12, 14]])
    with torch.no_grad():
        last = model.text(ids).last_hidden_state
    assert (last[0, 0] - last[1, 0]).abs().max() > 1e-4


def test_ablating_the_probes_attention_changes_the_embedding(model):
    px, _, _ = inputs(1)

    def only_first_patch(pattern, hook):
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    with torch.no_grad():
        before = model.encode_image(px)
        with model.hooks(fwd_hooks=[("vision.head.attn.hook_pattern", only_first_patch)]):
            after = model.encode_image(px)
        patch = model.vision.patch_features  # the head reading one token alone is exactly that token's feature
        with model.recording("vision.blocks.1.hook_resid_post") as cache:
            model.encode_image(px)
    assert (before - after).abs().max() > 1e-3
    assert_float32_close(after[0], patch(cache["vision.blocks.1.hook_resid_post"])[0, 0], floor=1)


def test_save_pretrained_loads_back_in_transformers(checkpoint, model, tmp_path):
    _, hf = checkpoint
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["text_config"]["projection_size"] == 48
    again = transformers.SiglipModel.from_pretrained(tmp_path).eval()
    px, ids, mask = inputs()
    for (name, a), (_, b) in zip(again.state_dict().items(), hf.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():  # transformers' sdpa there, eager here
        assert_float32_close(again(pixel_values=px, input_ids=ids).logits_per_image,
                             hf(pixel_values=px, input_ids=ids).logits_per_image, rtol=1e-4, floor=1)
    back = load_strictly(tmp_path)
    for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_tower_only_checkpoints(checkpoint, tower, tmp_path):
    _, hf = checkpoint
    px, ids, mask = inputs()
    if tower == "vision":
        ref = transformers.SiglipVisionModel(hf.config.vision_config).eval()
        ref.load_state_dict(hf.vision_model.state_dict())
        with torch.no_grad():
            expected = ref(pixel_values=px).pooler_output
    else:
        ref = transformers.SiglipTextModel(hf.config.text_config).eval()
        ref.load_state_dict(hf.text_model.state_dict())
        with torch.no_grad():
            expected = ref(input_ids=ids).pooler_output
    check_tower_round_trip(ref, tmp_path, tower, lambda model: model.encode_image(px) if tower == "vision"
                           else model.encode_text(ids), expected)


def test_positions_interpolate_like_transformers(checkpoint, model):
    _, hf = checkpoint
    px = torch.rand(2, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=px, interpolate_pos_encoding=True).pooler_output
        got = model.encode_image(px, interpolate_pos_encoding=True)
    assert_float32_close(got, expected, floor=1)


@pytest.mark.parametrize("change, message", [
    ({"vision_config": {**SIGLIP_VISION, "vision_use_head": False}}, "vision_use_head"),
    ({"text_config": {**SIGLIP_TEXT, "projection_size": 40}}, "same width"),
    ({"model_type": "siglip3"}, "model_type is 'siglip3'"),  # siglip2 is a family of its own (NaFlex)
    ({"vision_config": {**SIGLIP_VISION, "patch_size": 7}}, "patch_size"),
])
def test_bad_configs_are_refused_by_name(checkpoint, tmp_path, change, message):
    save_siglip(checkpoint[1], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        clipx.load(tmp_path)


def test_built_from_a_config_it_trains_with_siglips_initial_scale_and_bias():
    config = SiglipConfig(text_config=SiglipTextConfig(**SIGLIP_TEXT),
                          vision_config=SiglipVisionConfig(**SIGLIP_VISION))
    model = clipx.CLIP(config)
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    assert model.logit_bias.item() == -10.0
    assert model.text.proj.bias is not None and model.vision.patch_embedding.bias is not None


# --- every method on SigLIP ----------------------------------------------------------------

@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_batched_equals_single_pair(model, method):
    exp = check_batched_equals_single(model, inputs()[0], CAPTIONS, method)
    assert exp.image.shape == (3, 3, 4, 4)
    if exp.text is not None:
        assert exp.text.shape[-1] == 16  # every caption padded to the context


@pytest.mark.parametrize("method", ["relevance", "gradcam", "legrad", "integrated_gradients", "similarity",
                                    "rollout", "attention"])
def test_maps_change_when_the_last_block_is_rerandomised(checkpoint, method):
    assert map_change_after_rerandomising(load_strictly(checkpoint[0]), inputs(2)[0], CAPTIONS, method) > 1e-3


def test_relevance_flows_through_the_probe(checkpoint, model):
    """The image map is the probe's gradient-weighted attention times R, recomputed here one pair at a
    time on transformers' model (its encoder attentions, and the head's from its MultiheadAttention)."""
    _, hf = checkpoint
    px = inputs(2)[0]
    exp = clipx.explain(model, px, CAPTIONS[:2], method="relevance", start_layer=0)
    tok = model.tokenize(CAPTIONS[:2])
    for i in range(2):
        for j in range(2):
            out = hf(pixel_values=px[i:i + 1], input_ids=tok.input_ids[j:j + 1],
                     attention_mask=tok.attention_mask[j:j + 1], output_attentions=True)
            pattern, image_embed = pooling_head_by_hand(hf, out.vision_model_output.last_hidden_state)
            cos = torch.nn.functional.cosine_similarity(image_embed, out.text_embeds[0], dim=-1)
            logit = cos * hf.logit_scale.exp() + hf.logit_bias
            attentions = [*out.vision_model_output.attentions, pattern]
            grads = torch.autograd.grad(logit.sum(), attentions)
            r = torch.eye(16)
            for a, g in zip(attentions[:-1], grads[:-1]):
                r = r + (g * a).clamp(min=0).mean(1)[0] @ r
            row = (grads[-1] * attentions[-1]).clamp(min=0).mean(1)[0] @ r
            assert_float32_close(exp.image[i, j].flatten(), row[0], floor=1)


def test_views_and_cli_speak_sigmoid(model):
    from clipx.views.render import scores_table

    table = scores_table(["a", "b"], torch.tensor([0.0, 0.0]), scoring=model.config.scoring)
    assert table.count("50.0%") == 2  # each pair scored alone; a softmax would also give 50% here...
    table = scores_table(["a", "b"], torch.tensor([3.0, 3.0]), scoring=model.config.scoring)
    assert table.count("95.3%") == 2  # ...but not here


def test_attention_view_shows_the_probe(model):
    from clipx.views import AttentionView

    view = AttentionView(model, inputs(1)[0], CAPTIONS[:1])
    assert view.source.options[0] == "pooling probe"
    picture, text = view.render()
    assert "pooling head" in text and "class token" not in text


def test_cli_on_a_siglip_checkpoint(checkpoint, model, tmp_path, capsys):
    """`clipx score` prints each pair's sigmoid (they need not sum to one); `clipx explain` writes overlays."""
    from PIL import Image

    from clipx.cli import main

    image = tmp_path / "img.png"
    Image.open(clipx.assets.demo_image("circle-and-square")).save(image)
    assert main(["score", str(image), "a red circle", "a blue square", "--model", str(checkpoint[0])]) == 0
    rows = [line.rsplit(None, 2) for line in capsys.readouterr().out.strip().splitlines()[1:]]
    for _, logit, prob in rows:
        assert float(prob) == pytest.approx(torch.sigmoid(torch.tensor(float(logit))).item(), abs=1e-3)
    assert main(["explain", str(image), "a red circle", "a blue square", "--model", str(checkpoint[0]),
                 "--out", str(tmp_path / "out")]) == 0
    first, second = (Image.open(p) for p in sorted((tmp_path / "out").glob("*.png")))
    assert first.width >= 224 and first.height > 224 and first.tobytes() != second.tobytes()  # labelled overlays


def test_explorer_and_token_patch_view_render(model):
    from clipx.views import Explorer, TokenPatchView

    explorer = Explorer(model, inputs(1)[0], CAPTIONS[:2])
    picture, text = explorer.render()
    assert picture.size[0] > 0 and "%" in text
    picture, text = TokenPatchView(model, inputs(1)[0], CAPTIONS[:1]).render()
    assert picture.size[0] > 0
