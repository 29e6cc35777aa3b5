"""What interventions do to the logits: a sweep over every head of the image tower, each ablated alone,
its effect on each image's target caption logit as a layer x head table; and activation patching's
effect on every caption's logit.

Two effects, which rank heads differently and are worth setting side by side:
- "total": the head's output ablated for every later layer (`clipx.ablate`), indirect paths included;
- "direct": only the head's own contribution to the embedding ablated (`Decomposition.ablated`, TextSpan's
  protocol), later layers still seeing its clean output.
A head with a small direct effect can matter through the layers after it; the two tables show which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .ablation import ablate, patch, run_inputs
from .decompose import decompose
from ..model.inputs import encode_images, prepare_images, scores, text_embeds
from ..model.clip import CLIP, _normalize

EFFECTS = ("total", "direct")


@dataclass
class HeadTable:
    """values [n_layers, n_heads]: the mean change in the target caption's logit when that head alone is
    ablated (negative: the head supports the caption)."""

    values: torch.Tensor
    tower: str
    effect: str
    mode: str

    def label(self, layer: int, head: int) -> str:
        return f"{self.tower}.blocks.{layer}.attn.head.{head}"

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k heads whose ablation lowers the target logits most, as (label, mean change), largest drop first."""
        flat = self.values.flatten()
        order = flat.argsort()[:min(k, flat.numel())]
        n_heads = self.values.shape[1]
        return [(self.label(int(i) // n_heads, int(i) % n_heads), float(flat[i])) for i in order]

    def __str__(self) -> str:
        heads = range(self.values.shape[1])
        lines = [f"{self.effect} effect of {self.mode}-ablating each {self.tower} head on the target logit",
                 "| layer | " + " | ".join(f"head {h}" for h in heads) + " |",
                 "|---|" + "---:|" * len(heads)]
        lines += [f"| {layer} | " + " | ".join(f"{float(v):+.3f}" for v in row) + " |"
                  for layer, row in enumerate(self.values)]
        return "\n".join(lines)

    def plot(self, ax=None):
        """A heatmap of the table (red: ablating the head lowers the logit), on `ax` or a new figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1 + 0.6 * self.values.shape[1], 1 + 0.5 * self.values.shape[0]))
        limit = float(self.values.abs().max()) or 1.0
        image = ax.imshow(self.values.numpy(), cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.effect} effect ({self.mode}-ablation)")
        ax.figure.colorbar(image, ax=ax, label="change in target logit")
        return ax


def sweep_heads(model: CLIP, images: Any, texts: str | list[str] | torch.Tensor,
                targets: list[int] | torch.Tensor | None = None, effect: str = "total", mode: str = "mean",
                reference: Any = None, progress: bool = True) -> HeadTable:
    """Ablate each vision head alone and average, over the images, the change in the target caption's
    logit. texts: captions or text embeddings [n_texts, dim]; targets: each image's caption index (by
    default the caption it scores highest). mode: "zero" or "mean" (over `reference` images, by default
    these images); "resample" too for the total effect. One forward per head for "total" (and one of the
    reference), one in all for "direct"."""
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {', '.join(EFFECTS)}, got {effect!r}")
    if effect == "direct" and mode == "resample":
        raise ValueError("the direct effect takes mode 'zero' or 'mean'; resample-ablation is a total effect")
    pixel_values, _ = prepare_images(model, images)
    reference_pixels = pixel_values if reference is None else run_inputs(model, reference)["pixel_values"]
    text = text_embeds(model, texts)
    vision = model._tower("vision")
    labels = [f"vision.blocks.{layer}.attn.head.{h}" for layer in range(vision.n_layers) for h in range(vision.n_heads)]

    if effect == "direct":
        parts = decompose(model, pixel_values)
        reference_parts = parts if reference is None else decompose(model, reference_pixels)
        clean = scores(model, _normalize(parts.total()), text)
        ablated = (scores(model, _normalize(parts.ablated_total(label, mode, reference_parts)), text)
                   for label in tqdm(labels, desc="heads", disable=not progress))
    else:
        clean = image_logits(model, pixel_values, text)
        recorded = None
        if mode != "zero":
            with torch.no_grad(), model.recording("vision.blocks.*.attn.hook_z") as recorded:
                encode_images(model, reference_pixels)  # one recording serves every head's ablation

        def run(label: str) -> torch.Tensor:
            with ablate(model, label, mode, recorded):
                return image_logits(model, pixel_values, text)
        ablated = (run(label) for label in tqdm(labels, desc="heads", disable=not progress))

    target = _targets(targets, clean)
    rows = torch.arange(len(target))
    changes = torch.stack([(logits - clean)[rows, target].mean() for logits in ablated])
    return HeadTable(changes.view(vision.n_layers, -1).cpu(), "vision", effect, mode)


def patching_effect(model: CLIP, parts: str | list[str], source: Any, target: Any,
                    texts: str | list[str] | torch.Tensor) -> torch.Tensor:
    """[n_targets, n_texts]: the change in each caption's logit for each target image when `parts` write
    what they wrote for the source image (one source, or one per target; see `clipx.patch`). texts:
    captions or text embeddings. Positive: the source's parts push the caption up in the target's run."""
    pixel_values, _ = prepare_images(model, target)
    text = text_embeds(model, texts)
    with patch(model, parts, source):
        patched = image_logits(model, pixel_values, text)
    return patched - image_logits(model, pixel_values, text)


def image_logits(model: CLIP, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """logits_per_image against unit text embeddings, as the model scores them."""
    with torch.no_grad():
        return scores(model, _normalize(encode_images(model, pixel_values).float()), text)


def _targets(targets: Any, clean: torch.Tensor) -> torch.Tensor:
    if targets is None:
        return clean.argmax(1)
    targets = torch.as_tensor(targets)
    if targets.shape != clean.shape[:1] or targets.is_floating_point():
        raise ValueError(f"targets must hold one caption index per image ({clean.shape[0]}), got shape "
                         f"{tuple(targets.shape)}")
    if not ((0 <= targets) & (targets < clean.shape[1])).all():
        raise ValueError(f"targets must be caption indices in [0, {clean.shape[1]}), got {targets.tolist()}")
    return targets.to(clean.device)
