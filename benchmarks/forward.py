"""clipx vs transformers CLIPModel on the same random ViT-B/32 weights, CPU, fp32.

    python benchmarks/forward.py [--repeats 5]

Prints seconds per forward (images x captions) for both backends and the HF/clipx speed-up
(>1 means clipx is faster), then the cost of the hook points when no hook is attached.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import clipx
from clipx.model.hooks import HookPoint
from common import VIT_B_32, cpu_name, model_inputs, random_checkpoint, time_alternately


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--texts", type=int, nargs="+", default=[4, 16, 64])
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp()) / "vit-b-32"
    random_checkpoint(folder, VIT_B_32)
    ours = clipx.load(folder)
    hf = {b: transformers.CLIPModel.from_pretrained(folder, attn_implementation=b).eval() for b in ("eager", "sdpa")}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads "
          f"on {cpu_name()}, CPU fp32, ViT-B/32 random weights, median of {args.repeats}\n")
    print("| images | texts | backend | transformers s/it | clipx s/it | speed-up |")
    print("|---:|---:|---|---:|---:|---:|")
    for n_images in args.images:
        for n_texts in args.texts:
            x = model_inputs(ours, n_images, n_texts)
            for backend in ("eager", "sdpa"):
                ours.set_attention(backend)
                t = time_alternately({"hf": lambda: hf[backend](**x), "clipx": lambda: ours(**x)}, args.repeats)
                print(f"| {n_images} | {n_texts} | {backend} | {t['hf']:.3f} | {t['clipx']:.3f} | "
                      f"{t['hf'] / t['clipx']:.2f}x |", flush=True)

    # hook points with nothing attached, against the same forward with them bypassed
    x = model_inputs(ours, 8, 16)
    ours.set_attention("eager")
    hooked_call = HookPoint.__call__

    def bypassed():
        HookPoint.__call__ = lambda self, t: t
        try:
            ours(**x)
        finally:
            HookPoint.__call__ = hooked_call

    t = time_alternately({"hooked": lambda: ours(**x), "bypassed": bypassed}, args.repeats * 2)
    print(f"\nhook points ({len(ours.hook_names())}) with no hook attached, eager, 8 images x 16 texts: "
          f"{t['hooked']:.3f} s vs {t['bypassed']:.3f} s bypassed: overhead {100 * (t['hooked'] / t['bypassed'] - 1):+.1f}%")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
