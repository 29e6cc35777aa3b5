"""clipx.ablation: zero-, mean- and resample-ablation and activation patching of heads and MLPs, checked
against weights edited by hand and against other hook points' recordings."""

import pytest
import torch

from clipx.mech.ablation import ablate, ablate_heads, patch
from floats import assert_float32_close
from inputs import pixels
from weight_edits import without_heads


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_zero_ablation_equals_removing_the_heads_weights(model, tower):
    heads = [(0, 1), (1, 0), (1, 3)]
    px, tok = pixels(2, seed=0), model.tokenize(["a red circle", "two blue squares on the left"])
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
    px = pixels(1, seed=0)
    with torch.no_grad():
        before = model.encode_image(px)
        with ablate_heads(model, [(1, 2), (-1, -1)], mode="mean", reference={"pixel_values": px}):
            same = model.encode_image(px)
        with ablate_heads(model, [(1, 2)], mode="mean", reference={"pixel_values": pixels(4, seed=3)}):
            other = model.encode_image(px)
    assert_float32_close(same, before, floor=1)
    assert (other - before).abs().max() > 1e-4


@pytest.mark.parametrize("heads, kwargs, error, message", [
    ([(2, 0)], {}, ValueError, r"'vision.blocks.2.attn.head.0': layer 2 is outside the vision tower's 2 layers"),
    ([(0, 4)], {}, ValueError, "outside"),
    ([], {}, ValueError, "no heads"),
    ([3], {}, TypeError, "pairs"),
    ([(0, 0)], {"mode": "sideways"}, ValueError, "mode must be one of"),
    ([(0, 0)], {"mode": "resample"}, ValueError, "needs reference inputs"),
    ([(0, 0)], {"mode": "mean"}, ValueError, "needs reference inputs"),
    ([(0.5, 0)], {}, TypeError, "layer must be an int"),
])
def test_bad_ablations_are_refused_by_name(model, heads, kwargs, error, message):
    with pytest.raises(error, match=message):
        with ablate_heads(model, heads, **kwargs):
            pass


def record(model, names, px):
    with torch.no_grad(), model.recording(names) as cache:
        model.encode_image(px)
    return {name: cache[name] for name in names}


def test_patching_an_mlp_writes_the_sources_output_into_the_targets_residual(model):
    source, target = pixels(1, seed=1), pixels(2, seed=2)
    names = ["vision.blocks.1.hook_resid_mid", "vision.blocks.1.hook_mlp_out", "vision.blocks.1.hook_resid_post"]
    clean, from_source = record(model, names, target), record(model, names, source)
    with patch(model, "vision.blocks.-1.mlp", source):
        patched = record(model, names, target)
    assert torch.equal(patched[names[0]], clean[names[0]])  # earlier layers untouched
    expected = clean[names[0]] + from_source[names[1]]
    assert_float32_close(patched[names[2]], expected, floor=1)
    assert (patched[names[2]] - clean[names[2]]).abs().max() > 1e-3


def test_patching_from_the_same_input_changes_nothing_and_from_another_changes_the_logits(model):
    px, other = pixels(2, seed=4), pixels(2, seed=5)
    parts = ["vision.blocks.0.attn.head.1", "vision.blocks.1.attn.head.3", "vision.blocks.0.mlp"]
    with torch.no_grad():
        before = model.encode_image(px)
        with patch(model, parts, {"pixel_values": px}):
            same = model.encode_image(px)
        with patch(model, parts, other):
            changed = model.encode_image(px)
    assert_float32_close(same, before, floor=1)
    assert (changed - before).abs().max() > 1e-3


def test_ablating_at_the_class_token_leaves_the_last_layers_patches_alone(model):
    px, name = pixels(2, seed=0), "vision.blocks.1.hook_resid_post"
    parts = [f"vision.blocks.1.attn.head.{h}" for h in range(4)]
    clean = record(model, [name], px)[name]
    with ablate(model, parts, positions=[0]):
        at_class = record(model, [name], px)[name]
    with ablate(model, parts):
        everywhere = record(model, [name], px)[name]
    assert torch.equal(at_class[:, 1:], clean[:, 1:])
    assert (at_class[:, 0] - clean[:, 0]).abs().max() > 1e-3
    assert (everywhere[:, 1:] - clean[:, 1:]).abs().max() > 1e-3


def test_resample_ablation_gives_each_item_a_reference_items_output(model):
    reference, px, name = pixels(3, seed=6), pixels(5, seed=7), "vision.blocks.1.attn.hook_z"
    outputs = record(model, [name], reference)[name][:, :, 2]  # [3, pos, d_head]
    with ablate(model, "vision.blocks.1.attn.head.2", mode="resample", reference=reference, seed=1):
        resampled = record(model, [name], px)[name][:, :, 2]
    matches = (resampled[:, None] == outputs[None]).all(-1).all(-1)  # [5, 3]
    assert matches.sum(1).eq(1).all()  # each item holds exactly one reference item's output
    with ablate(model, "vision.blocks.1.attn.head.2", mode="resample", reference=reference[:1]):
        single = record(model, [name], px)[name][:, :, 2]
    assert torch.equal(single, outputs[:1].expand_as(single))


@pytest.mark.parametrize("run, message", [
    (lambda m: ablate(m, "vision.blocks.0.attn.head"), "not a part label"),
    (lambda m: ablate(m, ["vision.layers.0.mlp"]), "not a part label"),
    (lambda m: ablate(m, []), "no parts given"),
    (lambda m: ablate(m, "vision.blocks.0.attn.head.9"), "head 9 is outside the 4 heads"),
    (lambda m: ablate(m, "text.blocks.0.mlp", mode="mean", reference=pixels(1, seed=0)), "hold no input_ids"),
    (lambda m: patch(m, "vision.blocks.0.mlp", pixels(3, seed=0)), "the source holds 3 inputs but this forward 2"),
    (lambda m: ablate(m, "vision.blocks.0.mlp", positions=[0, 17]), "positions \\[0, 17\\] reach outside"),
])
def test_bad_interventions_are_refused_by_name(model, run, message):
    with pytest.raises(ValueError, match=message):
        with run(model), torch.no_grad():
            model.encode_image(pixels(2, seed=0))


def test_a_recorded_cache_serves_as_the_reference(model):
    reference, px, part = pixels(3, seed=8), pixels(2, seed=9), "vision.blocks.1.attn.head.2"
    with torch.no_grad(), model.recording("vision.blocks.1.attn.hook_z") as cache:
        model.encode_image(reference)
    with torch.no_grad():
        for mode in ("mean", "resample"):
            with ablate(model, part, mode, reference):
                from_inputs = model.encode_image(px)
            with ablate(model, part, mode, cache):
                from_cache = model.encode_image(px)
            assert torch.equal(from_cache, from_inputs)
    with pytest.raises(ValueError, match="cache holds no 'vision.blocks.0.attn.hook_z'"):
        with ablate(model, "vision.blocks.0.attn.head.1", "mean", cache):
            pass
