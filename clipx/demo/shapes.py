"""Synthetic scenes whose objects have exact masks, their captions, and a torch Dataset of them.

A scene is a square image of 1-3 flat-coloured shapes on a neutral background (flat, noise or
texture). Geometry is drawn in units of the image size, so `scene(seed, size=224)` is the same
layout as `scene(seed)` at a higher resolution. Masks are exact: a mask pixel carries its
object's colour and no other pixel does. That holds because

- colours are distinct within a scene, and every object colour is saturated (its channels
  spread by >= 120) while backgrounds are near-grey (channels spread by <= 20);
- objects either keep apart (the default) or, with `overlap=True`, later objects occlude
  earlier ones, whose masks then hold only their visible pixels.

`python -m clipx.demo.training ...` trains the demo models on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..preprocess.image import ImageProcessor

IMAGE_SIZE = 64  # the demo model's input size
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
COLORS = {
    "red": (215, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 165, 60),
    "blue": (40, 90, 220),
    "purple": (145, 65, 200),
}
BACKGROUNDS = ["flat", "noise", "texture"]
ONE_OBJECT = ["{a}", "a picture with {a}", "there is {a}"]
RELATIONS = ["left of", "right of", "above", "below"]
WORDS = ({"a", "an", "picture", "with", "there", "is", "and", ",", "left", "right", "of", "above", "below"}
         | set(SHAPES) | set(COLORS))
# how many objects a training scene has, and how often; a share of scenes lets objects overlap
OBJECT_COUNTS, OBJECT_COUNT_P = (1, 2, 3), (0.4, 0.45, 0.15)
OVERLAP_P = 0.2
MAX_OBJECTS = 5
SPLITS = {"train": 1, "test": 2}  # non-zero seed tags: numpy seeds [s] and [s, 0] are the same stream


@dataclass
class SceneObject:
    shape: str
    color: str
    mask: np.ndarray                   # bool [size, size], the visible pixels
    box: tuple[int, int, int, int]     # (left, top, right, bottom) of the mask, right/bottom exclusive
    center: tuple[float, float]        # (x, y) in units of the image size, as drawn


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    caption: str
    background: str


def describe(obj: SceneObject) -> str:
    """The canonical single-object caption: "a red circle"."""
    return name(obj.color, obj.shape)


def name(color: str, shape: str) -> str:
    """The caption of a colour-shape pair, with its article: "an orange star"."""
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def scene(seed: int | tuple[int, ...], n_objects: int = 2, size: int | None = None,
          overlap: bool = False, touching: bool = False, distractor: str | None = None,
          min_size: float | None = None, max_size: float | None = None) -> Scene:
    """A deterministic scene: the same seed gives the same pixels, masks and caption.

    Harder scenes, for the evaluation's harder splits: up to 5 objects; `touching`: every object's mask
    touches another's (4-neighbours, no overlap); `distractor="colour"` / `"shape"`: the last object repeats
    the first one's colour with another shape, or its shape in another colour, so only the pair tells the
    first apart; `min_size` / `max_size`: the range of an object's extent (its centre-to-tip radius) in
    units of the image size, e.g. `max_size=0.08` for small objects."""
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1 to {MAX_OBJECTS}, got {n_objects}")
    if distractor not in (None, "colour", "shape"):
        raise ValueError(f"distractor must be None, 'colour' or 'shape', got {distractor!r}")
    if distractor is not None and n_objects < 2:
        raise ValueError("a distractor needs n_objects >= 2: the first object and the one that repeats it")
    if touching and (overlap or n_objects < 2):
        raise ValueError("touching needs n_objects >= 2 and overlap=False")
    size = size or IMAGE_SIZE
    rng = np.random.default_rng(seed)
    background, pixels = _background(rng, size)
    shapes = rng.choice(SHAPES, n_objects)  # shapes may repeat, colours may not (but for a colour distractor)
    colors = rng.choice(list(COLORS), n_objects, replace=False)
    if distractor == "colour":
        colors[-1] = colors[0]
        shapes[-1] = rng.choice([s for s in SHAPES if s != shapes[0]])
    elif distractor == "shape":
        shapes[-1] = shapes[0]
    sizes = _size_range(n_objects, size, min_size, max_size)
    layout, masks = _touching(rng, shapes, sizes, size) if touching else _place(rng, shapes, sizes, size, overlap)
    for color, mask in zip(colors, masks):
        pixels[mask] = COLORS[color]
    objects = [SceneObject(str(s), str(c), m, _box(m), (x, y))
               for s, c, m, (x, y, _) in zip(shapes, colors, masks, layout)]
    return Scene(Image.fromarray(pixels, "RGB"), objects, caption(objects, rng), background)


def caption(objects: list[SceneObject], rng: np.random.Generator) -> str:
    """A caption naming one object, two objects and their relation, or several objects."""
    names = [describe(o) for o in objects]
    pick = rng.random()
    if len(objects) == 1 or pick < 0.4:
        return str(rng.choice(ONE_OBJECT)).format(a=names[rng.integers(len(objects))])
    if pick < 0.7:
        i, j = rng.choice(len(objects), 2, replace=False)
        rel = relation(objects[i], objects[j])
        if rel is not None:
            return f"{names[i]} {rel} {names[j]}"
    k = rng.integers(2, len(objects) + 1)
    named = [names[i] for i in rng.choice(len(objects), k, replace=False)]
    return ", ".join(named[:-1]) + " and " + named[-1]


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` lies relative to `b`, if one axis clearly dominates (None if not)."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if abs(abs(dx) - abs(dy)) < 0.1:
        return None
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def named(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names."""
    return set(re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", caption))


def class_names() -> list[str]:
    """Every colour-shape caption ("a red circle"), in `class_index` order."""
    return [name(c, s) for c in COLORS for s in SHAPES]


def class_index(color: str, shape: str) -> int:
    """Position of a colour-shape pair among all len(COLORS) * len(SHAPES) of them."""
    return list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape)


def contents(objects: list[SceneObject]) -> torch.Tensor:
    """Multi-hot [len(COLORS) * len(SHAPES)] of the colour-shape pairs in a scene."""
    out = torch.zeros(len(COLORS) * len(SHAPES))
    out[[class_index(o.color, o.shape) for o in objects]] = 1
    return out


def all_captions() -> list[str]:
    """Every caption the grammar makes for one or two objects, and one listing three (the tokenizer's
    training corpus)."""
    names = class_names()
    out = [t.format(a=a) for t in ONE_OBJECT for a in names]
    out += [f"{a} {r} {b}" for a in names for b in names if a != b for r in RELATIONS + ["and"]]
    return out + [f"{names[0]}, {names[1]} and {names[2]}"]


def caption_bank(n_pairs: int = 120) -> list[str]:
    """A default bank for describing the demo model's heads (`clipx.describe_heads`), in words its tokenizer
    knows: every colour alone ("red"), every shape alone ("circle"), every colour-shape pair ("a red circle"),
    then `n_pairs` two-object captions of two colours, as scenes have them (a fixed sample of every relation
    in `RELATIONS` and "and").

    Backgrounds (flat, noise, texture), sizes and where an object lies in the image cannot be said in the
    demo's vocabulary (`WORDS`), so the bank has no captions for them: a head that reads them shows up as
    variance no caption explains."""
    names = class_names()
    pairs = [f"{a} {link} {b}" for a in names for b in names if a.split()[1] != b.split()[1]
             for link in RELATIONS + ["and"]]
    chosen = np.random.default_rng(0).choice(len(pairs), n_pairs, replace=False)
    pairs = [pairs[i] for i in sorted(chosen)]
    return list(COLORS) + SHAPES + names + pairs


# --- drawing ---------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    """A near-grey background: one luminance pattern plus a small tint shared by all pixels."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    level, tint = rng.uniform(70, 215), rng.uniform(-10, 10, 3)
    if kind == "flat":
        lum = np.zeros((size, size))
    elif kind == "noise":
        lum = rng.normal(0, rng.uniform(3, 12), (size, size))
    else:  # stripes or checks at a random angle and period
        y, x = np.mgrid[0:size, 0:size] / size
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.06, 0.2)
        u = (x * np.cos(angle) + y * np.sin(angle)) / period
        v = (-x * np.sin(angle) + y * np.cos(angle)) / period
        lum = np.sign(np.sin(2 * np.pi * u)) * (np.sign(np.sin(2 * np.pi * v)) if rng.random() < 0.5 else 1)
        lum = lum * rng.uniform(4, 12)
    pixels = np.clip(level + tint + np.clip(lum, -40, 40)[..., None], 0, 255)
    return kind, pixels.astype(np.uint8)


def _size_range(n: int, size: int, min_size: float | None, max_size: float | None) -> tuple[float, float]:
    """The range of an object's extent in units of the image size: by default smaller the more objects share
    the image."""
    smallest = max(0.1, 4 / size) if min_size is None else min_size
    largest = {1: 0.3, 2: 0.22, 3: 0.18, 4: 0.15, 5: 0.13}[n] if max_size is None else max_size
    if (min_size is not None or max_size is not None) and not 4 / size <= smallest <= largest <= 0.45:
        raise ValueError(f"need {4 / size:.3f} <= min_size <= max_size <= 0.45 (units of the image size, "
                         f"at least ~8 px across), got min_size={min_size}, max_size={max_size}")
    return smallest, max(largest, smallest)


def _place(rng: np.random.Generator, shapes: list[str], sizes: tuple[float, float], size: int,
           overlap: bool) -> tuple[list[tuple[float, float, float]], list[np.ndarray]]:
    """(x, y, radius) per object in units of the image size, and its visible mask. Objects keep
    their bounding squares 3% of the image apart, or with `overlap` may overlap, later ones on top,
    as long as each keeps 60% of its pixels visible."""
    n = len(shapes)
    for _ in range(1000):
        radii = rng.uniform(*sizes, n)
        centers = [rng.uniform(r + 0.02, 1 - r - 0.02, 2) for r in radii]
        if not overlap and any(np.abs(centers[i] - centers[j]).max() <= radii[i] + radii[j] + 0.03
                               for i in range(n) for j in range(i)):
            continue
        drawn = [_mask(s, c[0] * size, c[1] * size, r * size, size) for s, c, r in zip(shapes, centers, radii)]
        visible = [m & ~np.any(drawn[i + 1:], axis=0) if i + 1 < n else m for i, m in enumerate(drawn)]
        if all(v.sum() >= 0.6 * m.sum() for v, m in zip(visible, drawn)):
            return [(float(c[0]), float(c[1]), float(r)) for c, r in zip(centers, radii)], visible
    raise RuntimeError(f"no layout found for {n} objects of these sizes: try smaller ones (max_size)")


def _touching(rng: np.random.Generator, shapes: list[str], sizes: tuple[float, float],
              size: int) -> tuple[list[tuple[float, float, float]], list[np.ndarray]]:
    """Objects that each touch an earlier one: the first anywhere, each next one brought towards an object
    already placed, from a random side, pixel by pixel until one step more would overlap."""
    for _ in range(100):
        radii = rng.uniform(*sizes, len(shapes))
        first = rng.uniform(radii[0] + 0.02, 1 - radii[0] - 0.02, 2)
        centers, masks = [first], [_mask(shapes[0], first[0] * size, first[1] * size, radii[0] * size, size)]
        for shape, r in zip(shapes[1:], radii[1:]):
            for _ in range(30):  # sides to try
                placed = _approach(rng, shape, r, centers, radii, masks, size)
                if placed is not None:
                    centers.append(placed[0])
                    masks.append(placed[1])
                    break
            else:
                break
        else:
            return [(float(c[0]), float(c[1]), float(r)) for c, r in zip(centers, radii)], masks
    raise RuntimeError(f"no touching layout found for {len(shapes)} objects of these sizes: try smaller ones")


def _approach(rng: np.random.Generator, shape: str, r: float, centers: list[np.ndarray], radii: np.ndarray,
              masks: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A shape moved towards a random placed object from a random side until touching what it meets first,
    or None where it never fits inside the image."""
    anchor = int(rng.integers(len(centers)))
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    taken = np.any(masks, axis=0)
    placed = None
    for distance in np.arange(radii[anchor] + r, 0, -1 / size):  # from bounding circles apart, inwards
        center = centers[anchor] + direction * distance
        if not ((r <= center) & (center <= 1 - r)).all():
            continue
        mask = _mask(shape, center[0] * size, center[1] * size, r * size, size)
        if (taken & mask).any():
            break
        placed = center, mask
    return placed if placed is not None and _touches(placed[1], taken) else None


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether mask `a` has a pixel 4-adjacent to one of mask `b`."""
    grown = b.copy()
    grown[1:] |= b[:-1]
    grown[:-1] |= b[1:]
    grown[:, 1:] |= b[:, :-1]
    grown[:, :-1] |= b[:, 1:]
    return bool((grown & a).any())


def _mask(shape: str, x: float, y: float, r: float, size: int) -> np.ndarray:
    """A shape centred at (x, y) pixels with extent r pixels, drawn without anti-aliasing."""
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((x - 0.9 * r, y - 0.9 * r, x + 0.9 * r, y + 0.9 * r), fill=1)
    elif shape == "square":
        draw.rectangle((x - 0.8 * r, y - 0.8 * r, x + 0.8 * r, y + 0.8 * r), fill=1)
    elif shape == "cross":
        w = 0.3 * r
        draw.rectangle((x - r, y - w, x + r, y + w), fill=1)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=1)
    else:
        draw.polygon(_polygon(shape, x, y, r), fill=1)
    return np.array(canvas, dtype=bool)


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x, y - r), (x + 0.95 * r, y + 0.7 * r), (x - 0.95 * r, y + 0.7 * r)]
    if shape == "diamond":
        return [(x, y - r), (x + 0.8 * r, y), (x, y + r), (x - 0.8 * r, y)]
    if shape == "star":  # five points, inner radius 0.45 of the outer
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2, 0.45 * r, r)
        return [(x + q * np.cos(a), y + q * np.sin(a)) for q, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}; clipx.shapes.SHAPES has {SHAPES}")


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --- dataset ---------------------------------------------------------------------------------

def processor(size: int = IMAGE_SIZE) -> ImageProcessor:
    """CLIP's preprocessing at `size` (a no-op resize for scenes rendered at that size)."""
    return ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


class ShapesDataset(torch.utils.data.Dataset):
    """`n` scenes -> (pixel_values [3, size, size], caption), or with `with_contents`
    (pixel_values, caption, contents multi-hot). Item i of (seed, split) is always the same scene;
    "train" and "test" splits never share one. `n_objects` None mixes 1-3 objects (some overlapping);
    an int fixes it (objects apart). `image_processor`: the model's preprocessing (CLIP's by default)."""

    def __init__(self, n: int, seed: int = 0, split: str = "train", n_objects: int | None = None,
                 size: int = IMAGE_SIZE, with_contents: bool = False, image_processor: ImageProcessor | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.n, self.seed, self.split, self.n_objects, self.size = n, seed, split, n_objects, size
        self.with_contents = with_contents
        self.processor = image_processor if image_processor is not None else processor(size)

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.n:
            raise IndexError(f"item {i} of a dataset of {self.n}")
        seed = (self.seed, i, SPLITS[self.split])
        if self.n_objects is not None:
            return scene(seed, self.n_objects, self.size)
        rng = np.random.default_rng(seed + (3,))  # its own stream, apart from the scene's
        return scene(seed, int(rng.choice(OBJECT_COUNTS, p=OBJECT_COUNT_P)), self.size,
                     overlap=bool(rng.random() < OVERLAP_P))

    def __getitem__(self, i: int):
        sc = self.scene(i)
        pixels = self.processor(sc.image)[0]
        return (pixels, sc.caption, contents(sc.objects)) if self.with_contents else (pixels, sc.caption)
