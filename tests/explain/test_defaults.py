"""The default explanation: chosen by the model's readout, it points at the named object on fresh scenes at
least as often as the alternatives, and the Explanation records the method and every option it ran with."""

import pytest
import torch

import clipx
from clipx import metrics, shapes
from clipx.explain import default_method, method_options

SCENES = range(10_000, 10_040)  # fresh two-object scenes: the demo models never trained on these seeds


@pytest.fixture(scope="module")
def demos():
    return {name: clipx.load(name) for name in ("demo", "demo-siglip")}


def _hits(model, scenes=SCENES, **how) -> int:
    """On how many scenes the map's peak lies on the object the caption names (benchmarks/shapes_eval.py's
    first scenes of its `two` split)."""
    hits = 0
    for seed in scenes:
        scene = shapes.scene(seed=seed, n_objects=2)
        target = scene.objects[seed % 2]
        saliency = clipx.explain(model, [scene.image], [shapes.describe(target)], **how).image[0, 0]
        hits += int(metrics.pointing_game(saliency, target.mask))
    return hits


def test_the_default_method_follows_the_readout(demos):
    assert default_method(demos["demo"]) == "relevance"  # a class token
    assert default_method(demos["demo-siglip"]) == "integrated_gradients"  # an attention-pooling head


def test_the_clip_demos_default_points_better_than_the_last_layer_alone(demos):
    """benchmarks/shapes_eval.py on 200 scenes: 0.930 against 0.715; here the first 40."""
    model = demos["demo"]
    default, last = _hits(model), _hits(model, method="relevance", start_layer=-1)
    assert default >= 0.85 * len(SCENES) and default > last


def test_the_siglip_demos_default_points_better_than_relevance(demos):
    """benchmarks/shapes_eval.py on 200 scenes: 0.960 against 0.620 for relevance through all layers; here
    the first 20 (integrated gradients costs 32 passes a map)."""
    model, scenes = demos["demo-siglip"], SCENES[:20]
    default, relevance = _hits(model, scenes), _hits(model, scenes, method="relevance")
    assert default >= 0.85 * len(scenes) and default > relevance


@pytest.mark.parametrize("name", ["demo", "demo-siglip"])
def test_the_recorded_options_are_the_ones_that_ran(demos, name):
    """Every option, defaults included: running them again by hand gives the same maps."""
    model = demos[name]
    scene = shapes.scene(seed=10_000, n_objects=2)
    exp = clipx.explain(model, [scene.image], ["a red circle"])
    assert exp.method == default_method(model) and exp.options == method_options(exp.method)
    again = clipx.explain(model, [scene.image], ["a red circle"], method=exp.method, **exp.options)
    assert torch.equal(again.image, exp.image) and torch.equal(again.text, exp.text)
    given = clipx.explain(model, [scene.image], ["a red circle"], method="relevance", start_layer=-1, neutral="")
    assert given.options == {**method_options("relevance"), "start_layer": -1, "neutral": ""}


def test_method_options_with_given_ones_are_those_a_call_runs_with():
    assert method_options("relevance", {"start_layer": -2}) == {"start_layer": -2, "start_layer_text": -1,
                                                                 "exclude_high_norm": None}
    with pytest.raises(TypeError, match="method 'relevance' takes no option 'layer'; its options are: start_layer=0"):
        method_options("relevance", {"layer": 1})


def test_a_run_records_the_method_and_every_option(demos, tmp_path):
    """So that a run begun under other defaults (relevance's start layer was -1) is not resumed with new ones."""
    images = [shapes.scene(seed=seed, n_objects=2).image for seed in SCENES[:2]]
    paths = []
    for k, image in enumerate(images):
        image.save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    run = clipx.explain_dataset(demos["demo-siglip"], paths, tmp_path / "run", ["a red circle"], progress=False,
                                n_steps=4)
    assert run.config["method"] == "integrated_gradients"
    assert run.config["options"] == {**method_options("integrated_gradients"), "n_steps": 4}
    with pytest.raises(TypeError, match="takes no option 'start_layer'"):  # before any item runs
        clipx.explain_dataset(demos["demo-siglip"], paths, tmp_path / "other", ["a red circle"], start_layer=0)
    assert not (tmp_path / "other").exists()
