"""What every explanation method shares: the prepared inputs, one recorded forward for the
whole batch, and the batched backward passes that give per-pair gradients.

Per-pair gradients without a forward per pair: logit[i, j] depends on image i only through
image i's activations and on caption j only through caption j's. So one backward of
`logits[:, j].sum()` gives, for every image i at once, the gradient of logit[i, j] with respect
to image i's activations; and one backward of `logits[i, :].sum()` gives every caption's
text-side gradient for image i. A batch of B images x T captions costs T + B backward passes
over one retained graph, each only as deep as the activations asked for.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..mech.high_norm import check_ratio, keep_keys, resid_names
from ..errors import check_int
from ..model.hooks import Cache
from ..model.clip import CLIP, CLIPOutput


@dataclass
class Maps:
    """What a method returns; `explain` adds the rest of the Explanation."""

    scores: torch.Tensor
    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    token_maps: torch.Tensor | None = None


KINDS = ("signed", "positive", "level")


@dataclass(frozen=True)
class Values:
    """What a method's maps hold, so that pictures draw them honestly (`legend.Scale`). kind: "signed" (zero
    means no effect and either sign can occur: drawn diverging around zero), "positive" (never below zero:
    drawn sequential from zero) or "level" (only differences mean something, such as an expected logit:
    drawn sequential from the smallest value); label: what the value is, for the colour bar."""

    kind: str
    label: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Values kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


Method = Callable[..., Maps]
METHODS: dict[str, Method] = {}
VALUES: dict[str, Values] = {}
# methods whose image map is the same for every caption (no gradient, no caption in it)
CAPTION_BLIND: set[str] = set()


def register(name: str, values: Values, caption_blind: bool = False) -> Callable[[Method], Method]:
    """Adds a method under `name`; `values` says what its maps hold (every method must say: a picture
    cannot tell a signed map from a non-negative one by its data)."""
    def add(fn: Method) -> Method:
        METHODS[name] = fn
        VALUES[name] = values
        if caption_blind:
            CAPTION_BLIND.add(name)
        return fn
    return add


def defaults(method: str) -> dict[str, Any]:
    """The options of a method, by the name an Explanation records, and their defaults: a registered method's,
    or a Captum class's (`captum.Saliency`: its `attribute`'s keyword defaults); {} for a name neither knows."""
    if method in METHODS:
        return {p.name: p.default for p in list(inspect.signature(METHODS[method]).parameters.values())[1:]}
    if method.startswith("captum."):
        import captum.attr  # imported here: Captum costs `import clipx` half a second

        cls = getattr(captum.attr, method.removeprefix("captum."), None)
        if inspect.isclass(cls):
            return {p.name: p.default for p in inspect.signature(cls.attribute).parameters.values()
                    if p.default is not p.empty}
    return {}


@dataclass
class Inputs:
    model: CLIP
    pixel_values: torch.Tensor         # [B, 3, H, W]
    input_ids: torch.Tensor            # [T, L]
    attention_mask: torch.Tensor       # [T, L]
    texts: list[str]
    content_mask: torch.Tensor         # [T, L] the captions' own tokens (attention_mask, except where pads are inputs)
    crop_boxes: list[tuple[float, float, float, float]] | None = None  # per image, in original pixels
    image_sizes: list[tuple[int, int]] | None = None                  # per image (width, height)
    interpolate_pos_encoding: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.vision.patch_grid(self.pixel_values)

    @property
    def pooled_positions(self) -> torch.Tensor:
        """[T] where each caption is pooled (its EOS, or the last position)."""
        return self.model.text.pooled_positions(self.input_ids)

    @property
    def prefix(self) -> int:
        """How many tokens precede the patches in the vision tower (a class token: 1)."""
        return self.model.vision.prefix_tokens

    @property
    def readout_names(self) -> list[str]:
        """The hook points of the image readout's own attention: the pooling head's pattern, where the
        model pools through one; none for a class token, whose row in each layer's matrix is the readout."""
        return ["vision.head.attn.hook_pattern"] if self.model.vision.head is not None else []

    def layers(self, tower: str, start_layer: int, name: str = "start_layer") -> range:
        """Block indices from `start_layer` (negative counts from the end: -1 = last) to the last;
        `name` is the option the user passed it as, for the errors."""
        start_layer = check_int(name, start_layer)
        n = getattr(self.model, tower).n_layers
        start = start_layer + n if start_layer < 0 else start_layer
        if not 0 <= start < n:
            raise ValueError(f"{name} {start_layer} is outside the {tower} tower's {n} blocks "
                             f"(use 0..{n - 1}, or -1..-{n} from the end)")
        return range(start, n)

    def keep_keys(self, cache: Cache, exclude_high_norm: float | None) -> torch.Tensor | None:
        """[B, n] 1 for the vision tokens kept as attention keys, 0 for high-norm patches (`clipx.mech.high_norm`);
        None where `exclude_high_norm` is None. `cache` holds `high_norm_names(exclude_high_norm)`."""
        return keep_keys(self.model, cache, exclude_high_norm)

    def high_norm_names(self, exclude_high_norm: float | None) -> list[str]:
        """The hook points the high-norm detector reads, where the option asks for it (checked before a run)."""
        if exclude_high_norm is None:
            return []
        check_ratio(exclude_high_norm, "exclude_high_norm")
        return resid_names(self.model)

    def run(self, names: Sequence[str] = (), requires_grad: bool = False) -> tuple[CLIPOutput, Cache]:
        """One forward of all images and all captions, recording `names`."""
        with torch.set_grad_enabled(requires_grad), self.model.recording(list(names), requires_grad) as cache:
            out = self.model(pixel_values=self.pixel_values, input_ids=self.input_ids,
                             attention_mask=self.attention_mask,
                             interpolate_pos_encoding=self.interpolate_pos_encoding)
        return out, cache

    def patch_grid(self, per_patch: torch.Tensor) -> torch.Tensor:
        """[..., n_patches] -> [..., grid_h, grid_w]"""
        return per_patch.reshape(*per_patch.shape[:-1], *self.grid)


def _grads(target: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(target, tensors, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


def per_caption(logits: torch.Tensor, tensors: list[torch.Tensor],
                reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
    """For image-side `tensors` (batch dim = images): `reduce(grads)` for every caption j, where
    grads[k][i] = d logits[i, j] / d tensors[k][i]. Returns [n_images, n_texts, ...]."""
    return torch.stack([reduce(_grads(logits[:, j].sum(), tensors)).detach()
                        for j in range(logits.shape[1])], dim=1)


def per_image(logits: torch.Tensor, tensors: list[torch.Tensor],
              reduce: Callable[[list[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
    """For text-side `tensors` (batch dim = captions): `reduce(grads)` for every image i, where
    grads[k][j] = d logits[i, j] / d tensors[k][j]. Returns [n_images, n_texts, ...]."""
    return torch.stack([reduce(_grads(logits[i, :].sum(), tensors)).detach()
                        for i in range(logits.shape[0])], dim=0)


def drop_keys(pattern: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """[B, ..., n] attention (or relevance) over keys, with the keys `keep` [B, n] marks 0 set to 0."""
    if keep is None:
        return pattern
    return pattern * keep.view(keep.shape[0], *([1] * (pattern.dim() - 2)), keep.shape[1])


def pattern_names(tower: str, layers: range) -> list[str]:
    return [f"{tower}.blocks.{i}.attn.hook_pattern" for i in layers]


def text_rows(matrix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[..., T, L, L] relevance or attention matrices -> the pooled position's query row of each caption
    (its EOS, or the last position), [..., T, L]."""
    index = positions.view(*([1] * (matrix.dim() - 3)), -1, 1, 1).expand(*matrix.shape[:-3], -1, 1, matrix.shape[-1])
    return matrix.gather(-2, index).squeeze(-2)


def image_rows(x: Inputs, matrix: torch.Tensor, readout: torch.Tensor | None = None) -> torch.Tensor:
    """[B, n, n] relevance or attention matrices -> the readout's row over the patches, [B, n_patches]:
    the class token's row; or, where an attention-pooling head reads the image, `readout` [B, n] (the
    probe's weights over the tokens, see `probe_weights`) times the matrix."""
    rows = matrix[:, 0] if readout is None else (readout[:, None] @ matrix)[:, 0]
    return rows[:, x.prefix:]


def probe_weights(x: Inputs, cache: Cache, keep: torch.Tensor | None = None) -> torch.Tensor | None:
    """The pooling head's attention over the tokens (the keys `keep` marks 0 dropped), mean over its heads,
    [B, n]; None for a class token."""
    if not x.readout_names:
        return None
    return drop_keys(cache[x.readout_names[0]].mean(1)[:, 0], keep)


def pooled_rows(x: Inputs, vision: torch.Tensor, text: torch.Tensor, cache: Cache,
                keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps read off [B, n, n] vision and [T, L, L] text matrices without gradients, so the same for
    every caption (image map: the readout's row over the patches) and every image (text map: the
    pooled position's row) -> [B, T, grid_h, grid_w] and [B, T, L]. `cache` holds `x.readout_names`;
    `keep` [B, n]: the vision keys kept (see `drop_keys`)."""
    n_images, n_texts = vision.shape[0], text.shape[0]
    readout = probe_weights(x, cache, keep)
    image = x.patch_grid(image_rows(x, vision, readout))[:, None].expand(-1, n_texts, -1, -1)
    text_map = text_rows(text, x.pooled_positions)[None].expand(n_images, -1, -1)
    return image.contiguous(), text_map.contiguous()
