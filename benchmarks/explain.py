"""Every explanation method on random ViT-B/32 weights, CPU, 8 images x 8 captions.

    python benchmarks/explain.py [--images 8 --texts 8 --repeats 3]

Prints seconds per call, per pair and the peak memory each call adds; then batched `relevance`
against one call per pair, and against one plain forward + backward of the same batch; then
`occlusion` (every caption scored from one forward of each occluded image) against Captum's
`Occlusion` called once per caption with the same windows and forward; and `integrated_gradients`
(each interpolated input through its tower once for all targets) against Captum's
`LayerIntegratedGradients` called once per caption (image side) and once per image (text side), with
its cost for B images x 1 caption beside B x T.

    python benchmarks/explain.py --table [--shapes ViT-B/32 ViT-B/16 --sizes 1x1 8x8 32x32]

The cost table instead: for every method and B x T, seconds per call, pairs/s, images/s (beside LeGrad's
96 and CheferCAM's 21 on a GPU, ViT-B/16), the peak memory the call adds, and one call per pair (timed on
the first --loop-pairs pairs and scaled to B x T: each single-pair call costs the same); then each method's
time for 8 images x 32 captions over 8 x 1. A cell whose cost, scaled from the last smaller cell by what
the method's passes grow with, would pass --max-seconds is not run, and the row says so.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import clipx
from clipx.model.inputs import embed_texts
from common import CHEAP, SHAPES, VIT_B_32, captions, cpu_name, random_checkpoint, time_alternately


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_memory(fn) -> int:
    """The largest resident-memory rise while fn runs, sampled every millisecond. Freed heap memory goes back
    to the system first: glibc keeps it otherwise, and a call after a bigger one would reuse it and read ~0."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start, peak, running = rss_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss_bytes() - start)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        running[0] = False
        thread.join()
    return peak[0]


def occlusion_against_captum(model, px: torch.Tensor, texts: list[str], repeats: int) -> None:
    """Occlusion of every 1-patch window, zero baseline: clipx for all captions at once, Captum's
    Occlusion once per caption (its forward also scores the captions encoded once, and evaluates
    as many occluded images per forward as clipx's default batch)."""
    from captum.attr import Occlusion

    text = embed_texts(model, texts)
    patch = model.vision.config.patch_size
    occlusion = Occlusion(lambda x: F.normalize(model.encode_image(x), dim=-1) @ text.T * model.logit_scale.exp())
    maps = {}

    def clipx_all():
        maps["clipx"] = clipx.explain(model, px, texts, method="occlusion").image

    def captum_per_caption():
        with torch.no_grad():
            maps["captum"] = torch.stack([occlusion.attribute(
                px, sliding_window_shapes=(3, patch, patch), strides=(3, patch, patch), baselines=0, target=j,
                perturbations_per_eval=max(1, 64 // len(px)))[:, 0, ::patch, ::patch] for j in range(len(texts))], 1)

    t = time_alternately({"clipx": clipx_all, "captum": captum_per_caption}, repeats)
    n = len(px)
    print(f"\nocclusion, {n} images x {len(texts)} captions, 1-patch windows: clipx {t['clipx']:.2f} s "
          f"({n / t['clipx']:.2f} images/s), Captum's Occlusion per caption {t['captum']:.2f} s "
          f"({n / t['captum']:.2f} images/s): {t['captum'] / t['clipx']:.1f}x faster; "
          f"max |difference| {(maps['clipx'] - maps['captum']).abs().max():.2g} "
          f"(largest map value {maps['captum'].abs().max():.3g})")


def integrated_gradients_against_captum(model, px: torch.Tensor, texts: list[str], n_steps: int,
                                        repeats: int) -> None:
    """clipx's integrated gradients for B x T pairs, for B x 1, and Captum's LayerIntegratedGradients on the
    embedding layers once per caption and once per image (what clipx ran before sharing the forwards)."""
    from captum.attr import LayerIntegratedGradients

    tok = model.tokenize(texts)
    with torch.no_grad():
        out = model(pixel_values=px, **tok)
    scale = model.logit_scale.exp()
    vision = LayerIntegratedGradients(
        lambda p: scale * F.normalize(model.encode_image(p), dim=-1) @ out.text_embeds.T, model.vision.patch_embedding)
    text = LayerIntegratedGradients(
        lambda ids, mask: scale * F.normalize(model.encode_text(ids, mask), dim=-1) @ out.image_embeds.T,
        model.text.token_embedding)
    special = torch.tensor([model.tokenizer.bos_token_id, model.tokenizer.eos_token_id])
    keep = torch.isin(tok.input_ids, special) | (tok.attention_mask == 0)  # the caption without its words
    blank = torch.where(keep, tok.input_ids, model.tokenizer.pad_token_id)
    maps = {}

    def clipx_all():
        maps["clipx"] = clipx.explain(model, px, texts, method="integrated_gradients", n_steps=n_steps).image

    def clipx_one_caption():
        clipx.explain(model, px, texts[:1], method="integrated_gradients", n_steps=n_steps)

    def captum_per_target():
        maps["captum"] = torch.stack([vision.attribute(px, torch.zeros_like(px), target=j, n_steps=n_steps).sum(1)
                                      for j in range(len(texts))], 1)
        for i in range(len(px)):
            text.attribute(tok.input_ids, blank, target=i, n_steps=n_steps,
                           additional_forward_args=(tok.attention_mask,))

    t = time_alternately({"clipx": clipx_all, "one caption": clipx_one_caption, "captum": captum_per_target},
                         repeats)
    memory = {name: peak_memory(fn) / 2 ** 20 for name, fn in (("clipx", clipx_all), ("captum", captum_per_target))}
    n = len(px)
    print(f"\nintegrated_gradients (n_steps={n_steps}), {n} images x {len(texts)} captions, both towers: clipx "
          f"{t['clipx']:.2f} s ({memory['clipx']:.0f} MB), Captum's LayerIntegratedGradients per caption and per "
          f"image {t['captum']:.2f} s ({memory['captum']:.0f} MB): {t['captum'] / t['clipx']:.1f}x faster; clipx "
          f"for {n} x {len(texts)} over {n} x 1: {t['clipx'] / t['one caption']:.2f}x; max |difference| "
          f"{(maps['clipx'] - maps['captum']).abs().max():.2g} (largest map value {maps['captum'].abs().max():.3g})")


# What a method's cost grows with, to skip cells that would take too long: its backwards are one per
# caption over all images (and one per image over all captions); a perturbation's forwards score every
# caption at once; one forward alone grows with the inputs.
GROWTH = {"gradcam": "pairs", "legrad": "pairs", "relevance": "pairs", "integrated_gradients": "pairs",
          "occlusion": "images", "rise": "images", "attention": "inputs", "rollout": "inputs", "similarity": "inputs"}


def grown(method: str, size: tuple[int, int], smaller: tuple[int, int]) -> float:
    (b, t), (b0, t0) = size, smaller
    return {"pairs": b * t / (b0 * t0), "images": b / b0, "inputs": (b + t) / (b0 + t0)}[GROWTH[method]]


def measure(fn, repeats: int, long_s: float = 5.0) -> tuple[float, float]:
    """(median seconds, peak MB added) of fn: the first call sampled for memory, then more calls up to
    `repeats` while a call is shorter than long_s."""
    start = time.perf_counter()
    peak = peak_memory(fn) / 2 ** 20
    samples = [time.perf_counter() - start]
    while len(samples) < repeats and samples[0] < long_s:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2], peak


def cost_table(model, shape: str, sizes: list[tuple[int, int]], methods: list[str], loop_pairs: int,
               repeats: int, max_seconds: float) -> None:
    print(f"\n{shape}:\n")
    print("| method | B x T | s / call | pairs / s | images / s | peak memory added (MB) | one call per pair (s) "
          "| batched speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        options = CHEAP.get(method, {})
        last = None  # (size, seconds) of the last cell run
        clipx.explain(model, torch.randn(1, 3, 224, 224), captions(1), method=method, **options)  # warm-up
        for b, t in sizes:
            label = method + "".join(f" ({k}={v})" for k, v in options.items())
            if last is not None and last[1] * grown(method, (b, t), last[0]) > max_seconds:
                print(f"| {label} | {b} x {t} | not run: about {last[1] * grown(method, (b, t), last[0]):.0f} s "
                      f"by its growth in {GROWTH[method]} | | | | | |", flush=True)
                continue
            px, texts = torch.randn(b, 3, 224, 224), captions(t)
            seconds, peak = measure(lambda: clipx.explain(model, px, texts, method=method, **options), repeats)
            last = ((b, t), seconds)
            loop = ""
            if b * t > 1:
                pairs = [(i, j) for i in range(b) for j in range(t)][:loop_pairs]
                start = time.perf_counter()
                for i, j in pairs:
                    clipx.explain(model, px[i:i + 1], [texts[j]], method=method, **options)
                per_pair = (time.perf_counter() - start) / len(pairs) * b * t
                loop = f"{per_pair:.2f} | {per_pair / seconds:.1f}x"
            print(f"| {label} | {b} x {t} | {seconds:.3f} | {b * t / seconds:.2f} | {b / seconds:.2f} | {peak:.0f} "
                  f"| {loop or '| '} |", flush=True)


def t_scaling(model, methods: list[str], repeats: int, n_images: int = 8, n_texts: int = 32) -> None:
    print(f"\n| method | {n_images} x 1 (s) | {n_images} x {n_texts} (s) | ratio |")
    print("|---|---:|---:|---:|")
    px = torch.randn(n_images, 3, 224, 224)
    for method in methods:
        options = CHEAP.get(method, {})
        one, many = captions(1), captions(n_texts)
        clipx.explain(model, px[:1], one, method=method, **options)  # warm-up
        t = {name: measure(lambda: clipx.explain(model, px, texts, method=method, **options), repeats)[0]
             for name, texts in (("one", one), ("many", many))}
        print(f"| {method} | {t['one']:.3f} | {t['many']:.3f} | {t['many'] / t['one']:.2f} |", flush=True)


def size(text: str) -> tuple[int, int]:
    b, t = text.lower().split("x")
    return int(b), int(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--table", action="store_true", help="the cost table instead of the peers")
    ap.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=["ViT-B/32", "ViT-B/16"])
    ap.add_argument("--sizes", nargs="*", type=size, default=[(1, 1), (8, 8), (32, 32)])
    ap.add_argument("--methods", nargs="*", default=clipx.methods())
    ap.add_argument("--loop-pairs", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--no-scaling", action="store_true", help="skip the table of 8 x 32 over 8 x 1")
    args = ap.parse_args()
    if args.table:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}, CPU fp32, random "
              f"weights; median of up to {args.repeats} calls (1 where a call takes over 5 s)")
        for shape in args.shapes:
            folder = Path(tempfile.mkdtemp()) / "model"
            random_checkpoint(folder, SHAPES[shape])
            model = clipx.load(folder)
            cost_table(model, shape, args.sizes, args.methods, args.loop_pairs, args.repeats, args.max_seconds)
            if not args.no_scaling:
                t_scaling(model, args.methods, args.repeats)
        return

    folder = Path(tempfile.mkdtemp()) / "vit-b-32"
    random_checkpoint(folder, VIT_B_32)
    model = clipx.load(folder)
    px = torch.randn(args.images, 3, 224, 224)
    texts = captions(args.texts)
    pairs = args.images * args.texts
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}, CPU fp32, "
          f"ViT-B/32 random weights, {args.images} images x {args.texts} captions, median of {args.repeats}\n")
    print("| method | s / call | ms / pair | peak memory added (MB) |")
    print("|---|---:|---:|---:|")
    for method in clipx.methods():
        options = CHEAP.get(method, {})
        run = lambda: clipx.explain(model, px, texts, method=method, **options)  # noqa: E731
        seconds = time_alternately({method: run}, args.repeats)[method]
        memory = peak_memory(run) / 2 ** 20
        label = method + "".join(f" ({k}={v})" for k, v in options.items())
        print(f"| {label} | {seconds:.3f} | {1000 * seconds / pairs:.1f} | {memory:.0f} |", flush=True)

    tok = model.tokenize(texts)

    def per_pair():
        for i in range(args.images):
            for text in texts:
                clipx.explain(model, px[i:i + 1], [text], method="relevance")

    def forward_backward():
        out = model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        out.logits_per_image.sum().backward()
        model.zero_grad(set_to_none=True)

    for start in (-1, 0):
        t = time_alternately({"batched": lambda: clipx.explain(model, px, texts, method="relevance",
                                                                start_layer=start, start_layer_text=start),
                              "per pair": per_pair, "forward+backward": forward_backward}, args.repeats)
        print(f"\nrelevance start_layer={start}: batched {t['batched']:.3f} s, {pairs} single-pair calls "
              f"{t['per pair']:.3f} s ({t['per pair'] / t['batched']:.1f}x faster batched); one plain forward + "
              f"backward {t['forward+backward']:.3f} s (batched relevance = {t['batched'] / t['forward+backward']:.2f}x it)")

    occlusion_against_captum(model, px, texts, args.repeats)
    integrated_gradients_against_captum(model, px[:4], texts, CHEAP["integrated_gradients"]["n_steps"], args.repeats)


if __name__ == "__main__":
    main()
