"""Second-order token x patch interactions (Moeller, Tilli, Vu and Pado, "Explaining Caption-Image
Interactions in CLIP Models with Second-Order Attributions", TMLR 2025; their package exclip):
for every image-caption pair, how much each caption token and each image patch together add to the
pair's similarity, through the residual streams entering one block of each tower.

The matrix of a pair is U_text^T U_image / (|e_image| |e_text|) (`integrated_jacobian.py`): each tower's
U is computed once per image and once per caption, so B images x T captions cost B + T towers' worth of
products, not B * T. Everything goes through the tower protocol (the blocks' `hook_resid_pre` points, each
tower's own pooling), so CLIP, open_clip and SigLIP models alike.

By default the authors' conventions, so that the numbers equal theirs on the same weights: the image
reference is zeros in the processor's normalised pixels; the caption reference is BOS, one padding token,
EOS, then padding to the captions' length, read with every position attended; the path pools where the
input caption is pooled; values are divided by the input embeddings' lengths, not scaled by the logit scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import check_int
from ..model.clip import CLIP
from ..model.hooks import HookPoint
from .core import Inputs
from .integrated_jacobian import Embed, integrated_jacobian
from .interaction_maps import Interactions
from .paths import baseline_pixels, row_bytes
from .registry import display_images, prepare_inputs

# measured on the demo CLIP (64 px, width 128): 64 MiB chunks ran 1.2-1.5x faster than 1 GiB ones (cache-sized
# calls), 16 MiB slower again at early blocks (the forward through the blocks repeats per chunk)
MEMORY_BUDGET_BYTES = 64 << 20
TEXT_REFERENCES = ("pad", "empty")


def interactions(model: CLIP, images: Any, texts: Any, *, text_layer: int = -1, image_layer: int = -1,
                 n_steps: int = 10, image_reference: torch.Tensor | float = 0.0,
                 text_reference: str | torch.Tensor = "pad", scale: bool = False,
                 memory_budget: int = MEMORY_BUDGET_BYTES) -> Interactions:
    """Token x patch interactions of every image with every caption: `Interactions.values`
    [n_images, n_texts, L, grid_h, grid_w] (see `Interactions` for reading it).

    images, texts: as `clipx.explain` takes them (captions, or token ids). text_layer, image_layer: the
    block whose entering residual stream is interpolated (negative counts from the end: -1 is the last
    block). n_steps: right Riemann points from the input to the reference (the reference excluded).
    image_reference: pixel_values of the reference image (a number, one image or one per image; 0.0 is the
    dataset mean colour; a blurred copy of the images is another choice). text_reference: "pad" (BOS, one
    padding token, EOS: the authors'), "empty" (BOS, EOS), or token ids [length] padded to the captions'
    length. scale: multiply by the model's logit scale (the authors' default is not to). memory_budget:
    bytes the vectorised products may keep at once."""
    n_steps = check_int("n_steps", n_steps, minimum=1)
    memory_budget = check_int("memory_budget", memory_budget, minimum=1)
    if not isinstance(scale, bool):
        raise TypeError(f"scale must be True or False, got {scale!r:.80}")
    x = prepare_inputs(model, images, texts)
    vision_block = x.layers("vision", image_layer, "image_layer")[0]
    text_block = x.layers("text", text_layer, "text_layer")[0]
    reference_pixels = baseline_pixels(image_reference, x.pixel_values, "image_reference")
    length = x.input_ids.shape[1]
    # in a causal tower no position after the last pooled one reaches an embedding: its values are 0
    kept = int(x.pooled_positions.max()) + 1 if model.text.config.causal else length
    ids, mask = x.input_ids[:, :kept], x.attention_mask[:, :kept]
    reference_ids = _text_reference(model, text_reference, x.input_ids)[:, :kept]
    every = torch.ones_like(reference_ids)  # the reference is a caption of its own, read unmasked as the authors do
    # eager kernels: forward-mode products need them; frozen weights: no graph towards them is recorded
    with torch.inference_mode(False), model.attention("eager"), _frozen(model):
        image = _tower_side(model, "vision", vision_block, len(x.pixel_values),
                            lambda: model.encode_image(x.pixel_values, x.interpolate_pos_encoding),
                            lambda: model.encode_image(reference_pixels, x.interpolate_pos_encoding),
                            _vision_from(model, vision_block), n_steps, memory_budget)
        text = _tower_side(model, "text", text_block, len(ids), lambda: model.encode_text(ids, mask),
                           lambda: model.encode_text(reference_ids, every),
                           _text_from(model, text_block, mask, x.pooled_positions), n_steps, memory_budget)
    e_image, r_image, u_image = image
    e_text, r_text, u_text = text
    norms = e_image.norm(dim=-1)[:, None] * e_text.norm(dim=-1)[None]                            # [B, T]
    values = torch.einsum("tdl,bdp->btlp", u_text, u_image) / norms[..., None, None]
    values = F.pad(values, (0, 0, 0, length - kept))
    factor = float(model.exp_logit_scale()) if scale else 1.0
    values = values * factor

    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return factor * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    prefix = x.prefix
    return Interactions(
        values=x.patch_grid(values[..., prefix:]), prefix_values=values[..., :prefix], tokens=_tokens(model, x),
        texts=x.texts, similarity=cosine(e_image, e_text), image_reference_similarity=cosine(r_image, e_text),
        text_reference_similarity=cosine(e_image, r_text).expand_as(norms),
        reference_similarity=cosine(r_image, r_text).expand_as(norms), images=display_images(model, x.pixel_values),
        options={"text_layer": text_layer, "image_layer": image_layer, "n_steps": n_steps,
                 "image_reference": image_reference, "text_reference": text_reference, "scale": scale})


def _tower_side(model: CLIP, tower: str, block: int, n: int, encode: Callable[[], torch.Tensor],
                encode_reference: Callable[[], torch.Tensor], embed_from: Embed, n_steps: int,
                budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input embeddings [n, D], reference embeddings [n or 1, D], U [n, D, S]) of one tower, all float32.
    encode(): the inputs' embeddings; encode_reference(): the reference's (or references'); embed_from: the
    embeddings of residual streams entering `block` (the blocks before it run once, here, without grad)."""
    name = f"{tower}.blocks.{block}.hook_resid_pre"
    with torch.no_grad(), model.recording(name) as cache:
        e_input = encode()
    h_input = cache[name]
    with torch.no_grad(), model.recording(name) as cache:
        e_reference = encode_reference()
    h_reference = cache[name]
    cost = row_bytes(getattr(model, tower), h_input, getattr(model, tower).n_layers - block)
    u = integrated_jacobian(embed_from, h_input, h_reference, n_steps, e_input.shape[-1], cost, budget)
    return e_input.float(), e_reference.float(), u


def _vision_from(model: CLIP, block: int) -> Embed:
    """Residual streams entering vision block `block` [rows, S, width] -> image embeddings [rows, D]."""
    tower = model.vision

    def embed(residuals: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        if tower.head is not None:  # an attention-pooling head reads every token
            return tower.readout(_run_blocks(tower, block, residuals, None))
        return tower.readout(_run_blocks(tower, block, residuals, torch.zeros_like(which))[:, None])

    return embed


def _text_from(model: CLIP, block: int, mask: torch.Tensor, pooled: torch.Tensor) -> Embed:
    """Residual streams entering text block `block` [rows, S, width], standing in for captions `which`
    (their padding `mask` [T, S], their pooled positions [T]) -> text embeddings [rows, D]."""
    tower = model.text

    def embed(residuals: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        padding = None if bool(mask[which].all()) else mask[which] == 0
        residuals = _run_blocks(tower, block, residuals, pooled[which], causal=tower.config.causal,
                                key_padding=padding)
        if tower.ln_final is not None:
            residuals = tower.ln_final(residuals)
        return tower.project(residuals)

    return embed


def _run_blocks(tower, block: int, residuals: torch.Tensor, at: torch.Tensor | None, causal: bool = False,
                key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """The tower's blocks from `block` on: [rows, S, width], or where only position `at` [rows] of each row is
    read after them (a pooled one), that position's [rows, width], the last block computing its query alone:
    every product runs these blocks, and the last one's other positions would cost most of its work for nothing."""
    last = tower.blocks[-1]
    trimmed = at is not None and last.post_norm is False and not any(
        isinstance(m, HookPoint) and m.active for m in last.modules())  # a hook there sees the whole block
    for layer in tower.blocks[block:len(tower.blocks) - trimmed]:
        residuals = layer(residuals, causal=causal, key_padding=key_padding)[0]
    rows = torch.arange(len(residuals), device=residuals.device)
    if not trimmed:
        return residuals if at is None else residuals[rows, at]
    if causal:  # one query: the causal mask becomes the keys after it
        later = torch.arange(residuals.shape[1], device=residuals.device) > at[:, None]
        key_padding = later if key_padding is None else key_padding | later
    h = last.ln1(residuals)
    out = residuals[rows, at] + last.attn(h[rows, at][:, None], context=h, key_padding=key_padding)[0][:, 0]
    return out + last.mlp(last.ln2(out))


def _text_reference(model: CLIP, reference: str | torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The reference caption's ids [1, L] for captions [T, L], padded with the padding token: the tokenizer's,
    or where it pads with EOS (transformers' CLIP tokenizer) id 0, what OpenAI's tokenizer pads with and the
    authors' reference holds (a reference "BOS EOS EOS ..." would be the empty caption)."""
    length = input_ids.shape[1]
    tok = model.tokenizer if model.tokenizer is not None else model.text.config
    bos, eos, pad = (getattr(tok, f"{n}_token_id", None) for n in ("bos", "eos", "pad"))
    pad = 0 if pad is None or pad == eos else pad
    if isinstance(reference, str):
        if reference not in TEXT_REFERENCES:
            raise ValueError(f"text_reference must be one of {', '.join(map(repr, TEXT_REFERENCES))} or token ids, "
                             f"got {reference!r}")
        ids = ([bos] if bos is not None else []) + ([pad] if reference == "pad" else []) + [eos]
    elif isinstance(reference, torch.Tensor) and not reference.is_floating_point() and reference.dtype != torch.bool:
        ids = reference.flatten().tolist() if reference.ndim <= 1 or reference.shape[0] == 1 else None
        if ids is None:
            raise ValueError(f"text_reference ids must be one caption [length], got shape {tuple(reference.shape)}")
    else:
        raise TypeError(f"text_reference must be 'pad', 'empty' or an integer tensor of token ids, got {reference!r:.80}")
    if len(ids) > length:
        raise ValueError(f"text_reference holds {len(ids)} ids, more than the captions' {length} positions")
    return torch.tensor(ids + [pad] * (length - len(ids)), dtype=torch.long, device=input_ids.device)[None]


def _tokens(model: CLIP, x: Inputs) -> list[list[str]]:
    """Each caption's token at every position, padding included."""
    everything = torch.ones_like(x.input_ids)
    if model.tokenizer is not None:
        return model.tokenizer.tokens(x.input_ids, everything)
    return [[str(i) for i in row.tolist()] for row in x.input_ids]


@contextmanager
def _frozen(model: CLIP) -> Iterator[None]:
    """The model's parameters without requires_grad inside the block, as they were after it."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
