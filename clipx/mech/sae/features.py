"""Reading an SAE feature: where it fires (its top patches over a set of images) and what its decoder
direction says in the joint space (its nearest captions).

The nearest captions rest on an approximation. The readout from a residual token to the image embedding
is nonlinear: the final LayerNorm divides by the token's own scale. Taken as if the direction were written
into the class token's final residual, with that scale fixed, what survives is linear: the LayerNorm
centres it and multiplies it by its gain (`ln_post.weight`; its bias moves every point alike, so a
direction drops it), then the projection. So `readout_directions` is (d - mean d) * gain @ proj, compared
with caption embeddings by cosine: a reading of what the direction pushes towards, not of what the model
outputs when the feature fires. It also ignores the blocks between an earlier hook and the readout.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ...model.inputs import text_embeds
from ...model.clip import CLIP, _normalize
from ...model.towers import refuse
from .autoencoder import SparseAutoencoder
from .training import hook_activations


class PatchActivation(NamedTuple):
    image: int
    row: int
    col: int
    activation: float


def feature_activations(model: CLIP, sae: SparseAutoencoder, images: Any, batch_size: int = 64) -> torch.Tensor:
    """Every feature on every patch: [n_images, grid_h, grid_w, d_sae]. images: pixel values, a list of
    images or a Dataset (as `train_sae` takes them)."""
    n = model.vision.config.grid_size
    with torch.no_grad():
        batches = [sae.encode(x.to(sae.b_dec.dtype)) for x in
                   hook_activations(model, sae.config.hook_name, images, "patches", batch_size)]
    features = torch.cat(batches)
    if features.shape[1] != n * n:
        raise ValueError(f"{features.shape[1]} patches do not make the model's {n}x{n} grid: pass images at "
                         "the model's input size (model.preprocess makes them)")
    return features.reshape(len(features), n, n, -1)


def top_patches(activations: torch.Tensor, feature: int, k: int = 8) -> list[PatchActivation]:
    """The k patches where `feature` fires most (fewer where it fires on fewer), strongest first.
    activations: `feature_activations`' [n_images, grid_h, grid_w, d_sae]."""
    d_sae = activations.shape[-1]
    if not -d_sae <= feature < d_sae:
        raise ValueError(f"feature {feature} is outside this SAE's {d_sae} features")
    values = activations[..., feature].flatten()
    top = values.topk(min(k, len(values)))
    _, grid_h, grid_w, _ = activations.shape
    out = []
    for value, index in zip(top.values.tolist(), top.indices.tolist()):
        if value > 0:
            image, cell = divmod(index, grid_h * grid_w)
            out.append(PatchActivation(image, *divmod(cell, grid_w), value))
    return out


def readout_directions(model: CLIP, sae: SparseAutoencoder) -> torch.Tensor:
    """Each feature's decoder direction taken into the joint space as the module docstring says:
    [d_sae, projection_dim]."""
    tower = model.vision
    refuse(tower.cannot_decompose(), "readout_directions follows the readout linearly")
    width = tower.config.hidden_size
    if sae.config.d_in != width:
        raise ValueError(f"the SAE's decoder is {sae.config.d_in}-wide but this model's residual is {width}-wide")
    with torch.no_grad():
        return tower.linear_readout(sae.W_dec.float()).directions(sae.W_dec.float())


def caption_similarity(model: CLIP, sae: SparseAutoencoder, captions: str | list[str]) -> torch.Tensor:
    """Cosine of each feature's readout direction with each caption's embedding: [d_sae, n_captions]."""
    return _normalize(readout_directions(model, sae)) @ text_embeds(model, captions).T


def nearest_captions(model: CLIP, sae: SparseAutoencoder, feature: int, captions: list[str],
                     k: int = 5) -> list[tuple[str, float]]:
    """The k captions whose embeddings lie nearest `feature`'s readout direction: (caption, cosine)."""
    cosines = caption_similarity(model, sae, captions)[feature]
    top = cosines.topk(min(k, len(captions)))
    return [(captions[i], v) for v, i in zip(top.values.tolist(), top.indices.tolist())]
