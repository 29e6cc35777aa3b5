"""Artifact-robust maps on shapes scenes: the high-norm token detector's findings per model, and what
excluding high-norm patches (attention-based methods) and subtracting a neutral caption's map
(caption-dependent methods) do to the pointing game.

    python benchmarks/artifacts.py [--scenes 100 --split two --ratio 3 --neutral "" --models demo demo-siglip vit-b-16]

Models: the two demo models, and `vit-b-16`, random ViT-B/16 weights (224 px, 14x14 patches) on the same
scenes upsampled. Each scene's caption names one of its objects (`shapes_eval.scene_of`); a hit is the map's
maximum on that object (5% tolerance).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from common import VIT_B_32, cpu_name, random_checkpoint
from scoring import markdown_table, rows_named
from shapes_eval import SPLITS, scene_of
from tqdm.auto import tqdm

import clipx
from clipx import metrics, shapes
from clipx.explain import method_options
from clipx.explain.core import CAPTION_BLIND

ROWS = rows_named(["relevance (all layers)", "rollout", "attention", "legrad", "gradcam", "integrated_gradients"])


def variants(ratio: float, neutral: str):
    """(label, method, options): every row as it is, and with each option that applies to its method:
    exclude_high_norm where the method takes it (the attention-based ones), neutral= where its image map
    depends on the caption."""
    for label, method, options in ROWS:
        yield label, method, options
        if "exclude_high_norm" in method_options(method):
            yield f"{label}, high-norm excluded", method, {**options, "exclude_high_norm": ratio}
        if method not in CAPTION_BLIND:
            yield f"{label}, neutral subtracted", method, {**options, "neutral": neutral}


def load(name: str, folder: Path) -> clipx.CLIP:
    if name != "vit-b-16":
        return clipx.load(name)
    shapes_b16 = copy.deepcopy(VIT_B_32)
    shapes_b16["vision_config"]["patch_size"] = 16
    random_checkpoint(folder, shapes_b16)
    return clipx.load(folder)


def evaluate(model: clipx.CLIP, args) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """(pointing game per row, mean largest norm / median per layer, share of scenes with a high-norm patch
    per layer)."""
    hits: dict[str, list[float]] = {}
    largest, flagged = [], []
    for k in tqdm(range(args.scenes), desc="scenes"):
        scene, target, _ = scene_of(args.split, args.seed, k)
        caption = shapes.describe(target)
        found = clipx.high_norm_tokens(model, [scene.image], ratio=args.ratio)
        largest.append(found.relative[:, 0].flatten(1).amax(1))
        flagged.append(found.mask[:, 0].flatten(1).any(1).float())
        for label, method, options in variants(args.ratio, args.neutral):
            saliency = clipx.explain(model, [scene.image], [caption], method=method, **options).image[0, 0]
            hits.setdefault(label, []).append(float(metrics.pointing_game(saliency, target.mask)))
    pointing = {label: sum(v) / len(v) for label, v in hits.items()}
    return pointing, torch.stack(largest).mean(0), torch.stack(flagged).mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=10_000, help="first scene seed (training never sees these)")
    ap.add_argument("--split", default="two", choices=list(SPLITS))
    ap.add_argument("--ratio", type=float, default=3.0, help="high-norm: above this many times the median patch")
    ap.add_argument("--neutral", default="", help="the neutral caption (default: the empty caption)")
    ap.add_argument("--models", nargs="+", default=["demo", "demo-siglip", "vit-b-16"])
    args = ap.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            results[name] = evaluate(load(name, Path(folder)), args)
    print(f"\n{cpu_name()}; {args.scenes} '{args.split}' scenes (seeds {args.seed}..), high-norm above "
          f"{args.ratio:g} x the median patch, neutral caption {args.neutral!r}\n")
    print("largest patch norm / median, per layer (mean over scenes); share of scenes with a high-norm patch\n")
    for name, (_, largest, flagged) in results.items():
        print(f"- {name}: " + " ".join(f"{v:.2f}" for v in largest.tolist())
              + f"; flagged in {', '.join(f'{v:.2f}' for v in flagged.tolist())}")
    labels = [label for label, _, _ in variants(args.ratio, args.neutral)]
    print("\npointing game; each cell: " + " / ".join(results) + "\n")
    print(markdown_table(["map", "pointing"], [[label, " / ".join(f"{results[m][0][label]:.3f}" for m in results)]
                                               for label in labels]))


if __name__ == "__main__":
    main()
