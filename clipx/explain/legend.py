"""What a picture of an Explanation states besides its colours, so that `Explanation.figure()`, the views and the
command line's PNGs all say the same: the colour scale a map is drawn on (`Scale`: its limits; diverging around
zero for signed maps, sequential for the others, as the method declares; what the value is) and the titles
(caption, score, the method with the options that differ from its defaults)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .core import KINDS, VALUES, Values, defaults

SEQUENTIAL = "inferno"  # perceptually uniform, ordered in lightness, readable by colour-blind readers and in grey
DIVERGING = "RdBu_r"    # blue below zero, red above, white at zero
WORDS = "OrRd"          # words are shaded on white: a sequential map light at its low end, so strong words stand out
ALPHA = 0.75            # an overlay's opacity where its map reaches the scale's limit

# the special tokens of the tokenizers clipx reads (CLIP's; SigLIP's SentencePiece and Gemma ones)
SPECIAL = ("<|startoftext|>", "<|endoftext|>", "</s>", "<s>", "<pad>", "<bos>", "<eos>")


def as_array(values: Any) -> np.ndarray:
    """float32 numpy from arrays, lists or tensors on any device and in any dtype."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu()
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class Scale:
    """Values from `low` to `high` as colours: `signed` scales are diverging and centred at zero (low = -high),
    the others sequential. An overlay's opacity follows the value's distance from where the map says nothing
    (`low`, or zero for a signed scale), so the image shows unchanged there. `label` says what the value is."""

    low: float
    high: float
    signed: bool = False
    label: str = "value"
    cmap: str | None = None  # None: SEQUENTIAL, or DIVERGING for a signed scale

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"a colour scale needs finite limits low < high, got {self.low!r} and {self.high!r}")
        if self.signed and self.low != -self.high:
            raise ValueError(f"a signed colour scale is centred at zero (low = -high), got {self.low} and {self.high}")

    @classmethod
    def fit(cls, values: Any, kind: str = "level", label: str = "value", cmap: str | None = None) -> Scale:
        """The scale that holds `values` (an array or tensor of any shape, or a sequence of them; NaNs ignored):
        kind "signed": -m..m, m the largest |value|; "positive": 0..the largest; "level": the smallest..the
        largest. Maps that are all zero (or constant) get a unit range, so they draw as nothing."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        parts = [as_array(v).ravel() for v in (values if isinstance(values, (list, tuple)) else [values])]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        flat = flat[np.isfinite(flat)]
        low, high = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 0.0)
        if kind == "signed":
            m = max(abs(low), abs(high)) or 1.0
            return cls(-m, m, True, label, cmap)
        if kind == "positive":
            low = 0.0
        return cls(low, high if high > low else low + 1.0, False, label, cmap)

    @classmethod
    def of(cls, values: Any, declared: Values, cmap: str | None = None) -> Scale:
        """The scale that holds `values`, of the kind and label a method declared (`map_values`)."""
        return cls.fit(values, declared.kind, declared.label, cmap)

    @property
    def colormap(self) -> str:
        return self.cmap or (DIVERGING if self.signed else SEQUENTIAL)

    @property
    def ticks(self) -> list[float]:
        """The values a colour bar labels: the limits and the middle (zero on a signed scale)."""
        return [self.low, 0.0 if self.signed else (self.low + self.high) / 2, self.high]

    def on_white(self) -> Scale:
        """The scale as words on white are shaded with (token strips): a sequential one in WORDS, light at its low
        end (inferno's dark low end would make the weakest words look the strongest), unless it names its own
        colour map; a signed one as it is, white at zero."""
        return self if self.signed or self.cmap else dataclasses.replace(self, cmap=WORDS)

    def index(self, values: Any) -> np.ndarray:
        """Each value's row of the colour table, uint8 (values beyond the limits take the limit's row, NaN the
        row where the map says nothing). Lean on big maps: one float32 copy, worked on in place."""
        unit = np.asarray(np.subtract(as_array(values), np.float32(self.low), dtype=np.float32))
        unit *= np.float32(255 / (self.high - self.low))
        np.nan_to_num(unit, copy=False, nan=127.5 if self.signed else 0.0)
        np.clip(unit, 0, 255, out=unit)
        return np.rint(unit, out=unit).astype(np.uint8)

    def table(self, alpha: float = ALPHA) -> np.ndarray:
        """[256, 4] uint8: each row's colour and the opacity an overlay draws it with."""
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha is an opacity in [0, 1], got {alpha!r}")
        return _table(self.colormap, self.signed, float(alpha))

    def colours(self, values: Any) -> np.ndarray:
        """uint8 RGB [..., 3] of the values, at full strength (as the colour bar shows them)."""
        return self.table()[self.index(values), :3]

    def rgba(self, values: Any, alpha: float = ALPHA) -> np.ndarray:
        """uint8 RGBA [..., 4]: the values' colours with the opacity that follows them, to lay over an image."""
        return self.table(alpha)[self.index(values)]

    def format(self, value: float) -> str:
        """A value as a colour bar or token strip writes it: to two digits of half this scale's range."""
        digits = max(0, 1 - math.floor(math.log10((self.high - self.low) / 2)))
        text = f"{value:.{digits}f}" if digits <= 4 else f"{value:.1e}"
        return text.lstrip("-") if float(text) == 0 else text  # no "-0.0" for a tiny negative value


@lru_cache(maxsize=None)
def _table(cmap: str, signed: bool, alpha: float) -> np.ndarray:
    """The colour map as 256 rows of RGB plus opacity: indexing it is far faster than calling matplotlib."""
    import matplotlib  # imported here: matplotlib costs `import clipx` a third of a second

    table = matplotlib.colormaps[cmap](np.linspace(0, 1, 256), bytes=True)
    rows = np.arange(256, dtype=np.float64)
    # how far each row is from saying nothing: from the bottom, or (signed) from the middle two rows on
    strength = np.maximum(np.abs(2 * rows - 255) - 1, 0) / 254 if signed else rows / 255
    table[:, 3] = np.rint(255 * alpha * strength)
    return table


# --- what each map holds ---------------------------------------------------------------------------------

def map_values(method: str, options: dict[str, Any] | None = None, which: str = "image") -> Values:
    """What an Explanation's `which` maps ("image" or "text") hold, by the method that made them: as the method
    declared (`register`); Captum's attributions are signed; a neutral caption subtracted makes image maps
    signed. A method clipx does not know (an Explanation saved by other code) counts as signed: a diverging
    scale misleads least about data of unknown sign."""
    if method in VALUES:
        values = VALUES[method]
    else:
        values = Values("signed", "attribution" if method.startswith("captum.") else "value")
    if which == "image" and (options or {}).get("neutral") is not None:
        values = Values("signed", f"{values.label} minus the neutral caption's")
    return values


def image_scale(exp: Any, pair: tuple[int, int] | None = None, cmap: str | None = None) -> Scale:
    """The scale of an Explanation's image maps: over every pair, so that weak pairs look weak, or over one
    (image, caption) `pair`."""
    maps = exp.image if pair is None else exp.image[pair]
    return Scale.of(maps, map_values(exp.method, exp.options, "image"), cmap)


def word_positions(tokens: Sequence[str]) -> list[int]:
    """The positions of a caption's words: every token but the special ones (BOS, EOS, padding)."""
    return [k for k, t in enumerate(tokens) if t not in SPECIAL]


def region_edges(mask: Any) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The outline of a region of a patch grid (`mask` [grid_h, grid_w], any shape, several pieces too) as line
    segments ((x0, y0), (x1, y1)) between patch corners, in patches from the grid's top left: each edge between a
    marked patch and an unmarked one or the grid's border."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)
    edges = []
    for r, c in zip(*np.nonzero(mask)):
        r, c = int(r), int(c)
        for (dr, dc), edge in (((-1, 0), ((c, r), (c + 1, r))), ((1, 0), ((c, r + 1), (c + 1, r + 1))),
                               ((0, -1), ((c, r), (c, r + 1))), ((0, 1), ((c + 1, r), (c + 1, r + 1)))):
            if not padded[r + 1 + dr, c + 1 + dc]:
                edges.append(edge)
    return edges


def text_scale(exp: Any, pair: tuple[int, int] | None = None, cmap: str | None = None) -> Scale:
    """The scale of an Explanation's text maps over the captions' words (special tokens, whose values mean
    something else, such as EOS's own relevance, left out), as words on white are shaded (`Scale.on_white`):
    over every pair, or over one `pair`."""
    pairs = [pair] if pair is not None else [(i, j) for i in range(exp.n_images) for j in range(exp.n_texts)]
    words = [exp.text[i, j, word_positions(exp.tokens[j])] for i, j in pairs]
    return Scale.of(words, map_values(exp.method, exp.options, "text"), cmap).on_white()


# --- titles ------------------------------------------------------------------------------------------------

def non_default(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options an Explanation was made with that differ from the method's defaults (all of them where the
    defaults are unknown), `neutral` included."""
    known = defaults(method)
    return {k: v for k, v in options.items() if k not in known or not _same(v, known[k])}


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or type(a) is not type(b):
        return False  # a tensor option is shown: it was passed, since no default is one
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # an == that gives no single truth value
        return False


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 30 else text[:29] + "…"


def method_title(method: str, options: dict[str, Any]) -> str:
    """The method and its non-default options: "relevance (start_layer=0)"; the name alone where all are default."""
    changed = non_default(method, options)
    return method + (f" ({', '.join(f'{k}={_short(v)}' for k, v in changed.items())})" if changed else "")


def score_title(logits: Any, j: int, scoring: str | None = None) -> str:
    """Caption j's score against one image from the image's logits over the captions: "logit 10.64", with the
    probability where `scoring` (the model's `config.scoring`) is given: a softmax over these captions, or the
    pair's own sigmoid ("logit 10.64, softmax 0.30"). A softmax over a single caption says nothing: left out."""
    logits = as_array(logits).astype(np.float64).ravel()
    text = f"logit {logits[j]:.2f}"
    if scoring == "sigmoid":
        return text + f", sigmoid {1 / (1 + math.exp(-logits[j])):.2f}"
    if scoring == "softmax":
        if len(logits) < 2:
            return text
        p = np.exp(logits - logits.max())
        return text + f", softmax {p[j] / p.sum():.2f}"
    if scoring is not None:
        raise ValueError(f"scoring must be 'softmax', 'sigmoid' or None, got {scoring!r}")
    return text


def pair_title(exp: Any, i: int, j: int, scoring: str | None = None) -> list[str]:
    """The lines a picture of one (image, caption) pair is titled with: the caption, its score (`score_title`) and
    the method with its non-default options."""
    return [exp.texts[j], score_title(exp.scores[i], j, scoring), method_title(exp.method, exp.options)]
