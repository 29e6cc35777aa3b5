"""What the perturbation methods (occlusion, RISE) share: scoring images against captions encoded
once, the baselines that stand in for hidden pixels, and the batched loop over perturbed images.

The text side is fixed per caption, so one forward of a perturbed image scores every caption:
B images x T captions with n perturbations each cost B x (n + 1) image forwards and one text
forward, whatever T is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...eval import metrics
from ...errors import check_int
from ...model.clip import CLIP
from ..core import Inputs

BASELINES = ("zero", "mean", "blur")
PROGRESS_MIN = 256  # perturbed images from which a progress bar is worth showing


@dataclass
class Captions:
    """The captions of an explain call encoded once, for scoring any number of image embeddings."""

    model: CLIP
    embeds: torch.Tensor         # [T, D], normalised

    @classmethod
    def encode(cls, x: Inputs) -> "Captions":
        with torch.no_grad():
            return cls(x.model, F.normalize(x.model.encode_text(x.input_ids, x.attention_mask), dim=-1))

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings [..., D] -> logits [..., T], as `model(...).logits_per_image` makes
        them, through a hook on `hook_logits_per_image` too (`model.hooked_logits`)."""
        flat = self.model.hooked_logits(image_embeds.reshape(-1, image_embeds.shape[-1]), self.embeds)
        return flat.reshape(*image_embeds.shape[:-1], -1)

    def drops(self, embeds: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """logit(image) - logit(perturbed image), [B, 1, D] and [B, n, D] -> [B, n, T]. From the embeddings'
        difference, whose logit the bias does not enter (logits of ~25 would round a small drop to their own
        ulp); where a hook on `hook_logits_per_image` defines the score, the difference of hooked logits."""
        if self.model.hook_logits_per_image.fwd_hooks:
            return self.logits(embeds) - self.logits(perturbed)
        diff = embeds - perturbed
        return self.model.logits(diff.reshape(-1, diff.shape[-1]), self.embeds, bias=False).reshape(*diff.shape[:-1], -1)


def image_embeddings(x: Inputs, pixel_values: torch.Tensor) -> torch.Tensor:
    """pixel_values [n, 3, H, W] -> normalised image embeddings [n, D]."""
    return F.normalize(x.model.encode_image(pixel_values, x.interpolate_pos_encoding), dim=-1)


def baseline_images(pixel_values: torch.Tensor, baseline: str) -> torch.Tensor:
    """What replaces hidden pixels, [B, 3, H, W], in normalised pixel space: "zero" (all zeros, i.e. the
    processor's mean colour), "mean" (each image's own mean colour), "blur" (each image blurred, as the
    deletion curves' baseline: `metrics.baseline_image`)."""
    if baseline == "zero":
        return torch.zeros_like(pixel_values)
    return torch.cat([metrics.baseline_image(image[None], baseline) for image in pixel_values])


def check_baseline(baseline: str) -> None:
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(map(repr, BASELINES))}, got {baseline!r}")


def check_batch_size(batch_size: int) -> int:
    return check_int("batch_size", batch_size, minimum=1)


def perturbed_embeddings(x: Inputs, n: int, perturb: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
                         baseline: str, batch_size: int, progress: bool | None, desc: str) -> torch.Tensor:
    """[B, 1 + n, D]: the normalised embedding of each image as given (row 0) and of its n perturbations
    (rows 1..n), for `Captions.logits` to score against every caption; `perturb(image [3, H, W],
    baseline [3, H, W], k)` makes perturbations `k` (a slice) as [len(k), 3, H, W].

    Each image's batches hold only that image's perturbations, so its embeddings are the same whichever
    other images are explained with it. progress: a tqdm bar; None shows one from PROGRESS_MIN
    perturbed images on.
    """
    n_images = x.pixel_values.shape[0]
    total = n_images * (n + 1)
    # tqdm's disable=None: shown in a terminal or notebook, not in logs or under pytest
    disable = (None if total >= PROGRESS_MIN else True) if progress is None else not progress
    rows = []
    with torch.no_grad(), tqdm(total=total, desc=desc, disable=disable) as bar:
        base = baseline_images(x.pixel_values, baseline)
        for image, background in zip(x.pixel_values, base):
            row = [image_embeddings(x, image[None])]
            for start in range(0, n, batch_size):
                row.append(image_embeddings(x, perturb(image, background, slice(start, min(start + batch_size, n)))))
                bar.update(len(row[-1]) + (start == 0))
            rows.append(torch.cat(row))
    return torch.stack(rows)
