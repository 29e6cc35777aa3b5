"""Ground truth for the head tools on the demo model: do the heads with the largest direct effect on the
correct caption's logit matter more for zero-shot accuracy than heads drawn at random?

    python benchmarks/head_ablation.py [--selection 500 --scenes 1000 --seeds 20]

Single-object held-out scenes, scored against all 36 colour x shape captions. Heads are ranked on one set
of scenes (the selection set, also the reference whose mean replaces an ablated head) and accuracy is
measured on another. Two ablations:
- direct path (TextSpan's protocol): the k heads' contributions to the embedding replaced by their mean,
  later layers still seeing the clean outputs (`Decomposition.ablated`);
- total effect: the heads' outputs replaced by their mean for every later layer too (`clipx.ablate`).
Random draws: the same k, `--seeds` draws, mean and standard deviation.
"""

from __future__ import annotations

import argparse
import random

import torch

import clipx
from clipx import shapes
from clipx.model.inputs import encode_images, text_embeds
from clipx.mech.sweep import image_logits
from clipx.demo.training import single_object_set
from common import cpu_name


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.flatten().argsort().argsort().float() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--selection", type=int, default=500)
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    args = ap.parse_args()
    torch.manual_seed(0)

    model = clipx.load(args.model)
    selection, selection_labels = single_object_set(args.selection, 40_000, model)
    pixels, labels = single_object_set(args.scenes, 41_000, model)
    text = text_embeds(model, shapes.class_names())  # unit-length already
    with torch.no_grad(), model.recording("vision.blocks.*.attn.hook_z") as reference:
        encode_images(model, selection)  # one recording of the selection serves every total-effect ablation

    tables = {effect: clipx.sweep_heads(model, selection, text, selection_labels, effect=effect, mode="mean",
                                        progress=False) for effect in ("direct", "total")}
    for table in tables.values():
        print(f"\n{table}\n")
    print(f"Spearman rank correlation of the two tables over {tables['direct'].values.numel()} heads: "
          f"{spearman(tables['direct'].values, tables['total'].values):+.2f}")

    n_heads = tables["direct"].values.numel()
    all_heads = [tables["direct"].label(i // tables["direct"].values.shape[1], i % tables["direct"].values.shape[1])
                 for i in range(n_heads)]
    ranked = {effect: [label for label, _ in table.top(n_heads)] for effect, table in tables.items()}
    moved = sorted(all_heads, key=lambda h: ranked["direct"].index(h) - ranked["total"].index(h), reverse=True)[:3]
    print("\nHeads ranked higher by total than by direct effect (rank by direct -> by total, of "
          f"{n_heads}):")
    for head in moved:
        layer, index = divmod(all_heads.index(head), tables["direct"].values.shape[1])
        print(f"  {head}: {ranked['direct'].index(head) + 1} -> {ranked['total'].index(head) + 1} "
              f"(direct {tables['direct'].values[layer, index]:+.3f}, total {tables['total'].values[layer, index]:+.3f})")

    parts = clipx.decompose(model, pixels)
    reference_parts = clipx.decompose(model, selection)

    def direct(heads: list[str]) -> float:
        return accuracy(parts.ablated(heads, "mean", reference_parts).logits(model, text).total(), labels)

    def total(heads: list[str]) -> float:
        with clipx.ablate(model, heads, "mean", reference):
            return accuracy(image_logits(model, pixels, text), labels)

    clean = accuracy(parts.logits(model, text).total(), labels)
    rng = random.Random(0)
    print(f"\nZero-shot accuracy on {args.scenes} single-object scenes (clean {clean:.3f}), "
          f"mean-ablating k heads; random: mean ± sd over {args.seeds} draws\n")
    print("| k | path | top-k by direct effect | top-k by total effect | random k |")
    print("|---|---|---:|---:|---:|")
    for k in args.ks:
        draws = [rng.sample(all_heads, k) for _ in range(args.seeds)]
        for path, run in (("direct", direct), ("total", total)):
            random_scores = torch.tensor([run(heads) for heads in draws])
            print(f"| {k} | {path} | {run(ranked['direct'][:k]):.3f} | {run(ranked['total'][:k]):.3f} | "
                  f"{random_scores.mean():.3f} ± {random_scores.std():.3f} |")
    print(f"\ntop-5 by direct effect: {', '.join(ranked['direct'][:5])}")
    print(f"top-5 by total effect:  {', '.join(ranked['total'][:5])}")
    print(f"CPU: {cpu_name()}")


if __name__ == "__main__":
    main()
