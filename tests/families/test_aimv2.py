"""AIMv2: parity with transformers' Aimv2Model (random weights written by save_pretrained), the readout it
describes (RMSNorm and SwiGLU blocks, the patch norm before the positions, no class token, a probe
that is its own query, a causal text tower pooled at the first EOS, a clamped logit scale), loading and
saving, and every explanation method on it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers

import clipx
from clipx.assets import CLIP_BPE_DIR
from clipx.errors import CheckpointError
from clipx.families.aimv2 import Aimv2Config, Aimv2TextConfig, Aimv2VisionConfig
from checkpoints import randomise
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close
from transformers_parity import assert_outputs_match, load_strictly, load_weights_only

CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "two birds"]
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, vocab_size=49408)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)


def hf_aimv2(text=TEXT, vision=VISION, projection_dim=24, seed=0, initializer_range=0.1,
             **biases) -> transformers.Aimv2Model:
    """A random Aimv2Model under eager attention (the only one that returns attention maps). The tiny
    towers' weights are drawn wider than transformers' 0.02, so their attention is far from uniform; norm
    weights, biases and the probe perturbed (transformers initialises them to ones and zeros); the logit
    scale set above log(max_logit_scale), so the clamp acts."""
    torch.manual_seed(seed)
    init = dict(initializer_range=initializer_range, **biases)
    config = transformers.Aimv2Config(text_config={**text, **init}, vision_config={**vision, **init},
                                      projection_dim=projection_dim)
    config._attn_implementation = "eager"
    model = randomise(transformers.Aimv2Model(config).eval(), seed)
    with torch.no_grad():
        model.vision_model.head.cls_token.normal_()
        model.logit_scale.fill_(5.0)  # exp(5) = 148 > max_logit_scale = 100
    return model


def save_aimv2(model, folder) -> None:
    """save_pretrained plus the files an AIMv2 hub repository has beside the weights: CLIP's BPE
    tokenizer and CLIP's image processor."""
    model.save_pretrained(folder)
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    size = model.config.vision_config.image_size
    transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                    crop_size={"height": size, "width": size}).save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-aimv2")
    hf = hf_aimv2()
    save_aimv2(hf, folder)
    return folder, hf


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_strictly(checkpoint[0])


def inputs(n_images=3, seed=1, size=32):
    """Pixels, and captions ending in EOS (49407) with one right-padded: transformers' Aimv2 text tower is
    causal only when an attention_mask with padding is passed (see test_the_text_tower_is_always_causal)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(300, 40000, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    ids[:, 0], ids[:, -1] = 49406, 49407
    ids[1, 7:], mask[1, 8:] = 49407, 0
    ids[2, 5] = 49407  # an EOS mid-caption: pooled there, at the first one
    return torch.rand(n_images, 3, size, size, generator=g) * 2 - 1, ids, mask


def probe_by_hand(hf, tokens):
    """transformers' pooling head written out from its weights: (pattern [B, heads, 1, n], pooled [B, d]).
    transformers runs it through F.scaled_dot_product_attention and returns no pattern."""
    head = hf.vision_model.head
    b, n, d = tokens.shape
    heads = hf.config.vision_config.num_attention_heads
    split = lambda x: x.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(head.cls_token.expand(b, -1, -1)), split(head.k_proj(tokens)), split(head.v_proj(tokens))
    pattern = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return pattern, head.output_proj((pattern @ v).transpose(1, 2).reshape(b, d))


def check_parity(hf, model, px, ids, mask):
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 output_attentions=True)
        with model.recording("vision.head.attn.hook_pattern") as cache:
            out = model(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
        # without outputs asked for, the model's own backend runs (output_attentions runs every layer eagerly)
        plain = model(pixel_values=px, input_ids=ids, attention_mask=mask)
    assert_float32_close(plain.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)
    assert_float32_close(out.logits_per_text, ref.logits_per_text, rtol=1e-4, floor=1)
    # Aimv2Model.forward leaves pooler_output unprojected (the head's output; the EOS token's state)
    assert_outputs_match(out, ref, pooled="pooler_output")
    for tower, ours in (("vision", out.vision_model_output), ("text", out.text_model_output)):
        # [0]: the embeddings (the patch norm and positions applied); [i]: block i's output, so the last is
        # before the final RMSNorm that last_hidden_state is after
        n_layers = getattr(hf.config, f"{tower}_config").num_hidden_layers
        assert len(ours.hidden_states) == n_layers + 1 and len(ours.attentions) == n_layers
        assert (ours.hidden_states[-1] - ours.last_hidden_state).abs().max() > 1e-2
    pattern, pooled = probe_by_hand(hf, ref.vision_model_output.last_hidden_state)
    assert_float32_close(pooled, ref.vision_model_output.pooler_output, floor=1)  # the hand-written head is theirs
    assert_float32_close(cache["vision.head.attn.hook_pattern"], pattern, floor=1)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_with_transformers(checkpoint, backend):
    folder, hf = checkpoint
    check_parity(hf, load_strictly(folder, attention=backend), *inputs())


def test_parity_with_every_bias(tmp_path):
    """qkv_bias and mlp_bias on: q, k, v and out_proj (of the blocks; k and v of the head) and the SwiGLU
    projections carry biases."""
    hf = hf_aimv2(qkv_bias=True, mlp_bias=True, seed=2)
    save_aimv2(hf, tmp_path)
    model = load_strictly(tmp_path)
    assert model.vision.blocks[0].attn.out_proj.bias is not None and model.text.blocks[1].mlp.up_proj.bias is not None
    assert model.vision.head.attn.k_proj.bias is not None
    check_parity(hf, model, *inputs(2, seed=3))


@pytest.mark.slow
def test_aimv2_large_patch14_224_lit_shapes(tmp_path):
    """apple/aimv2-large-patch14-224-lit's shapes (transformers' Aimv2Config defaults, random weights):
    24 vision layers of width 1024 (8 heads, SwiGLU 2816) over 256 patches of 14 pixels, 12 text layers of
    width 768 (6 heads), 77 positions, CLIP's vocabulary, a 512-wide joint space; transformers' own
    initialisation (std 0.02)."""
    hf = hf_aimv2(text=dict(), vision=dict(), projection_dim=512, seed=3, initializer_range=0.02)
    hf.save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(4)
    px = torch.rand(1, 3, 224, 224, generator=g) * 2 - 1
    ids = torch.randint(300, 40000, (2, 20), generator=g)
    ids[:, -1], ids[1, 12:] = 49407, 49407
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    model = load_weights_only(tmp_path)
    assert model.vision.config.grid_size ** 2 == 256 and len(model.vision.blocks) == 24
    check_parity(hf, model, px, ids, mask)


def test_readout_described_by_the_model(model):
    vision, text = model.vision, model.text
    assert isinstance(model.config, Aimv2Config)
    assert vision.prefix_tokens == 0 and vision.class_embedding is None and vision.ln_pre is None
    assert vision.patch_norm is not None and vision.patch_embedding.bias is not None
    assert isinstance(vision.head.attn.q_proj, torch.nn.Identity) and vision.head.mlp is None
    assert not hasattr(vision.ln_post, "bias") and vision.blocks[0].attn.q_proj.bias is None
    assert text.config.causal and text.config.pooling == "eos" and model.config.scoring == "softmax"
    assert "vision.head.attn.hook_pattern" in model.hook_names()
    ids = torch.tensor([[49406, 5, 49407, 7, 49407], [49406, 5, 6, 7, 8]])
    with pytest.warns(UserWarning, match=r"rows \[1\] hold no end-of-text token"):  # no EOS: said
        assert text.pooled_positions(ids).tolist() == [2, 0]  # the first EOS (none: position 0, as transformers)


def test_the_logit_scale_is_clamped(model):
    """exp(logit_scale) = exp(5) is clamped at max_logit_scale = 100 (the parity checks it too)."""
    px, ids, mask = inputs(2)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask)
    assert model.logit_scale.item() == 5.0 and model.config.max_logit_scale == 100.0
    assert "exp(logit_scale)=100 x cosine" in repr(model)  # the summary scores as the model does
    assert_float32_close(out.logits_per_image, 100 * out.image_embeds @ out.text_embeds.T, floor=1)


def test_the_patch_norm_comes_before_the_positions(model):
    """hook_embed is the RMS-normalised patches (each token's root mean square is the norm's weight's
    scale), and the positions are added to them after: the first hidden state is their sum."""
    px = inputs(1)[0]
    with torch.no_grad(), model.recording(["vision.hook_embed", "vision.hook_pos_embed"]) as cache:
        out = model.vision(px, output_hidden_states=True)
    patches = model.vision.patch_embedding(px).flatten(2).transpose(1, 2)
    expected = patches * torch.rsqrt(patches.pow(2).mean(-1, keepdim=True) + 1e-5) * model.vision.patch_norm.weight
    assert_float32_close(cache["vision.hook_embed"], expected)
    assert_float32_close(out.hidden_states[0], cache["vision.hook_embed"] + cache["vision.hook_pos_embed"])


def test_the_text_tower_is_always_causal(checkpoint, model):
    """AIMv2's LiT text tower is causal. transformers' is causal only when an attention_mask is passed
    (and, under sdpa, only when it holds padding); clipx's always is. So clipx without a mask is
    transformers eager with an all-ones mask, and differs from transformers without one."""
    _, hf = checkpoint
    ids = inputs()[1][[0, 3]]
    changed = ids.clone()
    changed[:, -2] = 1000
    with torch.no_grad():
        ours, ours_changed = model.text(ids).last_hidden_state, model.text(changed).last_hidden_state
        causal = hf.text_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        bidirectional = hf.text_model(input_ids=ids).last_hidden_state
    assert_float32_close(ours[:, :-2], ours_changed[:, :-2])  # a later token changes nothing before it
    assert_float32_close(ours, causal, floor=1)
    assert (ours - bidirectional).abs().max() > 1e-3


def test_other_image_sizes_resample_the_learned_positions(checkpoint, model, tmp_path):
    """transformers' Aimv2 takes only its own size (it ignores interpolate_pos_encoding). clipx, asked
    to, resamples the learned table bicubically as for CLIP: the same as transformers' model built for
    the other size with that resampled table (clipx's extension, not a transformers feature)."""
    _, hf = checkpoint
    px = torch.rand(2, 3, 48, 40) * 2 - 1
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.encode_image(px)
    table = hf.vision_model.embeddings.position_embedding.weight.detach()
    resampled = F.interpolate(table.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 5), mode="bicubic",
                              align_corners=False).permute(0, 2, 3, 1).reshape(30, -1)
    ref = transformers.Aimv2VisionModel(hf.config.vision_config).eval()
    state = {**hf.vision_model.state_dict(), "embeddings.position_embedding.weight": resampled}
    ref.embeddings.position_embedding = torch.nn.Embedding(30, table.shape[1])
    ref.embeddings.position_ids = torch.arange(30)[None]
    ref.load_state_dict(state)
    with torch.no_grad():
        expected = hf.visual_projection(ref(pixel_values=px).pooler_output)
        got = model.encode_image(px, interpolate_pos_encoding=True)
    assert_float32_close(got, expected, floor=1)


def test_save_pretrained_loads_back_in_transformers(checkpoint, model, tmp_path):
    _, hf = checkpoint
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "aimv2" and config["max_logit_scale"] == 100.0
    assert config["vision_config"]["rms_norm_eps"] == 1e-5 and config["vision_config"]["qkv_bias"] is False
    again = transformers.Aimv2Model.from_pretrained(tmp_path).eval()
    assert again.state_dict().keys() == hf.state_dict().keys()
    for (name, a), (_, b) in zip(again.state_dict().items(), hf.state_dict().items()):
        assert torch.equal(a, b), name
    px, ids, mask = inputs()
    with torch.no_grad():  # transformers' sdpa there, eager here
        assert_float32_close(again(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             rtol=1e-4, floor=1)
    back = load_strictly(tmp_path)
    assert back.config == model.config
    for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_tower_only_checkpoints(checkpoint, tower, tmp_path):
    """Aimv2VisionModel / Aimv2TextModel: keys without a prefix (`rms_norm.weight` among them), no
    projection: the embedding is the head's output / the EOS token's state."""
    _, hf = checkpoint
    px, ids, mask = inputs()
    if tower == "vision":
        ref = transformers.Aimv2VisionModel(hf.config.vision_config).eval()
        ref.load_state_dict(hf.vision_model.state_dict())
        with torch.no_grad():
            expected = ref(pixel_values=px).pooler_output
    else:
        ref = transformers.Aimv2TextModel(hf.config.text_config).eval()
        ref.load_state_dict(hf.text_model.state_dict())
        with torch.no_grad():
            expected = ref(input_ids=ids, attention_mask=mask).pooler_output
    ref.save_pretrained(tmp_path)
    assert "rms_norm.weight" in ref.state_dict()
    model = load_weights_only(tmp_path)
    assert getattr(model, "text" if tower == "vision" else "vision") is None
    assert getattr(model, tower).proj is None
    with torch.no_grad():
        got = model.encode_image(px) if tower == "vision" else model.encode_text(ids, mask)
    assert_float32_close(got, expected, floor=1)
    model.save_pretrained(tmp_path / "again")
    again = type(ref).from_pretrained(tmp_path / "again")
    for (name, a), (_, b) in zip(again.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("change, message", [
    ({"vision_config": {"is_native": True}}, "vision_config.is_native is True: 2-D sin-cos"),
    ({"vision_config": {"use_head": False}}, "vision_config.use_head is False: without the attention-pooling head"),
    ({"text_config": {"eos_token_id": [49407, 2]}}, "text_config.eos_token_id is \\[49407, 2\\]"),
    ({"text_config": {"qkv_bias": "yes"}}, "text_config.attention_bias must be true or false"),
    ({"vision_config": {"rms_norm_eps": 2}}, "vision_config.layer_norm_eps"),
    ({"vision_config": {"patch_size": 7}}, "patch_size"),
])
def test_bad_configs_are_refused_by_name(checkpoint, tmp_path, change, message):
    save_aimv2(checkpoint[1], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, fields in change.items():
        config[key].update(fields)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        clipx.load(tmp_path)


def test_built_from_a_config_it_has_aimv2s_blocks():
    config = Aimv2Config(text_config=Aimv2TextConfig(**TEXT, projection_dim=24),
                         vision_config=Aimv2VisionConfig(**VISION, projection_dim=24), projection_dim=24)
    model = clipx.CLIP(config)
    assert model.logit_scale.item() == pytest.approx(2.6592) and model.config.max_logit_scale == 100.0
    block = model.text.blocks[0]
    assert type(block.ln1).__name__ == "RMSNorm" and type(block.mlp).__name__ == "SwiGLU"
    assert block.attn.out_proj.bias is None and block.mlp.down_proj.bias is None
    assert model.vision.proj.bias is None and model.vision.head.attn.out_proj.bias is not None
    assert Aimv2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- every method on AIMv2 ------------------------------------------------------------------

@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_batched_equals_single_pair(model, method):
    exp = check_batched_equals_single(model, inputs()[0], CAPTIONS, method)
    assert exp.image.shape == (3, 3, 4, 4)


@pytest.mark.parametrize("method", ["relevance", "gradcam", "legrad", "integrated_gradients", "similarity",
                                    "rollout", "attention"])
def test_maps_change_when_the_last_block_is_rerandomised(checkpoint, method):
    assert map_change_after_rerandomising(load_strictly(checkpoint[0]), inputs(2)[0], CAPTIONS, method) > 1e-3


def test_each_patch_goes_through_the_head_and_the_projection(model):
    """similarity's patch features: the probe reading one token alone is that token's feature, through
    the head's value and output projections and then the visual projection (SigLIP has no projection
    after its head; AIMv2 does)."""
    px = inputs(1)[0]

    def only_first_patch(pattern, hook):
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    with torch.no_grad():
        with model.hooks(fwd_hooks=[("vision.head.attn.hook_pattern", only_first_patch)]):
            embedding = model.encode_image(px)
        with model.recording("vision.blocks.1.hook_resid_post") as cache:
            model.encode_image(px)
        features = model.vision.patch_features(cache["vision.blocks.1.hook_resid_post"])
    assert features.shape == (1, 16, 24)
    assert_float32_close(features[0, 0], embedding[0], floor=1)


def test_relevance_flows_through_the_probe(checkpoint, model):
    """The image map is the probe's gradient-weighted attention times R, recomputed here one pair at a
    time on transformers' model (its encoder attentions, and the head's written out from its weights)."""
    _, hf = checkpoint
    px = inputs(2)[0]
    exp = clipx.explain(model, px, CAPTIONS[:2], method="relevance", start_layer=0)
    tok = model.tokenize(CAPTIONS[:2])
    for i in range(2):
        for j in range(2):
            out = hf(pixel_values=px[i:i + 1], input_ids=tok.input_ids[j:j + 1],
                     attention_mask=tok.attention_mask[j:j + 1], output_attentions=True)
            pattern, pooled = probe_by_hand(hf, out.vision_model_output.last_hidden_state)
            cos = F.cosine_similarity(hf.visual_projection(pooled), out.text_embeds[0], dim=-1)
            logit = cos * min(hf.logit_scale.exp(), torch.tensor(100.0))
            attentions = [*out.vision_model_output.attentions, pattern]
            grads = torch.autograd.grad(logit.sum(), attentions)
            r = torch.eye(16)
            for a, g in zip(attentions[:-1], grads[:-1]):
                r = r + (g * a).clamp(min=0).mean(1)[0] @ r
            row = (grads[-1] * attentions[-1]).clamp(min=0).mean(1)[0] @ r
            assert_float32_close(exp.image[i, j].flatten(), row[0], floor=1)


def test_decomposition_refuses_the_image_and_takes_the_text_apart(model):
    """The probe is nonlinear in the tokens, so the image is refused by name; the text readout (RMSNorm
    with no bias, then the projection) is linear at a fixed scale, and its parts sum to the embedding.
    The blocks' out_proj and the norm have no bias, so there are no bias parts."""
    with pytest.raises(ValueError, match="pooling='probe'"):
        clipx.decompose(model, inputs(1)[0])
    parts = clipx.decompose_text(model, CAPTIONS)
    enc = model.tokenize(CAPTIONS)
    with torch.no_grad():
        embeds = model.encode_text(enc.input_ids, enc.attention_mask)
    assert_float32_close(parts.total(), embeds)
    assert not any(label.endswith(".bias") for label in parts.labels)
    assert parts.labels[-1] == "text.blocks.1.mlp" and len(parts.labels) == 1 + 2 * (4 + 1)
    with torch.no_grad():
        out = model(pixel_values=inputs(2)[0], input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    # against image embeddings, the parts' direct logits sum to logits_per_text: the scale clamped at 100
    assert_float32_close(parts.logits(model, out.image_embeds).total(), out.logits_per_text, floor=1)
    lens = clipx.logit_lens(model, inputs(2)[0], CAPTIONS)  # the image's layers read through the head
    assert_float32_close(lens[-1], out.logits_per_image, floor=1)


def test_the_processor_and_tokenizer_are_clips(model):
    assert model.tokenize(["a cat"]).input_ids[0, -1].item() == 49407
    assert model.processor.crop_size == {"height": 32, "width": 32}
    assert math.isclose(model.processor.image_mean[0], 0.48145466)
