"""Every explanation method scored against ground truth on fresh shapes scenes, for each model side by
side (by default both demo models: CLIP's architecture and SigLIP's), as a resumable run (`clipx.runs`).

    python benchmarks/shapes_eval.py [--scenes 200 --seed 10000 --models demo demo-siglip]
        [--splits two three touching small same-colour same-shape] [--rows default "relevance (all layers)" ...]
        [--out DIR]
    torchrun --standalone --nproc_per_node=2 benchmarks/shapes_eval.py --scenes 10000 --out DIR

For each scene the caption names one of its objects ("a red circle"); each method explains that pair.
Localisation: pointing game (hit within 5% of the image size of the named object's mask), energy
pointing game, discrimination (energy on the named object vs another). Faithfulness: deletion and
insertion AUC of the caption's logit (blur baseline; lower deletion and higher insertion are better).
Two maps that know nothing give the floor: a random map and a centre prior.

Splits: `two` (two objects apart, the full table), and harder ones scored by the pointing game: `three`
(three objects), `touching` (three objects, each touching another), `small` (two objects of 8-10 px),
`same-colour` / `same-shape` (three objects, the last repeating the named one's colour with another shape,
or its shape in another colour: only the pair names the target). Every (split, scene) is an item of one
run in `--out` (a temp folder if not given): killed, the same command resumes it; under torchrun each
process scores its share and rank 0 prints the tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from scoring import BASELINES, ROWS, baseline_maps, markdown_table, rows_named

import clipx
from clipx import metrics, shapes
from clipx.runs.runner import init_distributed, run

COLUMNS = ["pointing", "energy", "discrimination", "deletion AUC", "insertion AUC"]


SPLITS = {"two": {"n_objects": 2}, "three": {"n_objects": 3}, "touching": {"n_objects": 3, "touching": True},
          "small": {"n_objects": 2, "min_size": 0.0625, "max_size": 0.08},
          "same-colour": {"n_objects": 3, "distractor": "colour"},
          "same-shape": {"n_objects": 3, "distractor": "shape"}}


def scene_of(split: str, seed: int, k: int):
    """The k-th scene of a split, its named object and another one (for a distractor split, the first
    object and the one repeating its colour or shape)."""
    options = SPLITS[split]
    scene = shapes.scene(seed=seed + k, **options)
    n = len(scene.objects)
    if "distractor" in options:
        return scene, scene.objects[0], scene.objects[-1]
    return scene, scene.objects[k % n], scene.objects[(k + 1) % n]


def score_scene(model, rows: list, split: str, seed: int, k: int, curve_steps: int,
                full: bool) -> dict[str, torch.Tensor]:
    """The scores of every row (row name, method, options) and baseline on one scene, as {"row/column": value};
    the curves only for the full table (`full`)."""
    scene, target, other = scene_of(split, seed, k)
    caption = shapes.describe(target)
    pixel_values = model.preprocess([scene.image])
    logit = metrics.caption_logit(model, caption)
    maps = {}
    for name, method, options in rows:
        maps[name] = clipx.explain(model, [scene.image], [caption], method=method, **options).image[0, 0]
    maps.update(baseline_maps(tuple(next(iter(maps.values())).shape), seed + k))
    scores = {}
    for name, saliency in maps.items():
        scores[f"{name}/pointing"] = float(metrics.pointing_game(saliency, target.mask))
        if full:
            scores[f"{name}/energy"] = metrics.energy_pointing_game(saliency, target.mask)
            scores[f"{name}/discrimination"] = metrics.discrimination(saliency, target.mask, other.mask)
            with torch.no_grad():
                scores[f"{name}/deletion AUC"] = metrics.deletion_curve(logit, pixel_values, saliency,
                                                                        steps=curve_steps).auc
                scores[f"{name}/insertion AUC"] = metrics.insertion_curve(logit, pixel_values, saliency,
                                                                          steps=curve_steps).auc
    return {key: torch.tensor(float(value)) for key, value in scores.items()}


def score(model, name: str, args, folder: Path) -> dict[str, dict[str, float]]:
    """{split: {"method/column": mean over its scenes}}, the scenes run as one resumable run in `folder`."""
    items = [[split, k] for split in args.splits for k in range(args.scenes)]
    rows = rows_named(args.rows)
    config = {"task": "shapes_eval", "model": name, "fingerprint": model.fingerprint(), "seed": args.seed,
              "rows": [[n, o] for n, _, o in rows], "curve_steps": args.curve_steps}

    def process(batch):
        return [score_scene(model, rows, split, args.seed, k, args.curve_steps, full=split == "two")
                for split, k in batch]

    result = run(folder, items, process, config, shard_size=50, batch_size=1)
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} scenes failed, the first: {result.errors[0]}")
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (split, _), scores, _ in result.results():
        for key, value in scores.items():
            sums[split][key].append(float(value))
    return {split: {key: sum(v) / len(v) for key, v in columns.items()} for split, columns in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200, help="scenes per split")
    ap.add_argument("--seed", type=int, default=10_000, help="first scene seed (training never sees these)")
    ap.add_argument("--models", nargs="+", default=["demo", "demo-siglip"])
    ap.add_argument("--splits", nargs="+", default=["two"], choices=list(SPLITS))
    ap.add_argument("--rows", nargs="+", default=[n for n, _ in ROWS], metavar="ROW",
                    help="the rows to score, default all: " + ", ".join(n for n, _ in ROWS))
    ap.add_argument("--curve-steps", type=int, default=16)
    ap.add_argument("--out", type=Path, help="run folder (one per model inside); rerun to resume")
    args = ap.parse_args()
    rows_named(args.rows)  # an unknown row fails before any model loads
    init_distributed()

    with tempfile.TemporaryDirectory() as temp:
        out = args.out or Path(temp)
        results = {name: score(clipx.load(name), name, args, out / name.replace("/", "--")) for name in args.models}
    if int(os.environ.get("RANK", "0")) != 0:
        return
    rows = args.rows + list(BASELINES)
    models = " / ".join(args.models)
    if "two" in args.splits:
        print(f"\n{args.scenes} two-object scenes (seeds {args.seed}..{args.seed + args.scenes - 1}); each cell: {models}\n")
        print(markdown_table(["method", *COLUMNS], [
            [method] + [" / ".join(f"{results[m]['two'][f'{method}/{c}']:.3f}" for m in args.models) for c in COLUMNS]
            for method in rows]))
    print(f"\npointing game per split, {args.scenes} scenes each; each cell: {models}\n")
    print(markdown_table(["method", *args.splits], [
        [method] + [" / ".join(f"{results[m][split][f'{method}/pointing']:.3f}" for m in args.models)
                    for split in args.splits]
        for method in rows]))


if __name__ == "__main__":
    main()
