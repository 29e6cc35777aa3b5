"""eager / sdpa / flash on a GPU, fp16, ViT-L/14 shapes, clipx against transformers (not run in CI).

    python benchmarks/gpu_backends.py [--repeats 20]

Prints seconds per forward for each backend and the transformers/clipx speed-up, plus the
largest logit difference of each clipx backend from clipx eager. `flash` uses the flash_attn
package where installed, else torch's SDPA flash kernel.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import clipx
from common import VIT_L_14, model_inputs, random_checkpoint, time_alternately

HF_BACKEND = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--images", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--texts", type=int, nargs="+", default=[4, 64])
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    dtype = getattr(torch, args.dtype)

    folder = Path(tempfile.mkdtemp()) / "vit-l-14"
    random_checkpoint(folder, VIT_L_14)
    ours = clipx.load(folder, device="cuda", dtype=dtype)
    hf = {}
    for backend, name in HF_BACKEND.items():
        try:
            hf[backend] = transformers.CLIPModel.from_pretrained(folder, attn_implementation=name,
                                                                 dtype=dtype).to("cuda").eval()
        except (ImportError, ValueError) as e:  # flash_attention_2 without the flash_attn package
            print(f"transformers {name}: unavailable ({str(e).splitlines()[0]})")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.dtype}, ViT-L/14 random weights, median of {args.repeats}\n")
    print("| images | texts | backend | transformers s/it | clipx s/it | speed-up | max logit diff vs clipx eager |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n_images in args.images:
        for n_texts in args.texts:
            x = model_inputs(ours, n_images, n_texts, device="cuda", dtype=dtype)
            with ours.attention("eager"):
                reference = ours(**x).logits_per_image.float()
            for backend in ("eager", "sdpa", "flash"):
                ours.set_attention(backend)
                diff = (ours(**x).logits_per_image.float() - reference).abs().max().item()
                fns = {"clipx": lambda: ours(**x)}
                if backend in hf:
                    fns["hf"] = lambda: hf[backend](**x)
                t = time_alternately(fns, args.repeats, sync=torch.cuda.synchronize)
                hf_time = f"{t['hf']:.4f}" if "hf" in t else "n/a"
                ratio = f"{t['hf'] / t['clipx']:.2f}x" if "hf" in t else "n/a"
                print(f"| {n_images} | {n_texts} | {backend} | {hf_time} | {t['clipx']:.4f} | {ratio} | {diff:.2e} |",
                      flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
