"""Checkpoints written in the hub's own layout by transformers, for clipx to load.

No machine here reaches the hub, so every test model is a randomly initialised
`transformers.CLIPModel` saved with `save_pretrained`, with CLIP's real tokenizer files
and a `preprocessor_config.json` beside it.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from clipx.assets import CLIP_BPE_DIR

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=49408)
TINY_VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)


def hf_clip_config(text=TINY_TEXT, vision=TINY_VISION, projection_dim=24, **text_overrides):
    text = {**text, **text_overrides}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim,
                                   logit_scale_init_value=4.6)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """transformers initialises LayerNorms to identity; perturb them so parity covers them too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def save_hf(model: torch.nn.Module, folder, image_size: int | None = None) -> None:
    """save_pretrained plus the tokenizer and processor files a hub repository has."""
    model.save_pretrained(folder)
    # from_pretrained: transformers 5 ignores vocab_file / merges_file passed to the constructor
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    if image_size is not None:
        transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                        crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)


def make_checkpoint(folder, seed: int = 0, attn: str = "eager", **overrides):
    torch.manual_seed(seed)
    config = hf_clip_config(**overrides)
    config._attn_implementation = attn
    model = randomise(transformers.CLIPModel(config).eval(), seed)
    save_hf(model, folder, image_size=config.vision_config.image_size)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, the transformers model saved there)."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    return folder, make_checkpoint(folder)


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    import clipx

    return clipx.load(tiny_checkpoint[0], attention="eager")


# Grad-CAM's map is relu(activations . weights), a dot product over the width whose terms cancel: its
# rounding is relative to the terms, about ten times the result, so it gets ten times the slack.
BATCHING_RTOL = {"gradcam": 1e-4}


def check_batched_equals_single(model, pixel_values, captions, method: str, **options):
    """Explain all pairs in one call, then three pairs one at a time: the same maps and scores (text maps
    up to the single caption's own padding, past which the batch gives nothing). Returns the batch's."""
    import clipx
    from floats import FLOAT32_RTOL, assert_float32_close

    exp = clipx.explain(model, pixel_values, captions, method=method, **options)
    n_images, n_texts = pixel_values.shape[0], len(captions)
    assert exp.scores.shape == (n_images, n_texts) and exp.image.shape[:2] == (n_images, n_texts)
    assert torch.isfinite(exp.image).all()
    if exp.text is not None:
        length = model.tokenize(captions).input_ids.shape[1]
        assert exp.text.shape == (n_images, n_texts, length) and torch.isfinite(exp.text).all()
    rtol = BATCHING_RTOL.get(method, FLOAT32_RTOL)
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        single = clipx.explain(model, pixel_values[i:i + 1], [captions[j]], method=method, **options)
        assert_float32_close(single.image[0, 0], exp.image[i, j], rtol)
        assert_float32_close(single.scores[0, 0], exp.scores[i, j])
        if exp.text is not None:
            n = single.text.shape[-1]  # a single caption may be padded less
            assert_float32_close(single.text[0, 0], exp.text[i, j, :n], rtol)
            assert exp.text[i, j, n:].abs().sum() == 0  # padding gets no relevance
    return exp


def map_change_after_rerandomising(model, pixel_values, captions, method: str, **options) -> float:
    """The sanity check of Adebayo et al. (2018): the largest change in `method`'s image maps when the
    last vision block's weights are re-randomised (in place: pass a model of the test's own)."""
    import clipx

    before = clipx.explain(model, pixel_values, captions, method=method, **options).image
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.vision.blocks[-1].parameters():
            p.copy_(torch.randn_like(p) * p.std().clamp(min=0.05))
    after = clipx.explain(model, pixel_values, captions, method=method, **options).image
    return float((before - after).abs().max())


def texts_to_ids(n: int = 3, seed: int = 0, lengths=(5, 9, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random captions: BOS, words, EOS, then EOS padding (HF's convention)."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths[:n])
    ids = torch.full((n, L), 49407)
    mask = torch.zeros(n, L, dtype=torch.long)
    for i, length in enumerate(lengths[:n]):
        ids[i, 0] = 49406
        ids[i, 1:length - 1] = torch.randint(300, 40000, (length - 2,), generator=g)
        mask[i, :length] = 1
    return ids, mask
