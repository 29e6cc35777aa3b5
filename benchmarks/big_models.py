"""Big models on a laptop: one image x one caption explained on ViT-L/14 (CLIP) and SigLIP so400m shapes
on the CPU, with each model's default method, in float32 and bfloat16: seconds, peak memory, and how far
the bfloat16 maps are from the float32 ones.

    python benchmarks/big_models.py [--models vit-l-14 so400m] [--methods relevance integrated_gradients]

Random weights in the hub's layout (transformers' classes, save_pretrained), CLIP's BPE for both (the
vocabulary's size hardly matters to the cost). Peak memory is the resident set's largest rise over what
the loaded model holds, sampled every millisecond, each run in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

import clipx
from clipx.assets import CLIP_BPE_DIR
from clipx.explain import default_method
from common import VIT_L_14, cpu_name
from explain import peak_memory

SO400M_TOWER = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
MODELS = {
    "vit-l-14": (transformers.CLIPModel, transformers.CLIPConfig(**VIT_L_14)),
    "so400m": (transformers.SiglipModel, transformers.SiglipConfig(
        text_config=dict(SO400M_TOWER, max_position_embeddings=64, vocab_size=49408),
        vision_config=dict(SO400M_TOWER, image_size=384, patch_size=14))),
}


def checkpoint(name: str) -> Path:
    cls, config = MODELS[name]
    folder = Path(tempfile.mkdtemp()) / name
    torch.manual_seed(0)
    cls(config).eval().save_pretrained(folder)
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    return folder


def explain_once(folder: Path, dtype: str, method: str | None, out: Path) -> None:
    """In a process of its own, so its peak memory is its own: load, explain, save the map, print a JSON line."""
    model = clipx.load(folder, dtype=getattr(torch, dtype))
    method = method or default_method(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    result = {}

    def run():
        result["exp"] = clipx.explain(model, [image], ["a photo of a dog on the grass"], method=method)

    start = time.perf_counter()
    memory = peak_memory(run)
    torch.save(result["exp"].image.float(), out)
    print(json.dumps({"method": method, "seconds": time.perf_counter() - start, "memory": memory}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="*", default=[None], help="default: each model's default method")
    ap.add_argument("--child", nargs=4, metavar=("FOLDER", "DTYPE", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, dtype, method, out = args.child
        return explain_once(Path(folder), dtype, method if method != "-" else None, Path(out))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}, one 640x480 image x one "
          "caption, each run in a fresh process\n")
    print("| model | method | dtype | seconds | peak memory added (MB) | max abs(bf16 - fp32) / max abs(fp32) |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.models:
        folder = checkpoint(name)
        for method in args.methods:
            maps = {}
            for dtype in ("float32", "bfloat16"):
                maps[dtype] = folder / f"{dtype}.pt"
                done = subprocess.run([sys.executable, __file__, "--child", str(folder), dtype, method or "-",
                                       str(maps[dtype])], capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                diff = ""
                if dtype == "bfloat16":
                    reference, low = torch.load(maps["float32"]), torch.load(maps["bfloat16"])
                    diff = f"{((low - reference).abs().max() / reference.abs().max()).item():.3f}"
                print(f"| {name} | {row['method']} | {dtype} | {row['seconds']:.1f} | {row['memory'] / 2 ** 20:.0f} | "
                      f"{diff} |", flush=True)


if __name__ == "__main__":
    main()
