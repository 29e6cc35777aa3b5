"""Every explanation method scored against ground truth on fresh two-object shapes scenes, for each
model side by side (by default both demo models: CLIP's architecture and SigLIP's).

    python benchmarks/shapes_eval.py [--scenes 200 --seed 10000 --models demo demo-siglip]

For each scene the caption names one of its two objects ("a red circle"); each method explains
that pair. Localisation: pointing game (hit within 5% of the image size of the named object's
mask), energy pointing game, discrimination (energy on the named object vs the other).
Faithfulness: deletion and insertion AUC of the caption's logit (blur baseline; lower deletion
and higher insertion are better). Two maps that know nothing give the floor: a random map and a
centre prior.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from tqdm import tqdm

import clipx
from clipx import metrics, shapes

ROWS = [("relevance", {}), ("relevance (all layers)", {"start_layer": 0}), ("rollout", {}),
        ("attention", {}), ("gradcam", {}), ("legrad", {}), ("similarity", {}),
        ("similarity (maskclip)", {"variant": "maskclip"}), ("integrated_gradients", {"n_steps": 16}),
        ("occlusion", {}), ("rise", {})]
BASELINES = ("random map", "centre prior")


COLUMNS = ["pointing", "energy", "discrimination", "deletion AUC", "insertion AUC"]


def score(model, args) -> dict[str, dict[str, list[float]]]:
    """Every method's and baseline's scores on the scenes, per column."""
    generator = torch.Generator().manual_seed(args.seed)
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k in tqdm(range(args.scenes), desc="scenes"):
        scene = shapes.scene(seed=args.seed + k, n_objects=2)
        target, other = scene.objects[k % 2], scene.objects[1 - k % 2]
        caption = shapes.describe(target)
        pixel_values = model.preprocess([scene.image])
        logit = metrics.caption_logit(model, caption)

        maps = {}
        for name, options in ROWS:
            method = name.split(" (")[0]
            maps[name] = clipx.explain(model, [scene.image], [caption], method=method, **options).image[0, 0]
        grid = maps["relevance"].shape
        maps["random map"] = torch.rand(grid, generator=generator)
        maps["centre prior"] = metrics.centre_prior(grid)
        for name, saliency in maps.items():
            row = results[name]
            row["pointing"].append(float(metrics.pointing_game(saliency, target.mask)))
            row["energy"].append(metrics.energy_pointing_game(saliency, target.mask))
            row["discrimination"].append(metrics.discrimination(saliency, target.mask, other.mask))
            with torch.no_grad():
                row["deletion AUC"].append(metrics.deletion_curve(logit, pixel_values, saliency,
                                                                  steps=args.curve_steps).auc)
                row["insertion AUC"].append(metrics.insertion_curve(logit, pixel_values, saliency,
                                                                    steps=args.curve_steps).auc)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=10_000, help="first scene seed (training never sees these)")
    ap.add_argument("--models", nargs="+", default=["demo", "demo-siglip"])
    ap.add_argument("--curve-steps", type=int, default=16)
    args = ap.parse_args()

    results = {}
    for name in args.models:
        model = clipx.load(name)
        results[name] = score(model, args)

    print(f"\n{args.scenes} two-object scenes (seeds {args.seed}..{args.seed + args.scenes - 1}); "
          f"each cell: {' / '.join(args.models)}\n")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for method in [n for n, _ in ROWS] + list(BASELINES):
        cells = [" / ".join(f"{sum(results[m][method][c]) / len(results[m][method][c]):.3f}" for m in args.models)
                 for c in COLUMNS]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
