"""GPU: attention backends and explanations, clipx against transformers, fp16 / bf16 (not run in CI).

    python benchmarks/gpu_backends.py                       # on a CUDA GPU: a few minutes
    python benchmarks/gpu_backends.py --device cpu --quick  # tiny shapes, every code path (the suite runs it)

Part 1, forwards: seconds per forward of eager / sdpa / flash for each batch, against transformers'
CLIPModel with the same attention, and the largest logit difference of each clipx backend from clipx
eager. `flash` uses the flash_attn package where installed, else torch's SDPA flash kernel.
Part 2, explanations: relevance, LeGrad, integrated gradients and occlusion on ViT-B/16 and ViT-L/14
shapes, images x 1 caption for batch sizes 1-64: seconds per call, images per second (LeGrad's paper
reports 96 for LeGrad and 21 for CheferCAM on ViT-B/16) and peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import clipx
from common import VIT_B_16, VIT_L_14, captions, model_inputs, random_checkpoint, time_alternately

HF_BACKEND = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}
TINY = dict(  # 224 px images on a 7 x 7 grid, two layers: every code path in seconds on a CPU
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, vocab_size=49408, eos_token_id=2),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=32),
    projection_dim=32,
)
METHODS = {"relevance": {}, "legrad": {}, "integrated_gradients": {"n_steps": 8, "internal_batch_size": 64},
           "occlusion": {}}


class Device:
    """Synchronisation and peak memory on the device the benchmark runs on."""

    def __init__(self, name: str) -> None:
        self.name, self.cuda = name, name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def peak_bytes(self, fn) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    def describe(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else f"{self.name} ({torch.get_num_threads()} threads)"


def forwards(folder: Path, device: Device, dtype: torch.dtype, images: list[int], texts: list[int],
             repeats: int) -> None:
    ours = clipx.load(folder, device=device.name, dtype=dtype)
    hf = {}
    for backend, name in HF_BACKEND.items():
        try:
            hf[backend] = transformers.CLIPModel.from_pretrained(folder, attn_implementation=name,
                                                                 dtype=dtype).to(device.name).eval()
        except (ImportError, ValueError) as e:  # flash_attention_2 without the flash_attn package
            print(f"transformers {name}: unavailable ({str(e).splitlines()[0]})")
    print("| images | texts | backend | transformers s/it | clipx s/it | speed-up | max logit diff vs clipx eager |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n_images in images:
        for n_texts in texts:
            x = model_inputs(ours, n_images, n_texts, device=device.name, dtype=dtype)
            with torch.inference_mode():
                with ours.attention("eager"):
                    reference = ours(**x).logits_per_image.float()
                for backend in ("eager", "sdpa", "flash"):
                    try:
                        ours.set_attention(backend)
                    except (ImportError, ValueError, RuntimeError) as e:  # no flash kernel on this device
                        print(f"| {n_images} | {n_texts} | {backend} | unavailable: {str(e).splitlines()[0]} |")
                        continue
                    diff = (ours(**x).logits_per_image.float() - reference).abs().max().item()
                    fns = {"clipx": lambda: ours(**x)}
                    if backend in hf:
                        fns["hf"] = lambda: hf[backend](**x)
                    t = time_alternately(fns, repeats, sync=device.sync)
                    hf_time = f"{t['hf']:.4f}" if "hf" in t else "n/a"
                    ratio = f"{t['hf'] / t['clipx']:.2f}x" if "hf" in t else "n/a"
                    print(f"| {n_images} | {n_texts} | {backend} | {hf_time} | {t['clipx']:.4f} | {ratio} | "
                          f"{diff:.2e} |", flush=True)
    ours.set_attention("eager")


def explanations(folder: Path, shape: str, device: Device, dtype: torch.dtype, images: list[int],
                 repeats: int) -> None:
    model = clipx.load(folder, device=device.name, dtype=dtype)
    text = captions(1)
    for method, options in METHODS.items():
        for n_images in images:
            px = torch.randn(n_images, 3, 224, 224, device=device.name, dtype=dtype)
            run = lambda: clipx.explain(model, px, text, method=method, **options)  # noqa: E731
            try:
                seconds = time_alternately({method: run}, repeats, sync=device.sync)[method]
                peak = device.peak_bytes(run)
            except torch.OutOfMemoryError:
                print(f"| {shape} | {method} | {n_images} | out of memory | | |", flush=True)
                break
            memory = "n/a" if peak is None else f"{peak / 2 ** 20:.0f}"
            print(f"| {shape} | {method} | {n_images} | {seconds:.4f} | {n_images / seconds:.1f} | {memory} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one batch size, one repeat")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16", "float32"])
    args = ap.parse_args()
    device = Device(args.device)
    if device.cuda and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu --quick to check that it runs)")
    if args.quick:
        shapes, images, texts, explain_images, repeats = {"tiny": TINY}, [2], [3], [1, 2], 1
    else:
        shapes = {"ViT-B/16": VIT_B_16, "ViT-L/14": VIT_L_14}
        images, texts, explain_images, repeats = [1, 8, 32, 128], [4, 64], [1, 8, 32, 64], args.repeats
    folders = {}
    for shape, config in shapes.items():
        folders[shape] = Path(tempfile.mkdtemp()) / shape.replace("/", "-")
        random_checkpoint(folders[shape], config)
    print(f"{device.describe()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"random weights, median of {repeats}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        last = list(shapes)[-1]
        print(f"\n### Forwards, {last}, {dtype_name}\n")
        forwards(folders[last], device, dtype, images, texts, repeats)
        print(f"\n### Explanations, images x 1 caption, {dtype_name}\n")
        print("| shape | method | images | s / call | images / s | peak memory added (MB) |")
        print("|---|---|---:|---:|---:|---:|")
        for shape in shapes:
            explanations(folders[shape], shape, device, dtype, explain_images, repeats)


if __name__ == "__main__":
    main()
