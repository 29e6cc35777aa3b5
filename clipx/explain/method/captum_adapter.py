"""Any Captum attribution class as an explanation method: `explain(model, images, texts,
method=captum.attr.Saliency, **options)`, the options going to its `attribute`.

Captum's forward is the image input -> the logits of every caption (the captions encoded once,
`perturbation.Captions`), and each pair's target is its caption: the B images are repeated once
per caption and attributed in one `attribute` call, with targets 0..T-1 for each image
(a `baselines` tensor with one image per input image is repeated the same way). Plain attributions
act on the pixels; layer attributions (`captum.attr.LayerGradCam`, `LayerIntegratedGradients`, ...)
on the patch tokens as the blocks receive them before positions (`vision.hook_embed`, the patch
embedding's output, after a patch norm where the family has one), laid out as the [d, grid_h, grid_w]
map a convolution gives, for every patch embedding. The attribution becomes the [grid_h, grid_w] map as
the other methods reduce theirs, signed: a pixel attribution [3, H, W] summed over channels and over each
patch's pixels (Saliency's |gradient| stays positive; Integrated Gradients' completeness survives);
a layer attribution [d, grid_h, grid_w] summed over d. Image only.

Captum hooks the layer with torch module hooks, which every thread would share: it gets a module of this
call's own instead, which only this thread's forwards pass through (a clipx hook, private to the thread,
routes the patch tokens through it), so other threads explaining with the model never meet them.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..core import Inputs, Maps, Method
from .perturbation import Captions, image_embeddings

# the adapter sets these; return_convergence_delta would change what attribute returns
OWN_ARGUMENTS = ("self", "inputs", "target", "additional_forward_args", "return_convergence_delta")


def captum_method(cls: Any) -> tuple[str, Method, dict[str, Any]]:
    """(name, method, its options and defaults) for a Captum attribution class; a TypeError naming
    anything else."""
    from captum.attr import Attribution, GradientAttribution

    if not (inspect.isclass(cls) and issubclass(cls, Attribution)):
        raise TypeError(f"method {_name(cls)} is not a Captum attribution class (a subclass of "
                        "captum.attr.Attribution) nor a method's name; clipx.methods() lists the names")
    built_from = list(inspect.signature(cls.__init__).parameters)[1:]
    first = built_from[0] if built_from else None
    if first not in ("forward_func", "model"):
        raise TypeError(f"method {_name(cls)} is not built from a model (its first argument is {first!r}); "
                        "clipx runs Captum attributions built as cls(forward_func) or cls(forward_func, layer)")
    parameters = inspect.signature(cls.attribute).parameters.values()
    allowed = {p.name: p.default for p in parameters
               if p.name not in OWN_ARGUMENTS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    layer = "layer" in built_from  # LayerGradCam, LayerIntegratedGradients, GuidedGradCam, ...
    gradients = issubclass(cls, GradientAttribution)

    def method(x: Inputs, **options: Any) -> Maps:
        return _attribute(x, cls, layer, gradients, options)

    return f"captum.{cls.__name__}", method, allowed


class _Logits(torch.nn.Module):
    """The forward Captum attributes: pixel_values -> logits [n, T]; a Module, for classes built from one."""

    def __init__(self, x: Inputs) -> None:
        super().__init__()
        self.clip, self.x, self.captions = x.model, x, Captions.encode(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.captions.logits(image_embeddings(self.x, pixel_values))


def _attribute(x: Inputs, cls: type, layer: bool, gradients: bool, options: dict[str, Any]) -> Maps:
    forward = _Logits(x)
    n_images, n_texts = x.pixel_values.shape[0], len(x.texts)
    with torch.no_grad():
        scores = forward(x.pixel_values)
    # pair (i, j) at row i * T + j: image i, target caption j
    inputs = x.pixel_values.repeat_interleave(n_texts, 0).requires_grad_(gradients)  # else Captum warns
    baselines = options.get("baselines")
    if isinstance(baselines, torch.Tensor) and baselines.dim() == 4 and baselines.shape[0] == n_images:
        options = {**options, "baselines": baselines.to(inputs).repeat_interleave(n_texts, 0)}
    targets = list(range(n_texts)) * n_images
    with torch.enable_grad():
        if not layer:
            attr = cls(forward).attribute(inputs, target=targets, **options)
        else:
            tap = torch.nn.Identity()  # this call's own layer for Captum to hook
            with x.model.hooks(fwd_hooks=[("vision.hook_embed", _through(tap, x))]):
                attr = cls(forward, tap).attribute(inputs, target=targets, **options)
    return Maps(scores, _patch_map(x, attr.detach()).reshape(n_images, n_texts, *x.grid))


def _through(tap: torch.nn.Module, x: Inputs):
    """A hook at vision.hook_embed that passes the patch tokens [B, prefix + n, d] through `tap` as the
    grid [B, d, grid_h, grid_w], and takes back what Captum's hooks on `tap` make of them."""
    prefix, (grid_h, grid_w) = x.prefix, x.grid

    def hook(tokens: torch.Tensor, _) -> torch.Tensor:
        grid = tokens[:, prefix:].transpose(1, 2).reshape(len(tokens), -1, grid_h, grid_w)
        return torch.cat([tokens[:, :prefix], tap(grid).flatten(2).transpose(1, 2)], dim=1)

    return hook


def _patch_map(x: Inputs, attr: torch.Tensor) -> torch.Tensor:
    """[N, C, grid_h, grid_w] (a layer's) or [N, C, H, W] (pixels') -> [N, grid_h, grid_w], signed sums."""
    (gh, gw), patch = x.grid, x.model.vision.config.patch_size
    summed = attr.sum(1)
    if summed.shape[-2:] == (gh, gw):
        return summed
    # pixels past the last whole patch never reach the model
    return summed[:, :gh * patch, :gw * patch].reshape(-1, gh, patch, gw, patch).sum((2, 4))


def _name(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{obj!r} ({type(obj).__name__})"
