"""Training a sparse autoencoder on one hook point's activations over a set of images.

`train_sae` records the activations once (no gradients; `n_tokens x d_in` floats held in memory, 16 MB
for 4,000 demo scenes' patches), then trains on shuffled minibatches of tokens with Adam.

Dead features (ones that stop firing) are resampled, after Bricken et al. (2023): every
`resample_every` steps during the first half of training, each feature that has not fired since the
last check is pointed at a token of the current minibatch drawn with probability proportional to its
squared reconstruction error: decoder row = that token's direction (after the pre-encoder bias),
encoder column = the same direction at the live features' mean encoder norm, encoder bias 0, its Adam
state cleared. On its token the feature's pre-activation is then as large as the token's norm, so it
fires there even under TopK, and training takes it on from that start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ...errors import check_grad_possible
from ...model.clip import CLIP
from .autoencoder import SAEConfig, SparseAutoencoder, skipped_tokens


@dataclass
class SAEStats:
    """Measured over all the training tokens after training, in the activations' own units:
    `explained_variance` 1 - sum |x - x_hat|^2 / sum |x - mean x|^2; `l0` the mean number of features
    firing per token; `dead_fraction` the share of features firing on none; `resampled` how many
    times a dead feature was resampled during training."""

    explained_variance: float
    l0: float
    dead_fraction: float
    n_tokens: int
    resampled: int


def pixel_batches(model: CLIP, images: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Pixel values [B, 3, H, W] from pixel values [N, 3, H, W], a list of images (PIL, paths, arrays), a
    torch Dataset of pixel values (or of tuples starting with them, as `shapes.ShapesDataset`), or an
    iterable of pixel batches."""
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
    elif isinstance(images, torch.utils.data.Dataset):
        for batch in torch.utils.data.DataLoader(images, batch_size=batch_size):
            yield batch[0] if isinstance(batch, (list, tuple)) else batch
    elif isinstance(images, (list, tuple)) and images and not isinstance(images[0], torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield model.preprocess(list(images[start:start + batch_size]))
    else:
        for batch in images:
            if not (isinstance(batch, torch.Tensor) and batch.ndim == 4):
                raise ValueError(f"an iterable of pixel batches should yield [B, 3, H, W] tensors, got "
                                 f"{type(batch).__name__} {tuple(getattr(batch, 'shape', ()))}")
            yield batch


def hook_activations(model: CLIP, hook_name: str, images: Any, positions: str = "all",
                     batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Per batch of images, the activations [B, n_positions, width] at a vision hook, all positions or
    the patches only (after the class token). One forward per batch, no gradients."""
    model.hook_point(hook_name)  # a KeyError naming an unknown hook, before any forward
    skip = skipped_tokens(model, positions)
    for pixel_values in pixel_batches(model, images, batch_size):
        with torch.no_grad(), model.recording(hook_name) as cache:
            model.encode_image(pixel_values.to(*model._device_dtype()))
        if hook_name not in cache:
            raise ValueError(f"hook {hook_name!r} did not fire in an image forward: an SAE trains on a vision hook")
        x = cache[hook_name]
        if x.ndim != 3:
            raise ValueError(f"hook {hook_name!r} gives shape {tuple(x.shape)}; an SAE reads token activations "
                             "[batch, positions, width] (a hook_resid_*, hook_attn_out or hook_mlp_out)")
        yield x[:, skip:].float()


def new_sae(activations: torch.Tensor, hook_name: str, d_sae: int, k: int | None = None, l1: float | None = None,
            tied: bool = False, positions: str = "patches", seed: int = 0) -> SparseAutoencoder:
    """An untrained SAE fitted to the activations' scale ([n_tokens, d_in]): `input_scale` makes their mean
    squared norm d_in, and the pre-encoder bias starts at their mean. Give exactly one of k (TopK) or l1."""
    if (k is None) == (l1 is None):
        raise ValueError(f"give exactly one of k (a TopK SAE) or l1 (a ReLU SAE with an L1 penalty), got "
                         f"k={k!r}, l1={l1!r}")
    d_in = activations.shape[-1]
    scale = float((d_in / activations.pow(2).sum(-1).mean()).sqrt())
    config = SAEConfig(hook_name, d_in, d_sae, "topk" if k is not None else "relu", k, l1, tied, positions, scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0) * scale)
    return sae


@torch.enable_grad()  # inside the caller's torch.no_grad() too: training is what gradients are for
def fit(sae: SparseAutoencoder, activations: torch.Tensor, steps: int = 2000, lr: float = 1e-3,
        batch_size: int = 1024, seed: int = 0, resample_every: int | None = 250,
        progress: bool = True) -> SAEStats:
    """Train `sae` in place on activations [n_tokens, d_in]: minibatches of `batch_size` tokens drawn with
    a seeded generator; loss = mean squared error over the (scaled) width, plus l1 x sum of features for a
    ReLU SAE. `resample_every=None` turns dead-feature resampling off."""
    check_grad_possible("fit")
    if activations.ndim != 2:
        raise ValueError(f"activations should be [n_tokens, d_in], got shape {tuple(activations.shape)}")
    sae._check_width(activations)
    config = sae.config
    if config.activation == "jumprelu" or (config.activation == "relu" and config.l1 is None):
        raise ValueError("fit trains TopK SAEs and ReLU SAEs with an L1 coefficient; this one is "
                         f"activation={config.activation!r}, l1={config.l1!r}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    fired = torch.zeros(config.d_sae, dtype=torch.bool, device=activations.device)
    resampled = 0
    for step in tqdm(range(1, steps + 1), desc=f"SAE {config.hook_name}", disable=not progress):
        x = activations[torch.randint(len(activations), (batch_size,), generator=generator).to(activations.device)]
        reconstruction, features = sae(x)
        error = (reconstruction - x) * config.input_scale
        loss = error.pow(2).mean()
        if config.activation == "relu":
            loss = loss + config.l1 * features.sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _keep_rows_unit_norm(sae)
        optimizer.step()
        sae.normalize_decoder_()
        fired |= (features > 0).any(0)
        if resample_every and step % resample_every == 0:
            if step <= steps // 2 and not fired.all():
                resampled += _resample(sae, optimizer, ~fired, x, error.detach(), generator)
            fired.zero_()
    return _stats(sae, activations, resampled)


def train_sae(model: CLIP, hook_name: str, images: Any, d_sae: int = 1024, k: int | None = None,
              l1: float | None = None, tied: bool = False, steps: int = 2000, lr: float = 1e-3,
              batch_size: int = 1024, positions: str = "patches", seed: int = 0, image_batch_size: int = 64,
              resample_every: int | None = 250, progress: bool = True) -> tuple[SparseAutoencoder, SAEStats]:
    """Train an SAE on `model`'s activations at `hook_name` (a vision hook with token activations, e.g.
    "vision.blocks.3.hook_resid_post") over `images`: pixel values [N, 3, H, W], a list of images, a
    Dataset such as `shapes.ShapesDataset`, or an iterable of pixel batches. TopK with `k` features per
    token, or ReLU with an `l1` penalty (give one; TopK with k=32 when neither is given). `positions`: "patches" (the class token left out,
    as its statistics differ) or "all". Returns (sae, stats)."""
    check_grad_possible("train_sae")
    if k is None and l1 is None:
        k = 32
    activations = token_activations(hook_activations(model, hook_name, images, positions, image_batch_size))
    sae = new_sae(activations, hook_name, d_sae, k, l1, tied, positions, seed).to(activations.device)
    stats = fit(sae, activations, steps, lr, batch_size, seed, resample_every, progress)
    return sae, stats


def _keep_rows_unit_norm(sae: SparseAutoencoder) -> None:
    """Remove the part of W_dec's gradient along each row: a step then only turns the rows, and
    normalize_decoder_ corrects the second-order growth."""
    if sae.W_dec.grad is not None:
        rows, grad = sae.W_dec.detach(), sae.W_dec.grad
        grad -= (grad * rows).sum(1, keepdim=True) * rows


@torch.no_grad()
def _resample(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor,
              error: torch.Tensor, generator: torch.Generator) -> int:
    """Point the dead features at badly reconstructed tokens of `x` (see the module's docstring)."""
    index = dead.nonzero().squeeze(1)
    weights = error.pow(2).sum(-1).double() + 1e-12
    tokens = torch.multinomial(weights.cpu(), len(index), replacement=len(index) > len(x), generator=generator)
    directions = torch.nn.functional.normalize(x[tokens] * sae.config.input_scale - sae.b_dec, dim=1)
    sae.W_dec[index] = directions
    sae.b_enc[index] = 0
    touched = [sae.W_dec, sae.b_enc]
    if sae.W_enc is not None:
        live = ~dead
        norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else 1.0
        sae.W_enc[:, index] = directions.T * norm
        touched.append(sae.W_enc)
    for p in touched:
        for state in optimizer.state.get(p, {}).values():
            if isinstance(state, torch.Tensor) and state.shape == p.shape:
                if p is sae.W_enc:
                    state[:, index] = 0
                else:
                    state[index] = 0
    return len(index)


@torch.no_grad()
def _stats(sae: SparseAutoencoder, activations: torch.Tensor, resampled: int) -> SAEStats:
    mean = activations.mean(0)
    error = total = nonzero = 0.0
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool, device=activations.device)
    for x in activations.split(8192):
        reconstruction, features = sae(x)
        error += float((x - reconstruction).double().pow(2).sum())
        total += float((x - mean).double().pow(2).sum())
        active = features > 0
        nonzero += float(active.sum())
        fired |= active.any(0)
    n = len(activations)
    return SAEStats(1 - error / total, nonzero / n, float((~fired).float().mean()), n, resampled)


def token_activations(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """[n_tokens, width] from per-batch activations [B, positions, width]."""
    tokens = [x.reshape(-1, x.shape[-1]) for x in batches]
    if not tokens:  # torch.cat's own error would not say why
        raise ValueError("no images to train on: no batch of activations was recorded")
    return torch.cat(tokens)
