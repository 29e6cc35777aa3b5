"""A sparse autoencoder on the demo model, scored against the shapes scenes' ground truth.

    python -u benchmarks/sae_shapes.py [--d-sae 1024 --k 16 | --l1 3e-3] [--save clipx/data/shapes-clip-sae]

1. Train an SAE on `vision.blocks.3.hook_resid_post`'s patch tokens over training scenes
   (`shapes.ShapesDataset(split="train", seed=0)`); report explained variance, L0 and dead features.
2. Splice it in and report zero-shot accuracy over the 36 colour-shape captions on fresh scenes (the top
   caption names an object of the scene), clean and spliced. At the last block only the class token
   reaches the embedding, so splicing the patches must leave the logits unchanged (checked), and the
   informative number is for all positions, the class token included although the SAE never saw it.
3. For each of the 6 colours and 6 shapes, the single feature whose activation on a patch best predicts
   (by AUROC) that the patch lies on an object of that colour / shape, chosen on selection scenes
   (`split="train", seed=1`), then scored on fresh scenes (`split="test"`, never trained on).
   Labelling rule: a patch is positive when >= 50% of its 8x8 pixels lie in the masks of objects with
   that colour (shape), negative when none do; the patches in between are left out of the "AUROC"
   column and counted as negatives in "AUROC (all patches)".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import clipx
from clipx import shapes
from clipx.eval.metrics import auroc
from clipx.mech.sae.autoencoder import SparseAutoencoder
from clipx.mech.sae.attach import splice_effect
from clipx.mech.sae.features import feature_activations

HOOK = "vision.blocks.3.hook_resid_post"
CONCEPTS = [("colour", c) for c in shapes.COLORS] + [("shape", s) for s in shapes.SHAPES]
POSITIVE_SHARE = 0.5


def concept_coverage(dataset: shapes.ShapesDataset, patch: int = 8) -> torch.Tensor:
    """[n_scenes * n_patches, 12]: the share of each patch's pixels on objects of each concept (CONCEPTS order),
    patches in raster order as the model's tokens."""
    rows = []
    for i in range(len(dataset)):
        objects = dataset.scene(i).objects
        masks = []
        for kind, value in CONCEPTS:
            mask = torch.zeros(dataset.size, dataset.size)
            for o in objects:
                if (o.color if kind == "colour" else o.shape) == value:
                    mask = torch.maximum(mask, torch.from_numpy(o.mask).float())
            masks.append(mask)
        share = F.avg_pool2d(torch.stack(masks)[None], patch)[0]  # [12, grid, grid]
        rows.append(share.flatten(1).T)
    return torch.cat(rows)


def patch_features(model, sae: SparseAutoencoder, dataset: shapes.ShapesDataset) -> torch.Tensor:
    """[n_scenes * n_patches, d_sae]."""
    acts = feature_activations(model, sae, dataset, batch_size=128)
    return acts.reshape(-1, acts.shape[-1])


def concept_auroc(features: torch.Tensor, coverage: torch.Tensor, concept: int,
                  ambiguous_negative: bool = False) -> torch.Tensor:
    """AUROC of each feature column for one concept, under the labelling rule of the module's docstring."""
    share = coverage[:, concept]
    keep = torch.ones_like(share, dtype=torch.bool) if ambiguous_negative else (share >= POSITIVE_SHARE) | (share == 0)
    return torch.cat([auroc(chunk[keep], share[keep] >= POSITIVE_SHARE) for chunk in features.split(256, dim=1)])


def select_features(features: torch.Tensor, coverage: torch.Tensor) -> list[int]:
    """Per concept, the feature with the highest AUROC on these patches."""
    return [int(concept_auroc(features, coverage, c).argmax()) for c in range(len(CONCEPTS))]


def score_features(features: torch.Tensor, coverage: torch.Tensor, chosen: list[int]) -> list[tuple[float, float]]:
    """Per concept, (AUROC, AUROC with the ambiguous patches as negatives) of its chosen feature."""
    return [(float(concept_auroc(features[:, [f]], coverage, c)[0]),
             float(concept_auroc(features[:, [f]], coverage, c, ambiguous_negative=True)[0]))
            for c, f in enumerate(chosen)]


def zero_shot(model, sae: SparseAutoencoder, dataset: shapes.ShapesDataset, positions: str):
    """(clean accuracy, spliced accuracy, mean |logit change|, max |logit change|): a hit when the top caption
    names an object."""
    items = [dataset[i] for i in range(len(dataset))]
    pixel_values = torch.stack([p for p, _, _ in items])
    contents = torch.stack([c for _, _, c in items])
    effect = splice_effect(model, sae, pixel_values, shapes.class_names(), positions=positions)
    hits = [contents.gather(1, logits.argmax(1, keepdim=True)).mean().item() for logits in (effect.clean, effect.spliced)]
    return hits[0], hits[1], effect.change.abs().mean().item(), effect.change.abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--select-scenes", type=int, default=500)
    ap.add_argument("--eval-scenes", type=int, default=500)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=None, help="TopK SAE (default 16 when --l1 is not given)")
    ap.add_argument("--l1", type=float, default=None, help="ReLU SAE with this L1 coefficient")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None, help="write the SAE and its concept features here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from common import cpu_name  # benchmarks/common.py (with transformers), here so that tests can load this file

    print(f"CPU: {cpu_name()}, {args.threads} thread(s); torch {torch.__version__}")

    model = clipx.load("demo")
    train = shapes.ShapesDataset(args.train_scenes, seed=0, split="train")
    start = time.perf_counter()
    sae, stats = clipx.train_sae(model, HOOK, train, d_sae=args.d_sae, k=args.k, l1=args.l1, tied=args.tied,
                                 steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    config = sae.config
    sparsity = f"k={config.k}" if config.activation == "topk" else f"l1={config.l1}"
    print(f"\ntrained in {time.perf_counter() - start:.0f} s: {HOOK}, d_sae={config.d_sae}, {sparsity}, "
          f"tied={config.tied}, {args.steps} steps of {args.batch_size} tokens, {stats.n_tokens} patch tokens "
          f"from {args.train_scenes} scenes\n")
    print("| explained variance | L0 | dead features | resampled |")
    print("|---:|---:|---:|---:|")
    print(f"| {stats.explained_variance:.3f} | {stats.l0:.1f} | {stats.dead_fraction:.1%} "
          f"({round(stats.dead_fraction * config.d_sae)}) | {stats.resampled} |")

    fresh = shapes.ShapesDataset(args.eval_scenes, seed=0, split="test", with_contents=True)
    print(f"\nzero-shot over the 36 colour-shape captions, {args.eval_scenes} fresh scenes\n")
    print("| spliced positions | clean accuracy | spliced accuracy | mean abs logit change | max abs logit change |")
    print("|---|---:|---:|---:|---:|")
    for positions in ("patches", "all"):
        clean, spliced, mean_change, max_change = zero_shot(model, sae, fresh, positions)
        print(f"| {positions} | {clean:.3f} | {spliced:.3f} | {mean_change:.3f} | {max_change:.3f} |")

    select = shapes.ShapesDataset(args.select_scenes, seed=1, split="train")
    chosen = select_features(patch_features(model, sae, select), concept_coverage(select))
    scores = score_features(patch_features(model, sae, fresh), concept_coverage(fresh), chosen)
    print(f"\nconcept features: chosen on {args.select_scenes} selection scenes, AUROC on {args.eval_scenes} fresh "
          f"scenes (patch positive at >= {POSITIVE_SHARE:.0%} coverage)\n")
    print("| concept | feature | AUROC | AUROC (all patches) |")
    print("|---|---:|---:|---:|")
    for (kind, value), feature, (score, score_all) in zip(CONCEPTS, chosen, scores):
        print(f"| {value} ({kind}) | {feature} | {score:.3f} | {score_all:.3f} |")
    passed = sum(score >= 0.9 for score, _ in scores)
    print(f"\n{passed} of {len(CONCEPTS)} concepts at AUROC >= 0.9 "
          f"(colours {sum(s >= 0.9 for s, _ in scores[:6])}/6, shapes {sum(s >= 0.9 for s, _ in scores[6:])}/6)")

    if args.save:
        sae.save(args.save)
        concepts = {value: {"kind": kind, "feature": f, "auroc": round(s, 4)}
                    for (kind, value), f, (s, _) in zip(CONCEPTS, chosen, scores)}
        (args.save / "concepts.json").write_text(json.dumps(concepts, indent=2) + "\n")
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
