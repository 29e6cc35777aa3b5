"""clipx against transformers.CLIPModel on the same random weights, loaded from disk."""

import pytest
import torch
import transformers

import clipx
from checkpoints import VIT_B_TEXT, make_checkpoint, randomise, save_hf
from floats import assert_float32_close
from inputs import pixels, texts_to_ids
from open_clip_weights import hf_to_openai
from transformers_parity import assert_outputs_match


def hf_run(hf, pixel_values, ids, mask, **kwargs):
    with torch.no_grad():
        return hf(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_match_transformers(tiny_checkpoint, backend):
    folder, hf = tiny_checkpoint
    model = clipx.load(folder, attention=backend)
    px, (ids, mask) = pixels(), texts_to_ids()
    ref = hf_run(hf, px, ids, mask)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask)
    assert_float32_close(out.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)
    assert_float32_close(out.logits_per_text, ref.logits_per_text, rtol=1e-4, floor=1)
    assert_float32_close(out.image_embeds, ref.image_embeds, floor=1)
    assert_float32_close(out.text_embeds, ref.text_embeds, floor=1)
    with torch.no_grad():  # transformers 5 returns the projected features as pooler_output
        assert_float32_close(model.encode_image(px), hf.get_image_features(pixel_values=px).pooler_output, floor=1)
        assert_float32_close(model.encode_text(ids, mask),
                             hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, floor=1)


def test_hidden_states_and_attentions_match(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = clipx.load(folder, attention="sdpa")  # output_attentions must still give patterns
    px, (ids, mask) = pixels(), texts_to_ids()
    ref = hf_run(hf, px, ids, mask, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask,
                    output_hidden_states=True, output_attentions=True)
    assert_outputs_match(out, ref, n_layers=2)  # transformers 5's CLIPModel: pooler_output is projected


def test_padding_does_not_change_pooled_text(tiny_model):
    """A caption alone and the same caption padded inside a batch give the same embedding."""
    ids, mask = texts_to_ids(3, lengths=(5, 9, 7))
    for backend in ("eager", "sdpa"):
        with tiny_model.attention(backend), torch.no_grad():
            batch = tiny_model.encode_text(ids, mask)
            alone = tiny_model.encode_text(ids[:1, :5], mask[:1, :5])
        assert_float32_close(batch[:1], alone, floor=1)


def test_left_padding_uses_the_mask(tiny_checkpoint):
    """Left padding cannot drop the mask: sdpa must then pass it, and still match HF."""
    folder, hf = tiny_checkpoint
    model = clipx.load(folder)
    ids, mask = texts_to_ids(2, lengths=(5, 9))
    ids, mask = ids.flip(1), mask.flip(1)  # pads first, text reversed: still a valid mask test
    ids[0, 4:] = torch.tensor([49406, 400, 500, 600, 49407])
    with torch.no_grad():
        ref = hf.text_model(input_ids=ids, attention_mask=mask)
        for backend in ("eager", "sdpa"):
            with model.attention(backend):
                out = model.text(ids, mask)
            keep = mask.bool()
            assert_float32_close(out.last_hidden_state[keep], ref.last_hidden_state[keep], floor=1)


def test_openai_eos_id_pools_at_argmax(tmp_path):
    hf = make_checkpoint(tmp_path, seed=3, eos_token_id=2)
    model = clipx.load(tmp_path)
    ids, mask = texts_to_ids(3)
    ids[:, -1] = 0  # OpenAI pads with 0: argmax still finds EOS, the first-EOS rule would not matter
    with torch.no_grad():
        assert_float32_close(model.encode_text(ids, mask),
                             hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, floor=1)


def test_interpolated_positions_match(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    model = clipx.load(folder)
    px = pixels(2, size=48)
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=px, interpolate_pos_encoding=True)
        out = model.vision(px, interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape[1] == 1 + 6 * 6
    assert_float32_close(out.pooler_output, ref.pooler_output, floor=1)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.encode_image(px)


@pytest.mark.parametrize("cls,tower", [(transformers.CLIPVisionModelWithProjection, "vision"),
                                       (transformers.CLIPVisionModel, "vision"),
                                       (transformers.CLIPTextModelWithProjection, "text"),
                                       (transformers.CLIPTextModel, "text")])
def test_tower_only_checkpoints(tmp_path, cls, tower):
    config = getattr(make_checkpoint(tmp_path / "full").config, f"{tower}_config")
    torch.manual_seed(0)
    hf = randomise(cls(config).eval())
    save_hf(hf, tmp_path / "tower")
    model = clipx.load(tmp_path / "tower")
    assert (model.vision is None) == (tower == "text") and (model.text is None) == (tower == "vision")
    with torch.no_grad():
        if tower == "vision":
            px = pixels()
            ref = hf(pixel_values=px)
            ours = model.encode_image(px)
        else:
            ids, mask = texts_to_ids()
            ref = hf(input_ids=ids, attention_mask=mask)
            ours = model.encode_text(ids, mask)
    expected = ref.image_embeds if hasattr(ref, "image_embeds") else (
        ref.text_embeds if hasattr(ref, "text_embeds") else ref.pooler_output)
    assert_float32_close(ours, expected, floor=1)
    other = "text" if tower == "vision" else "vision"
    with pytest.raises(ValueError, match=f"no {other} tower"):
        model.encode_text(*texts_to_ids()) if other == "text" else model.encode_image(pixels())
    # and it saves back into a folder transformers reads as the same class
    model.save_pretrained(tmp_path / "again")
    again = cls.from_pretrained(tmp_path / "again").eval()
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


WIDE_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, vocab_size=49408)
WIDE_VISION = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                   image_size=32, patch_size=8)


def test_openai_state_dict_gives_same_logits(tmp_path):
    """A state dict in OpenAI's layout, without any config: the architecture is read off the shapes
    (heads = width / 64, as OpenAI's build_model does; said in a warning) and the default CLIP BPE is attached."""
    hf = make_checkpoint(tmp_path / "hf", seed=5, text=WIDE_TEXT, vision=WIDE_VISION, eos_token_id=2)
    state = hf_to_openai(hf.state_dict())
    torch.save(state, tmp_path / "ViT-tiny.pt")
    with pytest.warns(UserWarning, match="guessed from the weights' shapes"):
        model = clipx.load(tmp_path / "ViT-tiny.pt")
    assert model.config.vision_config.num_hidden_layers == 3
    px = pixels()
    ids = model.tokenize(["a photo of a cat", "a diagram", "two dogs on a sofa"])
    ref = hf_run(hf, px, ids.input_ids, ids.attention_mask)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    assert_float32_close(out.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)


def test_save_pretrained_round_trip_loads_in_transformers(tiny_model, tiny_checkpoint, tmp_path):
    _, hf = tiny_checkpoint
    tiny_model.save_pretrained(tmp_path)
    again = transformers.CLIPModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for k, v in hf.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    px, (ids, mask) = pixels(), texts_to_ids()
    assert_float32_close(hf_run(again, px, ids, mask).logits_per_image, hf_run(hf, px, ids, mask).logits_per_image)
    tok = transformers.CLIPTokenizerFast.from_pretrained(tmp_path)
    assert tok("a photo of a cat").input_ids == tiny_model.tokenize("a photo of a cat").input_ids[0].tolist()
    clipx_again = clipx.load(tmp_path)
    for (k, v), (k2, v2) in zip(tiny_model.state_dict().items(), clipx_again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


# --- real ViT-B shapes (slow) --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("patch", [32, 16])
def test_vit_b_parity(tmp_path, patch):
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=patch)
    hf = make_checkpoint(tmp_path, seed=patch, text=VIT_B_TEXT, vision=vision, projection_dim=512,
                         eos_token_id=2)
    px = pixels(2, size=224)
    captions = ["a photo of a cat", "a very long caption " * 3, "x"]
    for backend in ("eager", "sdpa"):
        model = clipx.load(tmp_path, attention=backend)
        tok = model.tokenize(captions)
        ref = hf_run(hf, px, tok.input_ids, tok.attention_mask, output_hidden_states=True, output_attentions=True)
        with torch.no_grad():
            out = model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                        output_hidden_states=True, output_attentions=True)
        assert_outputs_match(out, ref, n_layers=12)


def test_fused_backends_skip_padding_with_the_same_results(tiny_checkpoint):
    """Under sdpa a right-padded batch whose padding is worth skipping runs in length groups when only its
    pooled outputs are asked for (encode_text); pooled outputs stay HF's. A full forward computes the
    padding too: its last_hidden_state equals the eager one everywhere, padding included."""
    folder, hf = tiny_checkpoint
    model = clipx.load(folder, attention="sdpa")
    lengths = (3,) * 30 + (4,) * 10 + (40, 25)
    ids, mask = texts_to_ids(len(lengths), seed=4, lengths=lengths)
    seen = []
    real_forward = model.text._forward
    model.text._forward = lambda input_ids, *a: seen.append(input_ids.shape) or real_forward(input_ids, *a)
    with torch.no_grad():
        ref = hf.text_model(input_ids=ids, attention_mask=mask)
        with model.hooks(fwd_hooks=[("text.blocks.0.hook_resid_pre", lambda t, h: None)]):
            model.text(ids, mask, pooled_only=True)
        grouped = model.text(ids, mask, pooled_only=True)
        full = model.text(ids, mask)
        with model.attention("eager"):
            padded = model.text(ids, mask)
    # a hooked tower runs the padded batch as it is; then the groups: the 40 captions of 3-4 tokens cut at 4
    # positions, the other two at 40; then the full forward and the eager one, padded
    assert seen == [ids.shape, (40, 4), (2, 40), ids.shape, ids.shape]
    assert grouped.last_hidden_state is None  # never a partial tensor
    assert_float32_close(grouped.pooler_output, padded.pooler_output, floor=1)
    assert_float32_close(grouped.pooler_output, ref.pooler_output, floor=1)
    assert_float32_close(full.last_hidden_state, padded.last_hidden_state, floor=1)
    assert_float32_close(full.last_hidden_state, ref.last_hidden_state, floor=1)


def test_trailing_padding_is_cut_without_splitting(tiny_checkpoint):
    """Captions padded to the full context (padding="max_length") run cut to the longest caption."""
    model = clipx.load(tiny_checkpoint[0], attention="sdpa")
    ids, mask = texts_to_ids(3, lengths=(5, 9, 7))
    full_ids = torch.cat([ids, torch.full((3, 77 - ids.shape[1]), 49407)], 1)
    full_mask = torch.cat([mask, torch.zeros(3, 77 - ids.shape[1], dtype=mask.dtype)], 1)
    seen = []
    real_forward = model.text._forward
    model.text._forward = lambda input_ids, *a: seen.append(input_ids.shape) or real_forward(input_ids, *a)
    with torch.no_grad():
        cut = model.encode_text(full_ids, full_mask)
        whole = model.encode_text(ids, mask)
    assert seen == [(3, 9), (3, 9)]
    assert_float32_close(cut, whole)
