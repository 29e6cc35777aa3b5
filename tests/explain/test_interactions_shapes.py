"""benchmarks/interactions_shapes.py's measures on cases whose answer is known: token x patch cubes written from
the scenes' own masks (each object's words light up its patches) pass every object, the same cubes with the
objects' words swapped pass none, and words are found left to right where both objects share a shape."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paths import ROOT

import clipx
from clipx import shapes

SEEDS = range(10_000, 10_006)


@pytest.fixture(scope="module")
def bench(request):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its sibling imports, as `python benchmarks/...` has
    request.addfinalizer(lambda: sys.path.remove(str(ROOT / "benchmarks")))
    spec = importlib.util.spec_from_file_location("interactions_shapes", ROOT / "benchmarks" / "interactions_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return clipx.load("demo")


def mask_cube(bench, scene, tokens, swap=False):
    """[L, 8, 8]: each object's colour and shape rows hold its patch coverage (the other object's where `swap`)."""
    cube = torch.zeros(len(tokens), 8, 8)
    positions = bench.word_positions(tokens, scene.objects)
    for k, obj in enumerate(scene.objects):
        source = scene.objects[1 - k] if swap else obj
        cover = F.adaptive_avg_pool2d(torch.as_tensor(source.mask, dtype=torch.float32)[None, None], (8, 8))[0, 0]
        cube[positions[k]] = cover
    return cube


@pytest.mark.parametrize("swap", [False, True])
def test_mask_cubes_pass_every_object_and_swapped_ones_none(bench, demo, swap):
    passed = []
    for seed in SEEDS:
        scene = bench.scene_of("two", seed, 0)[0]
        caption = bench.pair_caption(scene)
        assert caption == f"{shapes.describe(scene.objects[0])} and {shapes.describe(scene.objects[1])}"
        ids = demo.tokenize([caption]).input_ids
        tokens = demo.tokenizer.tokens(ids, torch.ones_like(ids))[0]
        spans, boxes = bench.score_scene(mask_cube(bench, scene, tokens, swap), tokens, scene)
        passed += spans + boxes
    assert len(passed) == 4 * len(SEEDS)
    assert all(passed) if not swap else not any(passed)


def test_words_are_found_left_to_right_and_a_missing_word_is_refused(bench):
    mask = np.zeros((64, 64), dtype=bool)
    red, blue = (shapes.SceneObject("circle", c, mask, (0, 0, 1, 1), (0.5, 0.5)) for c in ("red", "blue"))
    tokens = ["<|startoftext|>", "a</w>", "Red</w>", "circle</w>", "and</w>", "a</w>", "▁blue", "circle</w>", "!"]
    assert bench.word_positions(tokens, [red, blue]) == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="'blue' is not one token"):
        bench.word_positions(tokens[:6], [red, blue])


def test_an_object_smaller_than_half_a_patch_gets_the_patch_it_covers_most(bench):
    mask = np.zeros((64, 64), dtype=bool)
    mask[9:12, 17:19] = True  # patch (1, 2) of an 8 x 8 grid of 8-px patches
    box = bench.patch_mask(mask, (8, 8))
    assert box.sum() == 1 and box[1, 2]
    mask[0:64, 0:8] = True  # a full column of patches
    assert bench.patch_mask(mask, (8, 8)).nonzero().tolist() == [[r, 0] for r in range(8)]
