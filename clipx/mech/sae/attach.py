"""An SAE attached at its hook point: its features recorded on every forward, and optionally spliced in,
the activation replaced by the SAE's reconstruction so that later layers see only what the SAE keeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ...model.inputs import prepare_images
from ...model.hooks import HookPoint
from ...model.clip import CLIP
from .autoencoder import SparseAutoencoder, skipped_tokens


class AttachedSAE:
    """What `attach_sae` yields: `features` [batch, positions, d_sae] of the latest forward (None before
    one), over every position of the hook, whichever positions are spliced."""

    def __init__(self, sae: SparseAutoencoder, splice: bool, positions: str) -> None:
        self.sae, self.splice, self.positions = sae, splice, positions
        self.features: torch.Tensor | None = None


@contextmanager
def attach_sae(model: CLIP, sae: SparseAutoencoder, splice: bool = False,
               positions: str | None = None) -> Iterator[AttachedSAE]:
    """Inside the block, every forward of this thread records the SAE's features at its hook point
    (`sae.config.hook_name`). With `splice=True` the activation at `positions` ("patches" or "all"; by
    default those the SAE was trained on) is replaced by the reconstruction.

    Splicing a CLIP's patches at the last block changes nothing downstream: the image is read at the
    class token. Splice "all" there, or train on an earlier block, to see an effect on the logits."""
    name = sae.config.hook_name
    model.hook_point(name)  # a KeyError naming an unknown hook
    positions = positions or sae.config.positions
    skip = skipped_tokens(model, positions)
    attached = AttachedSAE(sae, splice, positions)

    def hook(x: torch.Tensor, point: HookPoint) -> torch.Tensor | None:
        if x.shape[-1] != sae.config.d_in:
            raise ValueError(f"the SAE reads {sae.config.d_in}-wide activations but hook {name!r} carries "
                             f"{x.shape[-1]}-wide ones: it was trained on another model's {name}")
        inputs = x.to(sae.b_dec.dtype)
        features = sae.encode(inputs)
        attached.features = features
        if not splice:
            return None
        reconstruction = sae.decode(features[:, skip:], inputs[:, skip:]).to(x.dtype)
        return torch.cat([x[:, :skip], reconstruction], dim=1)

    with model.hooks(fwd_hooks=[(name, hook)]):
        yield attached


@dataclass
class SpliceEffect:
    """logits_per_image [n_images, n_texts] without and with the SAE spliced in."""

    clean: torch.Tensor
    spliced: torch.Tensor

    @property
    def change(self) -> torch.Tensor:
        return self.spliced - self.clean

    @property
    def agreement(self) -> float:
        """The share of images whose best caption stays the same."""
        return float((self.spliced.argmax(1) == self.clean.argmax(1)).float().mean())


def splice_effect(model: CLIP, sae: SparseAutoencoder, images: Any, captions: str | list[str],
                  positions: str | None = None) -> SpliceEffect:
    """The logits of `images` against `captions`, clean and with the SAE spliced in at `positions`."""
    pixel_values, _ = prepare_images(model, images)
    enc = model.tokenize([captions] if isinstance(captions, str) else list(captions))
    inputs = dict(pixel_values=pixel_values, input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with torch.no_grad():
        clean = model(**inputs).logits_per_image
        with attach_sae(model, sae, splice=True, positions=positions):
            spliced = model(**inputs).logits_per_image
    return SpliceEffect(clean.float(), spliced.float())
