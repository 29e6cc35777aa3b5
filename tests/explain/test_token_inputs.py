"""explain takes token ids the caller made (an Encoding, or input_ids / attention_mask): the same maps as the
captions they encode, the caller's positions kept, a model without a tokenizer explained, bad ids refused."""

import copy

import pytest
import torch

import clipx
from floats import assert_float32_close

CAPTIONS = ["a red circle", "two blue squares on the left"]
METHODS = ["relevance", "rollout", "attention", "gradcam", "legrad", "similarity", "integrated_gradients"]


def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", METHODS)
def test_an_encoding_explains_as_its_captions_do(eager_model, method):
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    by_text = clipx.explain(eager_model, pixels(), CAPTIONS, method=method, **options)
    enc = eager_model.tokenize(CAPTIONS)
    for given in (enc, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}):
        by_ids = clipx.explain(eager_model, pixels(), given, method=method, **options)
        assert_float32_close(by_ids.image, by_text.image, floor=float(by_text.image.abs().max()))
        assert_float32_close(by_ids.scores, by_text.scores, floor=float(by_text.scores.abs().max()))
        if by_text.text is not None:
            assert_float32_close(by_ids.text, by_text.text, floor=float(by_text.text.abs().max()))
        assert by_ids.texts == CAPTIONS and by_ids.tokens == by_text.tokens


def test_the_callers_positions_are_kept_and_a_tokenizer_free_model_is_explained(eager_model):
    enc = eager_model.tokenize(CAPTIONS)
    longer = 12
    ids = torch.full((2, longer), int(enc.input_ids[0, -1]))
    mask = torch.zeros(2, longer, dtype=torch.long)
    ids[:, :enc.input_ids.shape[1]], mask[:, :enc.input_ids.shape[1]] = enc.input_ids, enc.attention_mask
    by_text = clipx.explain(eager_model, pixels(), CAPTIONS)
    padded = clipx.explain(eager_model, pixels(), {"input_ids": ids, "attention_mask": mask})
    assert padded.text.shape[-1] == longer
    assert_float32_close(padded.text[..., :enc.input_ids.shape[1]], by_text.text, floor=float(by_text.text.abs().max()))
    bare = copy.copy(eager_model)
    bare.tokenizer = None
    result = clipx.explain(bare, pixels(), {"input_ids": enc.input_ids})
    assert result.texts == ["input_ids[0]", "input_ids[1]"]
    assert result.tokens[0] == [str(i) for i in enc.input_ids[0].tolist()]
    assert result.image.shape == by_text.image.shape


@pytest.mark.parametrize("given, error, message", [
    ({"input_ids": torch.zeros(2, 5)}, TypeError, "input_ids must be an integer tensor"),
    ({"input_ids": torch.zeros(1, 2, 5, dtype=torch.long)}, ValueError, r"\[n_texts, length\], got shape \(1, 2, 5\)"),
    ({"input_ids": torch.full((1, 5), 10**6)}, ValueError, "ids in \\[0, "),
    ({"input_ids": torch.zeros(1, 500, dtype=torch.long)}, ValueError, "at most"),
    ({"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 4)}, ValueError,
     "attention_mask must be 0s and 1s shaped like input_ids"),
    ({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0], [0, 0, 0]])},
     ValueError, r"attention_mask rows \[1\] are all zeros"),
    # a misspelt key: iterated, the mapping's keys would have been explained as two captions
    ({"input_id": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3)}, TypeError,
     r"texts is a mapping with the keys \['attention_mask', 'input_id'\], not captions"),
    (torch.ones(1, 3, dtype=torch.long), TypeError, r"texts is a tensor \(1, 3\), not captions"),
])
def test_bad_token_ids_are_refused_by_name(eager_model, given, error, message):
    with pytest.raises(error, match=message):
        clipx.explain(eager_model, pixels(), given)


def test_ids_without_the_end_token_the_tower_pools_at_are_warned_about(eager_model):
    """Pooled at position 0 (as transformers does), every such caption would score alike: said, not silent."""
    enc = eager_model.tokenize(["a red circle", "a blue star"])
    eos = eager_model.text.config.eos_token_id
    cut = enc.input_ids.masked_fill(enc.input_ids == eos, 0)[1:]
    with pytest.warns(UserWarning, match=rf"input_ids rows \[1\] hold no end-of-text token \(id {eos}\)"):
        clipx.explain(eager_model, pixels(), {"input_ids": torch.cat([enc.input_ids[:1], cut])})
