"""clipx.interactions against the exCLIP authors' own `OpenAIExplainer.explain` (exclip 1.1, installed with
`pip install --no-deps exclip==1.1`) on the same random weights and inputs, in the same run, CPU.

    python benchmarks/interactions.py [--layers 4 --width 128 --image-size 64 --patch 8 --pairs 2]

A small OpenAI-layout CLIP (tests/openai_layout.py) and clipx loading the same weights: for the last block
and block 1, seconds and peak memory per pair (exclip: one call per pair; clipx: one call for the B x T
pairs), the relative max difference; then clipx's B x T scaling and the completeness gap for 1, 5, 10
and 50 steps. The default shapes are the issue's (4 layers, 64 px, width 128).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import clipx
from common import cpu_name
from explain import peak_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from families.test_open_clip import write_release  # noqa: E402
from floats import max_relative_error  # noqa: E402
from open_clip_weights import open_clip_state  # noqa: E402
from openai_layout import OpenAICLIP  # noqa: E402

BOS, EOS = 49406, 49407


def models(args):
    vision = {"image_size": args.image_size, "layers": args.layers, "width": args.width, "head_width": 64,
              "mlp_ratio": 4.0, "patch_size": args.patch}
    text = {"context_length": 77, "vocab_size": 49408, "width": args.width, "heads": max(1, args.width // 64),
            "layers": args.layers}
    cfg = {"embed_dim": args.width, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True}
    state = open_clip_state(cfg)
    openai = OpenAICLIP(cfg)
    openai.load_state_dict(state)
    return clipx.load(write_release(Path(tempfile.mkdtemp()), cfg, state=state)), openai.eval()


def inputs(n_images, n_texts, image_size, words=8):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(n_images, 3, image_size, image_size, generator=g) * 0.5
    ids = torch.zeros(n_texts, 77, dtype=torch.long)
    for j in range(n_texts):
        ids[j, 0], ids[j, words + 1] = BOS, EOS
        ids[j, 1:words + 1] = torch.randint(1, BOS, (words,), generator=g)
    return pixels, ids


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2, help="images = captions = this")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from exclip.explanation import OpenAIExplainer

    torch.manual_seed(0)
    model, openai = models(args)
    n = args.pairs
    pixels, ids = inputs(n, n, args.image_size)
    explainer = OpenAIExplainer(openai, image_dim=args.image_size, text_seq_len=77, device=torch.device("cpu"))
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; {args.layers} layers, width {args.width}, "
          f"{args.image_size} px / {args.patch}, {n} images x {n} captions, n_steps {args.steps}")
    print("block | exclip s/pair | clipx s/pair | speed-up | exclip peak MB | clipx peak MB | max rel diff")
    for block in (args.layers - 1, 1):
        ours, theirs = {}, {}

        def run_clipx():
            ours["r"] = clipx.interactions(model, pixels, {"input_ids": ids}, text_layer=block, image_layer=block,
                                           n_steps=args.steps, text_reference=explainer.txt_ref[0])

        def run_exclip():
            for i in range(n):
                for j in range(n):
                    theirs[i, j] = explainer.explain(ids[j:j + 1], pixels[i:i + 1], text_layer=block,
                                                     image_layer=block, N=args.steps)
            explainer.reset_attribution()

        m_ours = peak_memory(lambda: timed(run_clipx))
        _, t_ours = timed(run_clipx)
        m_theirs = peak_memory(run_exclip)
        _, t_theirs = timed(run_exclip)
        diff = max(max_relative_error(ours["r"].values[i, j, :a.shape[0]], a) for (i, j), a in theirs.items())
        print(f"{block:5d} | {t_theirs / n / n:13.2f} | {t_ours / n / n:12.3f} | {t_theirs / t_ours:7.1f}x | "
              f"{m_theirs / 2**20:14.0f} | {m_ours / 2**20:13.0f} | {diff:.1e}")

    print("B x T scaling, last block (clipx, one call):")
    for b, t in ((1, 1), (2, 2), (4, 4), (4, 1), (1, 4)):
        px, tid = inputs(b, t, args.image_size)
        _, seconds = timed(lambda: clipx.interactions(model, px, {"input_ids": tid}, n_steps=args.steps,
                                                      text_reference=explainer.txt_ref[0]))
        print(f"  {b} x {t}: {seconds:.2f} s, {seconds / b / t:.2f} s/pair")

    print("completeness gap (sum of values - the four-term identity), last block, max |gap| / max |identity|:")
    for steps in (1, 5, 10, 50):
        r = clipx.interactions(model, pixels, {"input_ids": ids}, n_steps=steps, text_reference=explainer.txt_ref[0])
        print(f"  n_steps {steps:2d}: max |gap| {r.gap.abs().max():.4f}, max |identity| {r.expected.abs().max():.4f}")


if __name__ == "__main__":
    main()
