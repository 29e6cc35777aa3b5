"""Taking an embedding apart: its exact direct contributions, their direct logit attribution, and the
logit lens in the joint space.

The pooled residual of a pre-LN tower is a plain sum: the embedding that enters the blocks, then every
attention layer's output (a sum over its heads plus out_proj's bias) and every MLP's output. The final
LayerNorm is linear once its scale is fixed, and TextSpan (Gandelsman et al., 2024) fixes it at the full
residual's: ln(x) = (x - mean x) / std(x) * gamma + beta, so part c contributes (c - mean c) / std(x) * gamma
and beta is a part of its own (an RMSNorm, x / rms(x) * gamma, neither centres nor has a beta; the
readout is `model/readout.py`). The projection is linear. So the parts, each taken through that fixed
readout, sum to the model's embedding up to float rounding.

Only a readout linear in the residual comes apart this way: a class token (CLIP's image), a pooled
position (either text tower). SigLIP's image is pooled by an attention head, nonlinear in the tokens;
its logit lens is still well defined (each layer's tokens through ln_post and the head).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..model.inputs import encode_images, prepare_images, scores, text_embeds
from ..model.clip import CLIP, _normalize
from ..model.towers import Tower, refuse
from ..preprocess.text import check_texts

_BLOCK = re.compile(r"^(\w+\.blocks\.\d+)\.")


@dataclass
class Parts:
    """Additive parts, `values` [n_items, n_parts, ...] with one label per part: their sum over parts
    (`total()`) is the whole."""

    values: torch.Tensor
    labels: list[str]

    def total(self) -> torch.Tensor:
        return self.values.sum(1)

    # what each axis of `values` holds, for the repr
    axes = ("items", "parts", "dim")

    def __repr__(self) -> str:
        shape = ", ".join(f"{n} {axis}" for n, axis in zip(self.values.shape, self.axes))
        labels = self.labels if len(self.labels) <= 4 else [*self.labels[:2], "...", self.labels[-1]]
        return f"{type(self).__name__}([{shape}]: {', '.join(labels)}{self._more()})"

    def _more(self) -> str:
        return ""

    def by_layer(self):
        """The parts of each block summed (its heads, attention bias and MLP: `vision.blocks.3`); the
        parts outside the blocks (the embedding, LayerNorm and projection biases) stay as they are."""
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            match = _BLOCK.match(label)
            groups.setdefault(match.group(1) if match else label, []).append(i)
        values = torch.stack([self.values[:, index].sum(1) for index in groups.values()], dim=1)
        return type(self)(values, list(groups))


@dataclass(repr=False)
class DirectLogits(Parts):
    """Direct logit attribution, `values` [n_images, n_parts, n_texts]: summed over parts, the model's
    logits_per_image."""

    axes = ("images", "parts", "texts")

    def top(self, text_index: int, k: int = 5,
            image_index: int = 0) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The k parts pushing caption `text_index`'s logit for image `image_index` up most, and the k
        pushing it down most: two lists of (label, logit contribution), strongest first."""
        column = self.values[image_index, :, text_index]
        k = min(k, column.numel())
        up, down = column.topk(k), (-column).topk(k)
        return ([(self.labels[i], float(v)) for v, i in zip(up.values, up.indices)],
                [(self.labels[i], -float(v)) for v, i in zip(down.values, down.indices)])


@dataclass(repr=False)
class Decomposition(Parts):
    """An embedding taken apart: `values` (also `components`) [n_items, n_components, dim] in the joint
    space, summing to the tower's projected embedding (`model.encode_image` / `encode_text`).

    Parts, in order: `{tower}.embed`; for each block i, `{tower}.blocks.{i}.attn.head.{h}` for every head,
    `{tower}.blocks.{i}.attn.bias` (out_proj's bias, its own part rather than split over heads, so that
    a head's part is exactly what its hook_z writes; absent where out_proj has no bias), `{tower}.blocks.{i}.mlp`;
    then the final norm's bias (`vision.ln_post.bias`, `text.ln_final.bias`; an RMSNorm has none) and the
    projection's, where it has one.

    `per_position` (with per_position=True) [n_items, n_layers, n_heads, n_tokens, dim]: each head's part
    split by the token it reads from (the pooled token's attention to it times its value through
    out_proj); summed over tokens, the head parts (`heads()`). Tokens are input positions: for an image
    0 is the class token, then the patches row by row.
    """

    per_position: torch.Tensor | None = None

    @property
    def components(self) -> torch.Tensor:
        return self.values

    def _more(self) -> str:
        return "" if self.per_position is None else f"; per_position {list(self.per_position.shape)}"

    def heads(self) -> torch.Tensor:
        """The head parts as [n_items, n_layers, n_heads, dim]."""
        index = [i for i, label in enumerate(self.labels) if ".attn.head." in label]
        n_layers = len({_BLOCK.match(self.labels[i]).group(1) for i in index})
        return self.values[:, index].reshape(self.values.shape[0], n_layers, -1, self.values.shape[-1])

    def ablated(self, parts: str | list[str], mode: str = "mean", reference: Decomposition | None = None) -> Decomposition:
        """The direct path of `parts` ablated (TextSpan's protocol): their contributions replaced by zero
        (mode="zero") or by their mean over `reference`'s items (mode="mean": another decomposition by the
        same model, e.g. of a dataset; by default these items), every other part as it was, so later layers
        still saw the clean values. Summed, the embedding as if the parts wrote nothing (or their mean)
        straight to the readout; `.logits` scores it as the model scores an embedding."""
        index, replacement = self._replacement(parts, mode, reference)
        values = self.values.clone()
        values[:, index] = replacement
        return Decomposition(values, list(self.labels))

    def ablated_total(self, parts: str | list[str], mode: str = "mean",
                      reference: Decomposition | None = None) -> torch.Tensor:
        """`ablated(parts, mode, reference).total()`, [n_items, dim], without copying every part (a sweep
        takes one per head)."""
        index, replacement = self._replacement(parts, mode, reference)
        return self.total() - self.values[:, index].sum(1) + replacement.sum(0)

    def _replacement(self, parts: str | list[str], mode: str,
                     reference: Decomposition | None) -> tuple[list[int], torch.Tensor]:
        """The parts' indices and what replaces them, [n_parts, dim] (the same for every item)."""
        parts = [parts] if isinstance(parts, str) else list(parts)
        unknown = [p for p in parts if p not in self.labels]
        if unknown or not parts:
            raise ValueError(f"no part {unknown[0]!r} in this decomposition; its labels run "
                             f"{self.labels[0]!r} ... {self.labels[-1]!r}" if unknown else "no parts given")
        if mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean' for the direct path, got {mode!r}")
        reference = self if reference is None else reference
        if reference.labels != self.labels:
            raise ValueError("the reference decomposition has other parts: decompose the reference with the same model")
        index = [self.labels.index(p) for p in parts]
        mean = reference.values[:, index].mean(0)
        return index, torch.zeros_like(mean) if mode == "zero" else mean

    def logits(self, model: CLIP, texts: str | list[str] | torch.Tensor) -> DirectLogits:
        """Each part's direct contribution to the logits against `texts` (captions, or text embeddings
        [n_texts, dim]): exp(scale) * <part, t / |t|> / |e|, with the image embedding's norm |e| fixed at the
        full embedding's (as the LayerNorm scale is); a model with a logit bias gets it as a part `logit_bias`.
        Summed over parts: `model(...).logits_per_image`."""
        text = text_embeds(model, texts).to(self.values.dtype)
        if text.shape[-1] != self.values.shape[-1]:
            raise ValueError(f"text embeddings are {text.shape[-1]}-dimensional but these parts are "
                             f"{self.values.shape[-1]}-dimensional: pass the same model's captions or embeddings")
        with torch.no_grad():
            norm = self.total().norm(dim=-1)[:, None, None]
            values = model.logits(self.values / norm, text, bias=False)  # the scale as the model clamps it
            labels = list(self.labels)
            if model.logit_bias is not None:
                bias = model.logit_bias.float().expand(values.shape[0], 1, values.shape[-1])
                values, labels = torch.cat([values, bias], dim=1), labels + ["logit_bias"]
        return DirectLogits(values, labels)


def decompose(model: CLIP, images: Any, per_position: bool = False) -> Decomposition:
    """Take each image's embedding (`model.encode_image`) apart into the direct contributions of the
    embedding, every attention head and every MLP (see `Decomposition`). images: PIL images, paths,
    arrays, or preprocessed pixel_values [B, 3, H, W]. One forward, no gradients."""
    tower = model._tower("vision")
    refuse(tower.cannot_decompose(), "decompose cannot take this image embedding apart")
    pixel_values, _ = prepare_images(model, images)
    pooled = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)  # the class token
    return _decompose(model, "vision", lambda: encode_images(model, pixel_values), pooled, per_position)


def decompose_text(model: CLIP, texts: str | list[str], per_position: bool = False) -> Decomposition:
    """Take each caption's embedding (`model.encode_text`) apart, at its pooled position (EOS, or the last
    position), as `decompose` does an image's; the embedding part is the token plus position embedding."""
    tower = model._tower("text")
    refuse(tower.cannot_decompose(), "decompose_text cannot take this text embedding apart")
    enc = model.tokenize(check_texts(texts))
    return _decompose(model, "text", lambda: model.encode_text(enc.input_ids, enc.attention_mask),
                      tower.pooled_positions(enc.input_ids), per_position)


def logit_lens(model: CLIP, images: Any, texts: str | list[str] | torch.Tensor) -> torch.Tensor:
    """[n_layers + 1, n_images, n_texts]: every block's output residual (index 0: the residual entering the
    blocks) read out as the last one is (ln_post and the class token, or ln_post and the pooling head; the
    projection), normalised and scored as the model scores; the last layer is `logits_per_image`.
    texts: captions, or text embeddings [n_texts, dim]."""
    tower = model._tower("vision")
    if tower.config.norm_position == "post":
        raise ValueError("logit_lens reads each block's residual as the last one is read, but the vision tower's "
                         "blocks are post-norm (norm_position='post'): every block normalises the stream anew")
    pixel_values, _ = prepare_images(model, images)
    text = text_embeds(model, texts)
    names = ["vision.blocks.0.hook_resid_pre"]
    names += [f"vision.blocks.{i}.hook_resid_post" for i in range(tower.n_layers)]
    with torch.no_grad():
        with model.recording(names) as cache:
            encode_images(model, pixel_values)
        embeds = torch.stack([tower.project(tower.pool(cache[name])[1]) for name in names])
        return scores(model, _normalize(embeds), text)


def _decompose(model: CLIP, name: str, run: Callable[[], Any], pooled: torch.Tensor,
               per_position: bool) -> Decomposition:
    """`run` one forward of tower `name` recording what the parts need, then take the residual at the
    `pooled` positions [n_items] apart and through the fixed readout."""
    tower: Tower = getattr(model, name)
    blocks = [f"{name}.blocks.{i}" for i in range(tower.n_layers)]
    names = [f"{blocks[0]}.hook_resid_pre", f"{blocks[-1]}.hook_resid_post"]
    names += [f"{b}.{point}" for b in blocks for point in ("attn.hook_z", "hook_mlp_out")]
    if per_position:
        names += [f"{b}.attn.{point}" for b in blocks for point in ("hook_pattern", "hook_v")]
    items = torch.arange(pooled.shape[0], device=pooled.device)
    with torch.no_grad():
        with model.recording(names) as cache:
            run()

        def at_pooled(point: str) -> torch.Tensor:
            return cache[point][items, pooled].float()

        parts, labels = [at_pooled(names[0])[:, None]], [f"{name}.embed"]
        heads = []
        for block, label in zip(tower.blocks, blocks):
            attn = block.attn
            z = at_pooled(f"{label}.attn.hook_z")  # [items, head, d_head]
            parts.append(attn.head_results(z))
            labels += [f"{label}.attn.head.{h}" for h in range(attn.num_heads)]
            if attn.out_proj.bias is not None:  # AIMv2's attention has none
                parts.append(attn.out_proj.bias.float().expand(len(items), 1, -1))
                labels.append(f"{label}.attn.bias")
            parts.append(at_pooled(f"{label}.hook_mlp_out")[:, None])
            labels.append(f"{label}.mlp")
            if per_position:
                pattern = cache[f"{label}.attn.hook_pattern"][items, :, pooled].float()  # [items, head, key]
                value_vectors = cache[f"{label}.attn.hook_v"].float()  # [items, key, head, d_head]
                by_key = pattern.transpose(1, 2)[..., None] * value_vectors  # [items, key, head, d_head]
                heads.append(attn.head_results(by_key).transpose(1, 2))  # [items, head, key, d]
        readout = tower.linear_readout(at_pooled(names[1]))
        values = torch.cat([readout(torch.cat(parts, dim=1)), *readout.bias_parts(len(items))], dim=1)
        per_position_parts = readout(torch.stack(heads, dim=1)) if per_position else None
    return Decomposition(values, labels + readout.bias_labels, per_position_parts)
