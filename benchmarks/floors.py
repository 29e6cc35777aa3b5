"""Each explanation method's floor: the passes its maths needs for B images x T captions, timed bare.

    python benchmarks/floors.py [--images 8 --texts 8 --repeats 3 --shape ViT-B/32]

For every method the table gives the count of forwards and backwards its maths needs, the time of exactly
those passes with nothing else (the floor), the method's own time, and their ratio, interleaved in one
process on the same random weights. Only input gradients are asked for, so no weight gradient is computed
in either. What the counts rest on: logit[i, j] depends on image i only through image i's activations and
on caption j only through caption j's, so one backward of logits[:, j].sum() serves caption j for every
image, and one of logits[i, :].sum() image i for every caption (`clipx.explain.core`); a perturbation of
an image is scored against every caption from one image forward (`clipx.explain.method.perturbation`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import clipx
from clipx.explain.method.integrated_gradients import rows_within_budget
from clipx.explain.method.legrad import layer_embedding
from common import CHEAP, SHAPES, captions, cpu_name, random_checkpoint, time_alternately

def count(method: str, n_images: int, n_texts: int, n_layers: int, n_patches: int) -> str:
    """The passes `method`'s maths needs for n_images x n_texts pairs, in words."""
    b, t = n_images, n_texts
    steps, masks = CHEAP["integrated_gradients"]["n_steps"], CHEAP["rise"]["n_masks"]
    return {
        "attention": f"1 forward of {b} images + {t} captions, no graph",
        "rollout": f"1 forward, no graph; {b} x {n_layers} [n x n] products",
        "similarity": "1 forward, no graph",
        "gradcam": f"1 forward; {t} image-side + {b} text-side backwards, 1 block deep",
        "legrad": f"1 forward; 2 layers x {t} image-side backwards, 1 block deep",
        "relevance": f"1 forward; {t} image-side backwards {n_layers} blocks deep + {b} text-side 1 block deep",
        "integrated_gradients": f"{b} x {steps} image + {t} x {steps} caption forwards; {t} backwards over the "
                                f"images' rows + {b} over the captions'",
        "occlusion": f"{b} x {n_patches + 1} image forwards + 1 caption forward, no graph",
        "rise": f"{b} x {masks + 1} image forwards + 1 caption forward, no graph",
    }[method]


def floors(model, px: torch.Tensor, tok) -> dict[str, Callable[[], None]]:
    """method -> a function running only the passes its maths needs (see `count`)."""
    vision, text = model.vision, model.text
    n_images, n_texts = len(px), len(tok.input_ids)
    last_v, last_t = vision.n_layers - 1, text.n_layers - 1

    def forward(names: list[str] = (), graph: bool = False):
        with torch.set_grad_enabled(graph), model.recording(list(names), graph) as cache:
            out = model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        return out, cache

    def backwards(logits: torch.Tensor, image_side: list[torch.Tensor], text_side: list[torch.Tensor]) -> None:
        for j in range(n_texts if image_side else 0):
            torch.autograd.grad(logits[:, j].sum(), image_side, retain_graph=True, allow_unused=True)
        for i in range(n_images if text_side else 0):
            torch.autograd.grad(logits[i].sum(), text_side, retain_graph=True, allow_unused=True)

    def gradient_floor(v_names: list[str], t_names: list[str]) -> Callable[[], None]:
        def run() -> None:
            out, cache = forward(v_names + t_names, graph=True)
            backwards(out.logits_per_image, [cache[n] for n in v_names], [cache[n] for n in t_names])
        return run

    def legrad() -> None:
        layers = range(vision.n_layers - 2, vision.n_layers)
        names = [f"vision.blocks.{i}.{h}" for i in layers for h in ("attn.hook_pattern", "hook_resid_post")]
        out, cache = forward(names, graph=True)
        for i in layers:
            feature = F.normalize(layer_embedding(vision, cache[f"vision.blocks.{i}.hook_resid_post"]), dim=-1)
            backwards(model.hooked_logits(feature, out.text_embeds), [cache[f"vision.blocks.{i}.attn.hook_pattern"]], [])

    def integrated_gradients() -> None:
        steps = CHEAP["integrated_gradients"]["n_steps"]
        out, cache = forward(["vision.hook_embed", "text.hook_embed"])
        for tower, encode, others in (("vision", lambda rows: model.encode_image(px[rows]), out.text_embeds),
                                      ("text", lambda rows: model.encode_text(tok.input_ids[rows],
                                                                              tok.attention_mask[rows]),
                                       out.image_embeds)):
            embed = cache[f"{tower}.hook_embed"]
            per_forward = rows_within_budget(getattr(model, tower), embed)
            rows = torch.arange(len(embed)).repeat(steps)
            for start in range(0, len(rows), per_forward):
                which = rows[start:start + per_forward]
                path = embed[which].clone().requires_grad_()
                with torch.enable_grad(), model.hooks(fwd_hooks=[(f"{tower}.hook_embed", lambda _, hook: path)]):
                    logits = F.normalize(encode(which), dim=-1) @ others.T
                for c in range(logits.shape[1]):
                    torch.autograd.grad(logits[:, c].sum(), path, retain_graph=True)

    def image_forwards(per_image: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model.encode_text(tok.input_ids, tok.attention_mask)
                for image in px:
                    model.encode_image(image[None])
                    for start in range(0, per_image, 64):
                        model.encode_image(image[None].expand(min(64, per_image - start), -1, -1, -1))
        return run

    return {
        "attention": forward, "rollout": forward, "similarity": forward,
        "gradcam": gradient_floor([f"vision.blocks.{last_v}.hook_resid_pre"], [f"text.blocks.{last_t}.hook_resid_pre"]),
        "legrad": legrad,
        "relevance": gradient_floor([f"vision.blocks.{i}.attn.hook_pattern" for i in range(vision.n_layers)],
                                    [f"text.blocks.{last_t}.attn.hook_pattern"]),
        "integrated_gradients": integrated_gradients,
        "occlusion": image_forwards(vision.patch_grid(px)[0] * vision.patch_grid(px)[1]),
        "rise": image_forwards(CHEAP["rise"]["n_masks"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", choices=list(SHAPES), default="ViT-B/32")
    ap.add_argument("--methods", nargs="*", default=clipx.methods())
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp()) / "model"
    random_checkpoint(folder, SHAPES[args.shape])
    model = clipx.load(folder)
    px = torch.randn(args.images, 3, 224, 224)
    texts = captions(args.texts)
    tok = model.tokenize(texts)
    bare = floors(model, px, tok)
    grid = model.vision.patch_grid(px)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_name()}, CPU fp32, {args.shape} "
          f"random weights, {args.images} images x {args.texts} captions, median of {args.repeats}; start_layer=0 "
          f"for relevance; {', '.join(f'{m} {o}' for m, o in CHEAP.items())}\n")
    print("| method | passes its maths needs | floor (s) | method (s) | method / floor |")
    print("|---|---|---:|---:|---:|")
    for method in args.methods:
        options = {**CHEAP.get(method, {}), **({"start_layer": 0} if method == "relevance" else {})}
        t = time_alternately({"floor": bare[method],
                              "method": lambda: clipx.explain(model, px, texts, method=method, **options)},
                             args.repeats)
        passes = count(method, args.images, args.texts, model.vision.n_layers, grid[0] * grid[1])
        print(f"| {method} | {passes} | {t['floor']:.3f} | {t['method']:.3f} | {t['method'] / t['floor']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
