"""High-norm tokens: patches whose residual stream grows far larger than the others'.

Large ViTs (CLIP B/16 and L/14 among them) recycle some background patches as scratch space: after
the middle layers those tokens carry norms many times the median patch's, and other tokens, the class
token included, attend to them whatever the image shows (Darcet et al., "Vision Transformers Need
Registers", ICLR 2024). Attention-based maps then light up background patches. A patch counts as
high-norm in a layer when its output norm (`hook_resid_post`) exceeds `ratio` times the median patch
norm of its image in that layer: relative, because a model's norms grow with depth and width.

`high_norm_tokens` reports them per layer; the attention-based methods take `exclude_high_norm=ratio`
to drop the patches flagged in any layer as attention keys (`keep_keys`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..model.hooks import Cache
from ..model.inputs import encode_images, prepare_images
from ..model.clip import CLIP

DEFAULT_RATIO = 3.0


def resid_names(model: CLIP) -> list[str]:
    return [f"vision.blocks.{i}.hook_resid_post" for i in range(len(model.vision.blocks))]


def check_ratio(ratio: Any, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 1:
        raise ValueError(f"{name} must be a number above 1 (times the median patch norm), got {ratio!r}")
    return float(ratio)


def patch_norms(model: CLIP, cache: Cache) -> torch.Tensor:
    """The patch tokens' output norms after each vision block, [n_layers, n_images, n_patches]."""
    prefix = model.vision.prefix_tokens
    return torch.stack([cache[name].detach()[:, prefix:].float().norm(dim=-1) for name in resid_names(model)])


def flagged(norms: torch.Tensor, ratio: float) -> torch.Tensor:
    """[..., n_patches] norms -> which exceed `ratio` times their row's median."""
    return norms > ratio * norms.median(-1, keepdim=True).values


def keep_keys(model: CLIP, cache: Cache, ratio: float | None) -> torch.Tensor | None:
    """[n_images, n_tokens] 1 for tokens kept as attention keys, 0 for patches high-norm in any layer (a
    prefix token is always kept); None where `ratio` is None. `cache` holds `resid_names(model)`, recorded
    by a run that `Inputs.high_norm_names` checked `ratio` for."""
    if ratio is None:
        return None
    high = flagged(patch_norms(model, cache), ratio).any(0)
    prefix = torch.zeros(high.shape[0], model.vision.prefix_tokens, dtype=torch.bool, device=high.device)
    dtype = cache[resid_names(model)[0]].dtype
    return (~torch.cat([prefix, high], dim=1)).to(dtype)


@dataclass
class HighNormTokens:
    """Per layer and image, each patch's output norm; `mask` flags those above `ratio` times the median."""

    norms: torch.Tensor        # [n_layers, n_images, n_patches]
    ratio: float
    grid: tuple[int, int]

    @property
    def mask(self) -> torch.Tensor:
        """[n_layers, n_images, grid_h, grid_w] bool."""
        return flagged(self.norms, self.ratio).reshape(*self.norms.shape[:2], *self.grid)

    @property
    def relative(self) -> torch.Tensor:
        """Each norm over its image's median in that layer, [n_layers, n_images, grid_h, grid_w]."""
        norms = self.norms / self.norms.median(-1, keepdim=True).values
        return norms.reshape(*norms.shape[:2], *self.grid)

    @property
    def any_layer(self) -> torch.Tensor:
        """[n_images, grid_h, grid_w]: the patches flagged in some layer (what `exclude_high_norm` drops)."""
        return self.mask.any(0)

    def patches(self, layer: int = -1, image: int = 0) -> list[tuple[int, int]]:
        """(row, column) of the high-norm patches of one image in one layer."""
        return [tuple(p) for p in self.mask[layer, image].nonzero().tolist()]

    def __str__(self) -> str:
        mask, relative = self.mask, self.relative
        n_images = mask.shape[1]
        rows = ["| layer | largest norm / median | high-norm patches | images with one |", "|---:|---:|---:|---:|"]
        for layer in range(mask.shape[0]):
            rows.append(f"| {layer} | {relative[layer].max():.2f} | {int(mask[layer].sum())} | "
                        f"{int(mask[layer].flatten(1).any(1).sum())} of {n_images} |")
        return f"patches above {self.ratio:g} x the median patch norm, per layer\n\n" + "\n".join(rows)

    def __repr__(self) -> str:
        n_layers, n_images = self.norms.shape[:2]
        return (f"HighNormTokens({n_layers} layers x {n_images} images of {self.grid[0]}x{self.grid[1]} patches, "
                f"ratio {self.ratio:g}: {int(self.mask.sum())} high-norm)")

    def _repr_markdown_(self) -> str:
        return str(self)

    def plot(self, image: int = 0):
        """One panel per layer: each patch's norm over the median, the flagged ones outlined."""
        import matplotlib.pyplot as plt

        relative, mask = self.relative[:, image], self.mask[:, image]
        n = relative.shape[0]
        cols = min(n, 6)
        fig, axes = plt.subplots(-(-n // cols), cols, figsize=(2 * cols, 2 * -(-n // cols)), squeeze=False)
        top = max(float(relative.max()), self.ratio)
        for layer, ax in enumerate(axes.flat):
            ax.axis("off")
            if layer >= n:
                continue
            ax.imshow(relative[layer].numpy(), vmin=0, vmax=top, cmap="magma")
            for r, c in mask[layer].nonzero().tolist():
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="cyan", lw=1.5))
            ax.set_title(f"layer {layer}", fontsize=8)
        fig.suptitle(f"patch norm / median (outlined: above {self.ratio:g})", fontsize=9)
        plt.close(fig)
        return fig


def high_norm_tokens(model: CLIP, images: Any, ratio: float = DEFAULT_RATIO) -> HighNormTokens:
    """Every image's patch norms after each vision block, and which are high-norm (above `ratio` times the
    median patch of that image and layer). images: as `clipx.explain` takes them."""

    ratio = check_ratio(ratio)
    model._tower("vision")
    pixel_values, _ = prepare_images(model, images)
    with torch.no_grad(), model.recording(resid_names(model)) as cache:
        encode_images(model, pixel_values)
    return HighNormTokens(patch_norms(model, cache).cpu(), ratio, model.vision.patch_grid(pixel_values))
