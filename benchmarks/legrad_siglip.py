"""LeGrad's SigLIP path (`variant="probe"`) against the authors' code
(WalBouss/LeGrad's `compute_legrad_siglip`, written out on transformers' SiglipModel in
tests/siglip_head.py: `legrad-torch` needs open_clip and timm, which this environment does not carry) on the
same weights: the SigLIP demo saved with `save_pretrained` and loaded by transformers, on shapes scenes.

    python benchmarks/legrad_siglip.py [--scenes 4 --figure legrad-siglip.png]

Prints the largest difference per scene; the figure shows, per scene, the image, the authors' map, clipx's,
their difference (scale 0..1e-5) and, for comparison, clipx's CLIP path (`variant="blocks"`) and the
probe without the neutral prompt's mask.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib
import transformers

import clipx
from clipx import shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from siglip_head import legrad_authors  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--figure", type=Path, default=Path("legrad-siglip.png"))
    args = ap.parse_args()
    model = clipx.load("demo-siglip")
    folder = Path(tempfile.mkdtemp())
    model.save_pretrained(folder)
    hf = transformers.SiglipModel.from_pretrained(folder, attn_implementation="eager").eval()
    n = model.vision.n_layers
    layers = range(n - 2, n)  # legrad's default start_layer=-2
    neutral = model.tokenize(["a photo of a"])
    fig, axes = plt.subplots(args.scenes, 6, figsize=(13, 2.3 * args.scenes), squeeze=False)
    titles = ["scene", "authors' code", "clipx probe", "|difference|", "clipx blocks", "probe, no mask"]
    for k in range(args.scenes):
        scene = shapes.scene(seed=args.seed + k, n_objects=2)
        caption = shapes.describe(scene.objects[0])
        px = model.preprocess([scene.image])
        ref = legrad_authors(hf, px, model.tokenize([caption]), layers, neutral)[0, 0]
        maps = {name: clipx.explain(model, px, [caption], method="legrad", **options).image[0, 0]
                for name, options in [("probe", {"variant": "probe"}), ("blocks", {"variant": "blocks"}),
                                      ("plain", {"variant": "probe", "correction": False})]}
        grid = maps["probe"].shape
        diff = (maps["probe"].flatten() - ref).abs()
        masked = int(((maps["probe"] == 0) & (maps["plain"] > 0)).sum())
        print(f"scene {k} '{caption}': max |clipx - authors| = {diff.max().item():.2e}, "
              f"patches the neutral prompt masks: {masked} of {ref.numel()}")
        row = [scene.image, ref.view(grid), maps["probe"], diff.view(grid), maps["blocks"], maps["plain"]]
        for ax, picture, title in zip(axes[k], row, titles):
            if picture is scene.image:
                ax.imshow(picture)
                ax.set_title(caption, fontsize=9)
            else:
                ax.imshow(picture, cmap="inferno", vmin=0, vmax=1e-5 if title == "|difference|" else 1)
                ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.figure, dpi=80)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
