"""Scores for a saliency map: against ground-truth masks (localisation) or against the model (faithfulness).

Localisation, for maps of any resolution (a patch grid is upsampled bilinearly to the mask's pixels):

- `pointing_game`: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016.
- `energy_pointing_game`: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPRW 2020.
- `discrimination`: the energy share of the named object against the other object of a two-object scene.

Faithfulness, through a caller's `score_fn` (a batch of pixel values -> one score each, e.g. the CLIP
logit of one caption):

- `deletion_curve`, `insertion_curve`, `auc`: Petsiuk et al., "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", BMVC 2018. `caption_logit(model, caption)` makes the usual `score_fn`.

Baselines that know nothing about the model: a random map (`torch.rand`) and `centre_prior`.

Ranking: `auroc` and `average_precision` (both with ties), for scoring a feature or a map against labels.

Maps and masks are `[h, w]` torch tensors or numpy arrays; masks are boolean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = torch.Tensor | np.ndarray
Baseline = Literal["blur", "mean"] | torch.Tensor
BLUR_SIGMA = 0.1  # the "blur" baseline's gaussian sigma, as a fraction of the image size: strong enough to erase shapes


# --- inputs --------------------------------------------------------------------------------------

def _map(saliency: ArrayLike) -> torch.Tensor:
    """A finite 2-d float64 map (float64 so that a map equal to a mask scores exactly 1)."""
    s = torch.as_tensor(saliency).detach().cpu().to(torch.float64)
    if s.ndim != 2:
        raise ValueError(f"saliency must be a 2-d map [h, w], got shape {tuple(s.shape)}")
    if s.numel() == 0:
        raise ValueError("saliency map is empty")
    if not torch.isfinite(s).all():
        raise ValueError("saliency map contains NaN or infinite values")
    return s


def _mask(mask: ArrayLike, name: str = "mask", allow_empty: bool = False) -> torch.Tensor:
    m = torch.as_tensor(mask).detach().cpu()
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-d boolean array [H, W], got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        # 0/1 integers are unambiguous; anything else (a soft mask) would be thresholded silently
        if not ((m == 0) | (m == 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {m.dtype} with other values")
        m = m != 0
    if not allow_empty and not m.any():
        raise ValueError(f"{name} is empty: no pixel to point at")
    return m


def _resize(s: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """`s` resized to `size`; the aspect ratios must agree, since a transposed or cropped map is a bug."""
    (h, w), (H, W) = s.shape, size
    if h * W != w * H:
        raise ValueError(f"saliency map {h}x{w} and target {H}x{W} have different aspect ratios")
    if (h, w) == (H, W):
        return s
    # align_corners=False: each map cell covers its patch of pixels, centre on centre
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(s[None, None], size=size, mode=mode, **kwargs)[0, 0]


def _energies(saliency: ArrayLike, *masks: torch.Tensor) -> tuple[float, ...]:
    """Positive energy of the upsampled map inside each mask, then in total."""
    s = _resize(_map(saliency), tuple(masks[0].shape), "bilinear").clamp(min=0)
    return (*(s[m].sum().item() for m in masks), s.sum().item())


# --- localisation --------------------------------------------------------------------------------

def pointing_game(saliency: ArrayLike, mask: ArrayLike, tolerance: float = 0.05) -> bool:
    """Zhang et al. 2016: does the map's maximum point at the object?

    The map is upsampled bilinearly to the mask's resolution. A hit when its argmax lies inside the
    mask or within `tolerance * max(H, W)` pixels (euclidean) of a mask pixel. Ties go to the first
    argmax in raster order (row by row).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    m = _mask(mask)
    s = _resize(_map(saliency), tuple(m.shape), "bilinear")
    y, x = divmod(int(torch.argmax(s)), s.shape[1])  # torch.argmax returns the first maximum
    # the distance transform at the one point that matters: distance to the nearest mask pixel
    ys, xs = torch.nonzero(m, as_tuple=True)
    d2 = ((ys - y) ** 2 + (xs - x) ** 2).min().item()
    return d2 <= (tolerance * max(m.shape)) ** 2


def energy_pointing_game(saliency: ArrayLike, mask: ArrayLike) -> float:
    """Wang et al. 2020 (Score-CAM): the share of the map's positive energy that lies inside the mask.

    The map is upsampled bilinearly to the mask's resolution, then clipped at 0. A uniform map scores
    the mask's area fraction; a map with no positive value scores 0.
    """
    inside, total = _energies(saliency, _mask(mask))
    return inside / total if total > 0 else 0.0


def discrimination(saliency: ArrayLike, target_mask: ArrayLike, other_mask: ArrayLike) -> float:
    """In a two-object scene, the positive energy on the named object against the other one.

    `e_target / (e_target + e_other)`, energies as in `energy_pointing_game`: 1.0 when the map
    lights only the target, 0.0 when only the other object, 0.5 when both equally or neither
    (no positive energy on either mask). Pixels where the masks overlap count for both.
    """
    t, o = _mask(target_mask, "target_mask"), _mask(other_mask, "other_mask")
    if t.shape != o.shape:
        raise ValueError(f"target_mask {tuple(t.shape)} and other_mask {tuple(o.shape)} differ in shape")
    e_t, e_o, _ = _energies(saliency, t, o)
    return e_t / (e_t + e_o) if e_t + e_o > 0 else 0.5


def localisation(saliency: ArrayLike, mask: ArrayLike, other_mask: ArrayLike | None = None,
                 tolerance: float = 0.05) -> dict[str, float]:
    """Every localisation score of one map for one object (and `discrimination` given the other object)."""
    scores = {"pointing": float(pointing_game(saliency, mask, tolerance)),
              "energy": energy_pointing_game(saliency, mask)}
    if other_mask is not None:
        scores["discrimination"] = discrimination(saliency, mask, other_mask)
    return scores


# --- faithfulness --------------------------------------------------------------------------------

@dataclass(repr=False)
class Curve:
    """A deletion or insertion curve. Unpacks as `fractions, scores = curve`.

    `fractions[i]` is the share of pixels removed (deletion) or revealed (insertion) at step i, from
    0 to 1; `scores[i]` is `score_fn` on that image. `baseline` names what replaced the pixels:
    "blur", "mean" or "tensor" (a caller's image).
    """

    kind: Literal["deletion", "insertion"]
    fractions: torch.Tensor
    scores: torch.Tensor
    baseline: str
    auc: float

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.fractions, self.scores))

    def __repr__(self) -> str:
        return (f"Curve({self.kind}, {len(self.fractions)} steps, AUC {self.auc:.4g}, {self.baseline} baseline; "
                f"score {self.scores[0].item():.4g} -> {self.scores[-1].item():.4g})")


def auc(fractions: ArrayLike, scores: ArrayLike) -> float:
    """Area under a curve by the trapezoid rule (fractions increasing from 0 to 1 give a mean score)."""
    x, y = torch.as_tensor(fractions, dtype=torch.float64), torch.as_tensor(scores, dtype=torch.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"fractions and scores must be 1-d of the same length >= 2, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if not (x[1:] >= x[:-1]).all():
        raise ValueError("fractions must be non-decreasing")
    return torch.trapezoid(y, x).item()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of [1, C, H, W]; replicate padding keeps the edges' colour."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).expand(x.shape[1], 1, 1, -1)  # one row kernel per channel (depthwise)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2), groups=x.shape[1])


def _image(pixel_values: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(pixel_values)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"pixel_values must be one image [3, H, W] or [1, 3, H, W], got {tuple(x.shape)}")
    return x.detach()


def baseline_image(pixel_values: torch.Tensor, baseline: Baseline = "blur") -> torch.Tensor:
    """The image `[1, C, H, W]` that deletion puts in place of removed pixels and insertion starts from.

    "blur": a gaussian blur with sigma `BLUR_SIGMA * max(H, W)`; "mean": the image's per-channel mean
    colour; a tensor: that image itself ([C, H, W] or [1, C, H, W], the shape of `pixel_values`).
    """
    x = _image(pixel_values)
    if isinstance(baseline, torch.Tensor):
        b = baseline[None] if baseline.ndim == 3 else baseline
        if b.shape != x.shape:
            raise ValueError(f"baseline tensor {tuple(baseline.shape)} does not match pixel_values {tuple(x.shape)}")
        return b.detach().to(x)
    if baseline == "blur":
        return _gaussian_blur(x, BLUR_SIGMA * max(x.shape[-2:]))
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    raise ValueError(f"baseline must be 'blur', 'mean' or a tensor, got {baseline!r}")


def _curve(kind: Literal["deletion", "insertion"], score_fn: Callable[[torch.Tensor], torch.Tensor],
           pixel_values: torch.Tensor, saliency: ArrayLike, steps: int, baseline: Baseline,
           batch_size: int) -> Curve:
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    x = _image(pixel_values)
    base = baseline_image(x, baseline)
    H, W = x.shape[-2:]
    # nearest upsampling: every pixel of a patch gets the patch's value; ties (a patch's pixels)
    # go in raster order thanks to the stable sort
    s = _resize(_map(saliency), (H, W), "nearest").flatten()
    rank = torch.empty(H * W, dtype=torch.long)
    rank[torch.argsort(s, descending=True, stable=True)] = torch.arange(H * W)
    rank = rank.view(1, 1, H, W).to(x.device)
    counts = torch.round(torch.linspace(0, 1, steps + 1, dtype=torch.float64) * (H * W)).long()

    scores = []
    with torch.no_grad():
        for chunk in counts.split(batch_size):
            # the first `count` pixels by saliency are removed (deletion) or revealed (insertion)
            chosen = rank < chunk.view(-1, 1, 1, 1).to(x.device)
            batch = torch.where(chosen, base, x) if kind == "deletion" else torch.where(chosen, x, base)
            out = torch.as_tensor(score_fn(batch)).detach()
            if out.numel() != len(chunk):
                raise ValueError(f"score_fn must return one score per image: {len(chunk)} images gave shape "
                                 f"{tuple(out.shape)}")
            scores.append(out.reshape(-1).to("cpu", torch.float64))
    fractions = counts.double() / (H * W)
    scores = torch.cat(scores)
    name = "tensor" if isinstance(baseline, torch.Tensor) else baseline
    return Curve(kind, fractions, scores, name, auc(fractions, scores))


def deletion_curve(score_fn: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
                   saliency: ArrayLike, steps: int = 50, baseline: Baseline = "blur",
                   batch_size: int = 32) -> Curve:
    """Petsiuk et al. 2018 (RISE): the score as pixels are removed, most salient first. Lower AUC is better.

    `score_fn` maps pixel values `[N, C, H, W]` to scores `[N]`; it sees `steps + 1` images, in
    batches of `batch_size`, from the full image (fraction 0) to the baseline (fraction 1). The map is
    upsampled to pixels by nearest neighbour, so a patch-grid map removes whole patches; pixels of
    equal saliency go in raster order. Removed pixels take the baseline's value (see `baseline_image`).
    """
    return _curve("deletion", score_fn, pixel_values, saliency, steps, baseline, batch_size)


def insertion_curve(score_fn: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
                    saliency: ArrayLike, steps: int = 50, baseline: Baseline = "blur",
                    batch_size: int = 32) -> Curve:
    """Petsiuk et al. 2018 (RISE): the score as pixels are revealed, most salient first. Higher AUC is better.

    As `deletion_curve`, but starting from the baseline (fraction 0) and revealing the image's pixels
    until it is whole (fraction 1).
    """
    return _curve("insertion", score_fn, pixel_values, saliency, steps, baseline, batch_size)


def caption_logit(model, caption: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The `score_fn` of the curves for a CLIP: pixel values `[N, C, H, W]` -> each image's logit for `caption`."""
    tok = model.tokenize([caption])

    def score(pixel_values: torch.Tensor) -> torch.Tensor:
        n = len(pixel_values)
        return model(pixel_values=pixel_values, input_ids=tok.input_ids.expand(n, -1),
                     attention_mask=tok.attention_mask.expand(n, -1)).logits_per_image[:, 0]

    return score


# --- baselines -----------------------------------------------------------------------------------

def centre_prior(grid: tuple[int, int]) -> torch.Tensor:
    """A map that knows only that objects tend to sit near the middle: a Gaussian bump over the grid,
    1 at the centre. Any explanation worth reading should beat it."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid[0]), torch.linspace(-1, 1, grid[1]), indexing="ij")
    return torch.exp(-(xs ** 2 + ys ** 2) / 0.5)


# --- ranking -------------------------------------------------------------------------------------

def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of `scores` [n] (or [n, m]: m scorers at once) against boolean `labels`
    [n]: the chance that a positive outscores a negative, ties counting half (the Mann-Whitney U over
    n_pos x n_neg). Tied scores share their average rank. A scalar, or [m]; float64."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).bool()
    if labels.ndim != 1 or scores.shape[:1] != labels.shape:
        raise ValueError(f"labels [n] should match scores [n] or [n, m], got {tuple(labels.shape)} and "
                         f"{tuple(scores.shape)}")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
    columns = scores.double().reshape(len(labels), -1).T.contiguous()  # [m, n]
    ordered = columns.sort(dim=1).values
    # a value's average rank (1-based) among its ties: between the count below it and the count up to it
    below = torch.searchsorted(ordered, columns, right=False)
    up_to = torch.searchsorted(ordered, columns, right=True)
    ranks = (below + up_to + 1).double() / 2
    u = ranks[:, labels].sum(1) - n_pos * (n_pos + 1) / 2
    result = u / (n_pos * n_neg)
    return result[0] if scores.ndim == 1 else result


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision of `scores` [n] against boolean `labels` [n], as scikit-learn's
    `average_precision_score` computes it: sum over thresholds of (recall gained) x (precision there),
    no interpolation. Tied scores cross the threshold together, so the positives of a tie share the
    precision of everything scored at least as high. Higher scores mean "positive"."""
    s = torch.as_tensor(scores).detach().cpu().double().reshape(-1)
    y = torch.as_tensor(labels).detach().cpu().bool().reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have as many values, got {s.numel()} and {y.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive label")
    order = torch.argsort(s, descending=True)
    s, y = s[order], y[order]
    # the last position of each run of tied scores: where the threshold can stop
    ends = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1])])
    true_pos = torch.cumsum(y, 0, dtype=torch.float64)[ends]
    precision = true_pos / (ends + 1).double()
    gained = torch.diff(true_pos, prepend=torch.zeros(1, dtype=torch.float64)) / n_pos
    return float((gained * precision).sum())
