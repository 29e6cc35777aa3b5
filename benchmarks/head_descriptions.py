"""TextSpan on the demo model: every vision head described with the default shapes caption bank, then the
heads most about colour and most about shape.

    python benchmarks/head_descriptions.py [--scenes 300 --seed 20000 --model demo --protocol clipx]

Scenes are fresh: integer seeds from 20000 (training draws scenes by (seed, index, split) tuples). A head's
colour share is the share of its output variance (over the scenes) in the span of the 6 colour-word
captions ("red", ...), its shape share that in the span of the 6 shape words ("circle", ...), both as
TextSpan sees captions (normalised, centred over the whole bank). The most colour-related head has the
largest colour share less shape share, the most shape-related the largest shape share less colour share.
With `--protocol paper` the heads are described as the paper's code does, and the script prints how many
heads' first caption the two protocols share.
"""

from __future__ import annotations

import argparse

import torch

import clipx
from clipx import shapes
from clipx.model.inputs import text_embeds
from clipx.mech.textspan import text_directions, variance_share
from common import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20_000)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--protocol", default="clipx", choices=["clipx", "paper"])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}")

    model = clipx.load(args.model)
    images = [shapes.scene(args.seed + k, n_objects=1 + k % 3).image for k in range(args.scenes)]
    parts = clipx.decompose(model, images)
    bank = shapes.caption_bank()
    described = clipx.describe_heads(model, parts if args.protocol == "clipx" else images, bank, n_descriptions=3,
                                     protocol=args.protocol)
    print(f"{args.model}: {args.scenes} scenes, {len(bank)} captions; each head's top 3 (share of its variance), "
          f"protocol {args.protocol!r}\n")
    for d in described:
        print(d)

    if args.protocol == "paper":
        ours = clipx.describe_heads(model, parts, bank, n_descriptions=3)
        same = sum(a.indices[0] == b.indices[0] for a, b in zip(ours, described))
        print(f"\nfirst caption the same under both protocols: {same}/{len(described)} heads")

    directions = text_directions(text_embeds(model, bank))
    groups = {"colour": list(shapes.COLORS), "shape": shapes.SHAPES}
    subspaces = {g: directions[[bank.index(word) for word in words]] for g, words in groups.items()}
    outputs = parts.heads().flatten(1, 2)  # [n_images, n_layers * n_heads, dim], in `described` order
    shares = {g: torch.tensor([variance_share(outputs[:, i], s) for i in range(len(described))])
              for g, s in subspaces.items()}
    dim = directions.shape[1]
    print(f"\nshare of each head's variance in the span of the 6 colour / 6 shape words "
          f"(a random 6-dim subspace of the {dim}-dim joint space takes {6 / dim:.1%} on average)")
    for i, d in enumerate(described):
        print(f"  {d.label:30s} colour {shares['colour'][i]:6.1%}   shape {shares['shape'][i]:6.1%}")
    for group, other in (("colour", "shape"), ("shape", "colour")):
        best = int((shares[group] - shares[other]).argmax())
        print(f"\nmost {group}-related: {described[best].label} ({group} {shares[group][best]:.1%}, "
              f"{other} {shares[other][best]:.1%})")
        print(described[best])


if __name__ == "__main__":
    main()
