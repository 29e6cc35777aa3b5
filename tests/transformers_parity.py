"""What every family's parity tests check against transformers' own model, in one place."""

from __future__ import annotations

import warnings

import torch

import clipx

from floats import assert_float32_close


def load_strictly(folder, **kwargs) -> clipx.CLIP:
    """clipx.load, with any warning an error: a complete hub folder loads silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return clipx.load(folder, **kwargs)


def load_weights_only(folder, **kwargs) -> clipx.CLIP:
    """clipx.load of a folder that holds weights and config alone (no tokenizer files, which it warns of)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clipx.load(folder, **kwargs)


def forward_both(model, hf, **inputs):
    """(clipx's, transformers') forward of the same inputs, with hidden states and attentions."""
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        return model(**inputs, **flags), hf(**inputs, **flags)


def assert_outputs_match(out, ref, n_layers: int | None = None, pooled: str = "embeds") -> None:
    """clipx's forward `out` against transformers' `ref` on the same inputs, both asked for hidden states and
    attentions: the logits, both embeddings, and for each tower last_hidden_state, the pooled output (`pooled`:
    "embeds" where transformers' pooler_output is projected, as its CLIP-likes have it; "pooler_output" where
    it is not), every hidden state and every attention pattern, as many as transformers gives (`n_layers`
    blocks per tower where given)."""
    assert_float32_close(out.logits_per_image, ref.logits_per_image, rtol=1e-4, floor=1)
    assert_float32_close(out.image_embeds, ref.image_embeds, floor=1)
    assert_float32_close(out.text_embeds, ref.text_embeds, floor=1)
    for ours, theirs in ((out.vision_model_output, ref.vision_model_output),
                         (out.text_model_output, ref.text_model_output)):
        assert_float32_close(ours.last_hidden_state, theirs.last_hidden_state, floor=1)
        assert_float32_close(getattr(ours, pooled), theirs.pooler_output, floor=1)
        assert len(ours.hidden_states) == len(theirs.hidden_states)
        assert len(ours.attentions) == len(theirs.attentions)
        if n_layers is not None:
            assert len(ours.attentions) == n_layers
        for a, b in zip(ours.hidden_states + ours.attentions, theirs.hidden_states + theirs.attentions):
            assert_float32_close(a, b, floor=1)


def check_tower_round_trip(ref, folder, tower: str, encode, expected) -> None:
    """A tower-only transformers model `ref` saved to `folder` loads as a one-tower clipx model whose
    `encode(model)` equals `expected`, and saves back to keys transformers' class reads."""
    ref.save_pretrained(folder)
    model = load_weights_only(folder)
    assert getattr(model, "text" if tower == "vision" else "vision") is None
    with torch.no_grad():
        assert_float32_close(encode(model), expected, floor=1)
    model.save_pretrained(folder / "again")
    assert type(ref).from_pretrained(folder / "again").state_dict().keys() == ref.state_dict().keys()
