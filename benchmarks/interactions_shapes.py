"""Ground truth for token x patch maps on fresh two-object shapes scenes (issue 28, step 4): `clipx.interactions`
at a few blocks beside `similarity`'s token maps, on the demo models.

    python benchmarks/interactions_shapes.py [--scenes 200 --seed 10000 --models demo demo-siglip
        --layers -1 -2 -3 --n-steps 10]

Each scene is shapes_eval.py's `two` split (the same seeds give the same scenes; the demo models never trained
on them), captioned with both objects: "a red circle and a blue square". For each object:
- span pointing game: the region map of its words (its colour and shape tokens, summed) peaks on it
  (`metrics.pointing_game`, the tolerance shapes_eval uses);
- box-to-words: the token strip of its patches (those it covers at least half of; the one it covers most where
  none) ranks both its own words above both of the other object's.
Each cell is the share of the 2 x scenes objects that pass; a layer k row interpolates the residual stream
entering block k of both towers (-1: the last block, the authors' choice).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from scoring import markdown_table
from shapes_eval import scene_of

import clipx
from clipx import metrics, shapes

# what tokenizers put around a word: BPE's end-of-word mark, GPT-2's and SentencePiece's leading space
WORD_MARKS = ("</w>", "Ġ", "▁")


def pair_caption(scene: shapes.Scene) -> str:
    """"a red circle and a blue square": both objects, in the scene's order."""
    return " and ".join(shapes.describe(o) for o in scene.objects)


def word_positions(tokens: list[str], objects: list[shapes.SceneObject]) -> list[list[int]]:
    """Per object, the token positions of its colour and shape words, read left to right (the caption names
    the objects in order, so a shape two objects share goes to each in turn)."""
    words = [_word(t) for t in tokens]
    positions, at = [], 0
    for obj in objects:
        found = []
        for word in (obj.color, obj.shape):
            try:
                at = words.index(word, at)
            except ValueError:
                raise ValueError(f"the word {word!r} is not one token of {tokens}: this measure needs a "
                                 "tokenizer that keeps colour and shape words whole") from None
            found.append(at)
            at += 1
        positions.append(found)
    return positions


def _word(token: str) -> str:
    for mark in WORD_MARKS:
        token = token.replace(mark, "")
    return token.strip().lower()


def patch_mask(mask, grid: tuple[int, int]) -> torch.Tensor:
    """[grid_h, grid_w] the patches an object covers at least half of (the one it covers most where none)."""
    cover = F.adaptive_avg_pool2d(torch.as_tensor(mask, dtype=torch.float32)[None, None], grid)[0, 0]
    return cover >= 0.5 if bool((cover >= 0.5).any()) else cover == cover.max()


def span_hit(cube: torch.Tensor, positions: list[int], mask) -> bool:
    """cube [L, grid_h, grid_w]: does the region map of the tokens at `positions` peak on the object?"""
    return bool(metrics.pointing_game(cube[positions].sum(0), mask))


def box_hit(cube: torch.Tensor, box: torch.Tensor, own: list[int], other: list[int]) -> bool:
    """Does the token strip of the patches in `box` rank every `own` word above every `other` one?"""
    strip = cube[:, box].sum(-1)
    return bool(strip[own].min() > strip[other].max())


def score_scene(cube: torch.Tensor, tokens: list[str], scene: shapes.Scene) -> tuple[list[bool], list[bool]]:
    """(span hits, box hits), one of each per object, of one scene's token x patch cube [L, grid_h, grid_w]."""
    objects = scene.objects
    positions = word_positions(tokens, objects)
    spans, boxes = [], []
    for k, obj in enumerate(objects):
        others = [p for j, words in enumerate(positions) if j != k for p in words]
        spans.append(span_hit(cube, positions[k], obj.mask))
        boxes.append(box_hit(cube, patch_mask(obj.mask, tuple(cube.shape[1:])), positions[k], others))
    return spans, boxes


def cubes(model, images: list, captions: list[str], row: tuple[str, int | None], n_steps: int) -> torch.Tensor:
    """[n, L, grid_h, grid_w] image i with caption i's token x patch cube, by interactions at a block or similarity."""
    method, layer = row
    if method == "similarity":
        maps = clipx.explain(model, images, captions, method="similarity").token_maps
    else:
        maps = clipx.interactions(model, images, captions, text_layer=layer, image_layer=layer,
                                  n_steps=n_steps).values
    return maps[torch.arange(len(images)), torch.arange(len(images))]


def score(model, rows: list[tuple[str, int | None]], scenes: range, seed: int, n_steps: int,
          batch: int) -> dict[tuple[str, int | None], tuple[float, float]]:
    """{row: (span pointing rate, box-to-words rate)} over the scenes' objects."""
    hits = {row: ([], []) for row in rows}
    for start in range(0, len(scenes), batch):
        chosen = [scene_of("two", seed, k)[0] for k in scenes[start:start + batch]]
        captions = [pair_caption(s) for s in chosen]
        tok = model.tokenize(captions)
        tokens = model.tokenizer.tokens(tok.input_ids, torch.ones_like(tok.input_ids))
        images = [s.image for s in chosen]
        for row in rows:
            for cube, words, scene in zip(cubes(model, images, captions, row, n_steps), tokens, chosen):
                spans, boxes = score_scene(cube, words, scene)
                hits[row][0].extend(spans)
                hits[row][1].extend(boxes)
        print(f"  {start + len(chosen)} scenes scored", file=sys.stderr, flush=True)
    return {row: (sum(s) / len(s), sum(b) / len(b)) for row, (s, b) in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=10_000, help="first scene seed (training never sees these)")
    ap.add_argument("--models", nargs="+", default=["demo", "demo-siglip"])
    ap.add_argument("--layers", nargs="+", type=int, default=[-1, -2, -3], help="blocks for interactions")
    ap.add_argument("--n-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=20, help="scenes per call")
    args = ap.parse_args()
    rows = [("interactions", layer) for layer in args.layers] + [("similarity", None)]
    results = {name: score(clipx.load(name), rows, range(args.scenes), args.seed, args.n_steps, args.batch)
               for name in args.models}
    models = " / ".join(args.models)
    print(f"\n{args.scenes} two-object scenes (seeds {args.seed}..{args.seed + args.scenes - 1}), captions naming "
          f"both, {2 * args.scenes} objects; n_steps {args.n_steps}; each cell: {models}\n")
    print(markdown_table(["method", "span pointing game", "box-to-words"], [
        [method if layer is None else f"{method} (layer {layer})"]
        + [" / ".join(f"{results[m][(method, layer)][c]:.3f}" for m in args.models) for c in (0, 1)]
        for method, layer in rows]))


if __name__ == "__main__":
    main()
