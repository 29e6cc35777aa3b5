"""How fast the clipx explorers answer a control change that only re-renders cached results.

    python benchmarks/views.py [--repeats 20]

Runs on the demo model (clipx/data/shapes-clip) where it exists, else on a tiny random CLIP; the
demo images from clipx/data/images. Prints the median milliseconds per update; the target is
<= 50 ms for every display-only update.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from PIL import Image

import clipx
from clipx.assets import ASSETS_DIR, DEMO_MODEL_DIR
from clipx.views import AttentionView, Compare, Explorer, TokenPatchView, overlay, to_png
from common import cpu_name, random_checkpoint

TINY = dict(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=77, vocab_size=49408),
    vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    projection_dim=24,
)
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
TARGET_MS = 50


def load_model() -> tuple[clipx.CLIP, str]:
    if DEMO_MODEL_DIR.exists():
        return clipx.load("demo"), "demo model"
    folder = Path(tempfile.mkdtemp()) / "tiny"
    random_checkpoint(folder, TINY)
    size = TINY["vision_config"]["image_size"]  # without it the processor would make 224 x 224 inputs
    transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                    crop_size={"height": size, "width": size}).save_pretrained(folder)
    return clipx.load(folder), "tiny random CLIP (the demo model is not trained yet)"


def stepper(control, values):
    """A function that sets `control` to the next of `values` (the view re-renders inside the setter);
    one round through the values first, so anything computed on first sight is cached."""
    cycle = itertools.cycle(values)

    def step():
        control.value = next(cycle)

    for _ in values:
        step()
    return step


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    model, name = load_model()
    images = sorted((ASSETS_DIR / "images").glob("*.png"))
    images = [Image.open(p).convert("RGB") for p in images] * (2 if len(images) < 2 else 1)
    started = time.perf_counter()
    explorer = Explorer(model, images, CAPTIONS)
    tokens = TokenPatchView(model, images, CAPTIONS)
    attention = AttentionView(model, images, CAPTIONS)
    compare = Compare(model, images, CAPTIONS, methods=["relevance", "rollout", "gradcam", "similarity"])
    built = time.perf_counter() - started
    n_layers = model.vision.config.num_hidden_layers
    n_heads = model.vision.config.num_attention_heads
    picture, heatmap = Image.new("RGB", (224, 224), "grey"), torch.rand(14, 14)
    updates = [
        ("Explorer", "opacity", stepper(explorer.opacity, [0.3, 0.7])),
        ("Explorer", "caption switch", stepper(explorer.caption_choice, CAPTIONS)),
        ("Explorer", "image switch", stepper(explorer.image_choice, list(range(len(images))))),
        ("Explorer", "method switch (cached)", stepper(explorer.method, clipx.methods())),
        ("TokenPatchView", "token", stepper(tokens.token, [1, 2, 3])),
        ("TokenPatchView", "patch", stepper(tokens.row, [0, tokens.grid[0] - 1])),
        ("AttentionView", "layer", stepper(attention.layer, list(range(n_layers)))),
        ("AttentionView", "head", stepper(attention.head, list(range(-1, n_heads)))),
        ("Compare (4 methods)", "opacity", stepper(compare.opacity, [0.3, 0.7])),
        ("render", "overlay + to_png, 224 px, 14 x 14 map", lambda: to_png(overlay(picture, heatmap))),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}, CPU, {name}, "
          f"{len(images)} images x {len(CAPTIONS)} captions, 224 px pictures, median of {args.repeats}; "
          f"building the four views (every first computation) took {built:.1f} s\n")
    print("| view | update | ms / update | <= 50 ms |")
    print("|---|---|---:|:---:|")
    for view, label, step in updates:
        ms = median_ms(step, args.repeats)
        print(f"| {view} | {label} | {ms:.1f} | {'yes' if ms <= TARGET_MS else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
