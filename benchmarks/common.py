"""Shared by the benchmark scripts: random checkpoints in the hub's layout, and timing."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from clipx.assets import CLIP_BPE_DIR

VIT_B_32 = dict(
    text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                     max_position_embeddings=77, vocab_size=49408, eos_token_id=2),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32),
    projection_dim=512,
)
VIT_B_16 = {**VIT_B_32, "vision_config": {**VIT_B_32["vision_config"], "patch_size": 16}}
VIT_L_14 = dict(
    text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, eos_token_id=2),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14),
    projection_dim=768,
)


# the cheaper settings the benchmarks use for the methods whose default runs for minutes on a CPU
CHEAP = {"integrated_gradients": {"n_steps": 8}, "rise": {"n_masks": 64}}
SHAPES = {"ViT-B/32": VIT_B_32, "ViT-B/16": VIT_B_16, "ViT-L/14": VIT_L_14}


def cpu_name() -> str:
    """The processor's model name (with x86 family and model, which a VM's bare "AMD EPYC" lacks):
    CPU timings mean little without it."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def random_checkpoint(folder: Path, shapes: dict, seed: int = 0) -> transformers.CLIPModel:
    """A random-weight transformers CLIPModel saved where clipx.load can read it, with CLIP's tokenizer."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**shapes)).eval()
    model.save_pretrained(folder)
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    return model


def captions(n: int) -> list[str]:
    words = "a photo of the red blue small large dog cat car tree house on under beside with two three".split()
    g = torch.Generator().manual_seed(n)
    return [" ".join(words[i] for i in torch.randint(len(words), (int(torch.randint(3, 14, (1,), generator=g)),),
                                                     generator=g)) for _ in range(n)]


def model_inputs(model, n_images: int, n_texts: int, **tensor: object) -> dict:
    """Random 224 px pixel_values and `n_texts` captions, as keyword arguments of a forward;
    `tensor` (device, dtype) places the pixels."""
    tok = model.tokenize(captions(n_texts))
    return dict(pixel_values=torch.randn(n_images, 3, 224, 224, **tensor), input_ids=tok.input_ids,
                attention_mask=tok.attention_mask)


def time_alternately(fns: dict, repeats: int, sync=lambda: None) -> dict[str, float]:
    """Median seconds per call of each function, the functions interleaved so drift hits all alike."""
    for fn in fns.values():  # warm-up
        fn()
    sync()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}
