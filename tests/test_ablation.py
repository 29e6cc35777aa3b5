"""clipx.ablation: zero- and mean-ablation of attention heads, checked against weights edited by hand."""

import copy

import pytest
import torch

import clipx
from clipx.ablation import ablate_heads
from floats import assert_float32_close


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return clipx.load(tiny_checkpoint[0])


def pixels(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def without_heads(model, tower, heads):
    """A copy whose out_proj ignores the heads' outputs: what zero-ablation must equal."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            attn = getattr(edited, tower).blocks[layer].attn
            attn.out_proj.weight[:, head * attn.head_dim:(head + 1) * attn.head_dim] = 0
    return edited


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_zero_ablation_equals_removing_the_heads_weights(model, tower):
    heads = [(0, 1), (1, 0), (1, 3)]
    px, tok = pixels(), model.tokenize(["a red circle", "two blue squares on the left"])
    encode = (lambda m: m.encode_image(px)) if tower == "vision" else (
        lambda m: m.encode_text(tok.input_ids, tok.attention_mask))
    with torch.no_grad():
        before = encode(model)
        with ablate_heads(model, heads, tower=tower):
            ablated = encode(model)
        expected = encode(without_heads(model, tower, heads))
        after = encode(model)
    assert_float32_close(ablated, expected, floor=1)
    assert (ablated - before).abs().max() > 1e-3
    assert torch.equal(after, before)  # the hooks are gone


def test_mean_ablation_over_the_same_image_changes_nothing(model):
    px = pixels(1)
    with torch.no_grad():
        before = model.encode_image(px)
        with ablate_heads(model, [(1, 2), (-1, -1)], mode="mean", reference={"pixel_values": px}):
            same = model.encode_image(px)
        with ablate_heads(model, [(1, 2)], mode="mean", reference={"pixel_values": pixels(4, seed=3)}):
            other = model.encode_image(px)
    assert_float32_close(same, before, floor=1)
    assert (other - before).abs().max() > 1e-4


@pytest.mark.parametrize("heads, kwargs, error, message", [
    ([(2, 0)], {}, ValueError, r"head \(2, 0\) is outside the vision tower's 2 layers x 4 heads"),
    ([(0, 4)], {}, ValueError, "outside"),
    ([], {}, ValueError, "no heads"),
    ([3], {}, TypeError, "pairs"),
    ([(0, 0)], {"mode": "resample"}, ValueError, "mode must be one of"),
    ([(0, 0)], {"mode": "mean"}, ValueError, "needs reference inputs"),
    ([(0.5, 0)], {}, TypeError, "layer must be an int"),
])
def test_bad_ablations_are_refused_by_name(model, heads, kwargs, error, message):
    with pytest.raises(error, match=message):
        with ablate_heads(model, heads, **kwargs):
            pass
