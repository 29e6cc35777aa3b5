"""clipx.sweep_heads: each entry is the change a hand-made ablation gives (weights edited, or the embedding
rebuilt from encode_image), a head that writes nothing has no effect, and bad input is refused by name."""

import matplotlib
import pytest
import torch

import clipx
from floats import assert_float32_close
from inputs import pixels
from weight_edits import without_heads

matplotlib.use("Agg")
CAPTIONS = ["a red circle", "a blue square", "two green stars", "x"]


def scores(model, px, captions=CAPTIONS):
    tok = model.tokenize(captions)
    with torch.no_grad():
        return model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask).logits_per_image


def test_total_effect_of_zero_ablation_equals_removing_the_heads_weights(model):
    px, targets = pixels(3, seed=0), torch.tensor([0, 2, 1])
    table = clipx.sweep_heads(model, px, CAPTIONS, targets, effect="total", mode="zero", progress=False)
    assert table.values.shape == (2, 4)
    clean, rows = scores(model, px), torch.arange(3)
    for layer, head in [(0, 1), (1, 3)]:
        edited = scores(without_heads(model, "vision", [(layer, head)]), px)
        expected = (edited - clean)[rows, targets].mean()
        assert_float32_close(table.values[layer, head], expected, floor=float(clean.abs().max()))
    assert table.values.abs().max() > 1e-3


def test_direct_effect_equals_the_embedding_with_the_heads_part_swapped_for_its_mean(model):
    px = pixels(4, seed=1)
    table = clipx.sweep_heads(model, px, CAPTIONS, effect="direct", progress=False)
    clean = scores(model, px)
    targets, rows = clean.argmax(1), torch.arange(4)
    parts = clipx.decompose(model, px)
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        embeds, text = model.encode_image(px), model.encode_text(tok.input_ids, tok.attention_mask)
    text = text / text.norm(dim=-1, keepdim=True)
    for layer, head in [(0, 0), (1, 2)]:
        part = parts.values[:, parts.labels.index(f"vision.blocks.{layer}.attn.head.{head}")]
        ablated = embeds - part + part.mean(0)
        logits = ablated / ablated.norm(dim=-1, keepdim=True) @ text.T * model.logit_scale.exp()
        expected = (logits - clean)[rows, targets].mean()
        assert_float32_close(table.values[layer, head], expected, floor=float(clean.abs().max()))


@pytest.mark.parametrize("effect, mode", [("total", "mean"), ("total", "zero"), ("direct", "mean"), ("direct", "zero")])
def test_a_head_that_writes_nothing_has_no_effect(model, effect, mode):
    silent = without_heads(model, "vision", [(1, 1)])
    table = clipx.sweep_heads(silent, pixels(3, seed=2), CAPTIONS, effect=effect, mode=mode, progress=False)
    assert table.values[1, 1].abs() < 1e-6
    assert (table.values.flatten().abs() > 1e-4).sum() >= 4


def test_the_table_prints_ranks_and_plots(model):
    table = clipx.sweep_heads(model, pixels(3, seed=0), CAPTIONS, reference=pixels(5, seed=9), progress=False)
    top = table.top(3)
    assert [value for _, value in top] == sorted(float(v) for v in table.values.flatten())[:3]
    layer, head = divmod(int(table.values.flatten().argmin()), 4)
    assert top[0][0] == f"vision.blocks.{layer}.attn.head.{head}"
    text = str(table)
    assert "total effect of mean-ablating each vision head" in text and text.count("\n| ") == 1 + 2
    assert table.plot().get_title() == "total effect (mean-ablation)"


@pytest.mark.parametrize("kwargs, message", [
    ({"effect": "indirect"}, "effect must be one of total, direct"),
    ({"effect": "direct", "mode": "resample"}, "direct effect takes mode 'zero' or 'mean'"),
    ({"targets": [0, 1]}, r"one caption index per image \(3\)"),
    ({"targets": [0, 1, 4]}, r"caption indices in \[0, 4\)"),
    ({"mode": "other"}, "mode must be one of"),
])
def test_bad_sweeps_are_refused_by_name(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        clipx.sweep_heads(model, pixels(3, seed=0), CAPTIONS, progress=False, **kwargs)


def test_direct_path_ablation_of_a_decomposition(model):
    px = pixels(3, seed=3)
    parts = clipx.decompose(model, px)
    one = clipx.decompose(model, px[:1])
    assert_float32_close(one.ablated(one.labels).total(), one.total(), floor=1)  # its own mean: itself
    assert parts.ablated(parts.labels, mode="zero").total().abs().max() == 0
    swapped = parts.ablated("vision.blocks.1.mlp", reference=one)
    index = parts.labels.index("vision.blocks.1.mlp")
    assert torch.equal(swapped.values[:, index], one.values[:, index].expand(3, -1))
    others = [i for i in range(len(parts.labels)) if i != index]
    assert torch.equal(swapped.values[:, others], parts.values[:, others])
    with pytest.raises(ValueError, match="no part 'vision.blocks.7.mlp'"):
        parts.ablated(["vision.blocks.7.mlp"])
    with pytest.raises(ValueError, match="other parts"):
        parts.ablated("vision.embed", reference=clipx.Decomposition(parts.values[:, 1:], parts.labels[1:]))


def test_on_the_demo_the_heads_with_the_largest_direct_effect_matter_more_than_random_heads():
    """The ground truth of benchmarks/head_ablation.py, smaller: heads ranked on one set of scenes, accuracy
    measured on another with the direct path of the top 3 mean-ablated, against 10 random draws of 3. (By
    total effect the top heads by direct effect are no surer than random ones: the benchmark reports it.)"""
    import random

    from clipx import shapes
    from clipx.model.inputs import text_embeds
    from clipx.demo.training import single_object_set

    demo = clipx.load("demo")
    selection, selection_labels = single_object_set(200, 40_000, demo)
    pixels_, labels = single_object_set(300, 41_000, demo)
    text = text_embeds(demo, shapes.class_names())
    ranked = [label for label, _ in clipx.sweep_heads(demo, selection, text, selection_labels, effect="direct",
                                                       progress=False).top(16)]
    parts, reference = clipx.decompose(demo, pixels_), clipx.decompose(demo, selection)

    def accuracy(heads):
        return (parts.ablated(heads, reference=reference).logits(demo, text).total().argmax(1) == labels).float().mean()

    assert (parts.logits(demo, text).total().argmax(1) == labels).float().mean() > 0.9
    draws = [random.Random(seed).sample(ranked, 3) for seed in range(10)]
    assert accuracy(ranked[:3]) < torch.stack([accuracy(heads) for heads in draws]).mean() - 0.1


def test_patching_effect_is_each_captions_logit_change_and_nothing_from_the_same_image(model):
    source, target = pixels(1, seed=11), pixels(3, seed=12)
    parts = ["vision.blocks.1.attn.head.0", "vision.blocks.1.mlp"]
    effect = clipx.patching_effect(model, parts, source, target, CAPTIONS)
    assert effect.shape == (3, 4)
    with clipx.patch(model, parts, source):
        patched = scores(model, target)
    assert_float32_close(effect, patched - scores(model, target), floor=float(patched.abs().max()))
    assert effect.abs().max() > 1e-3
    same = clipx.patching_effect(model, parts, target[1:2], target[1:2], CAPTIONS)
    assert same.abs().max() < 1e-5
