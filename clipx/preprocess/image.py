"""Image preprocessing identical to transformers' `CLIPImageProcessorPil` and `SiglipImageProcessorPil`,
and its inverse for display.

CLIP's recipe: convert to RGB, resize the shortest edge (PIL, bicubic), centre crop, rescale by 1/255,
normalise. SigLIP's: resize to a fixed height x width (squashing the aspect ratio), no crop, mean = std = 0.5. Every step copies transformers' PIL backend down to the dtype of each operation, so
pixel values come out bit-identical, not merely close.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from ..errors import CheckpointError, check_has_values
from ..files import is_file, make_folder, read_json, write_text

CONFIG_NAME = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = int(Image.Resampling.BICUBIC)  # 3, the value preprocessor_config.json stores
# SiglipImageProcessor: resize to a fixed size, no crop, mean = std = 0.5 (its transformers defaults)
SIGLIP_TYPES = ("SiglipImageProcessor", "SiglipImageProcessorPil", "SiglipImageProcessorFast")
SIGLIP_DEFAULTS = {"size": {"height": 224, "width": 224}, "do_center_crop": False,
                   "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)}


@dataclass
class ImageProcessor:
    """CLIP's image preprocessing; the fields mirror `preprocessor_config.json`."""

    do_resize: bool = True
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = BICUBIC
    do_center_crop: bool = True
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    # Another recipe registers itself by subclassing with the image_processor_type values it reads (as
    # model families do), so from_dict finds it by preprocessor_config.json's type.
    processor_types: ClassVar[tuple[str, ...]] = ()
    _recipes: ClassVar[list[type[ImageProcessor]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "processor_types" in cls.__dict__:
            ImageProcessor._recipes.append(cls)

    def __post_init__(self):
        # old files store plain integers: `size: 224` is a shortest edge (CLIP resizes without
        # squashing), `crop_size: 224` a square
        if isinstance(self.size, int):
            self.size = {"shortest_edge": self.size}
        if isinstance(self.crop_size, int):
            self.crop_size = {"height": self.crop_size, "width": self.crop_size}
        self.size = {k: int(v) for k, v in self.size.items()}
        self.crop_size = {k: int(v) for k, v in self.crop_size.items()}
        if set(self.size) not in ({"shortest_edge"}, {"height", "width"}):
            raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height': h, 'width': w}}, got {self.size}")
        if set(self.crop_size) != {"height", "width"}:
            raise ValueError(f"crop_size must be {{'height': h, 'width': w}}, got {self.crop_size}")
        if min(*self.size.values(), *self.crop_size.values()) < 1:
            raise ValueError(f"sizes must be positive, got size={self.size}, crop_size={self.crop_size}")
        self.resample = int(self.resample)
        # a single number means the same for every channel, as in transformers
        self.image_mean, self.image_std = _three("image_mean", self.image_mean), _three("image_std", self.image_std)
        if 0 in self.image_std:
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")

    # --- configuration files -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> ImageProcessor:
        """Settings from a preprocessor_config.json dict; keys that do not concern CLIP are ignored.
        A SiglipImageProcessor's missing keys take SigLIP's defaults, and it never crops; a type another
        recipe registered is that recipe's."""
        for recipe in ImageProcessor._recipes:
            if cls is ImageProcessor and d.get("image_processor_type") in recipe.processor_types:
                return recipe.from_dict(d)
        names = {f.name for f in fields(cls)}
        settings = {k: v for k, v in d.items() if k in names}
        if d.get("image_processor_type") in SIGLIP_TYPES:
            settings = {**SIGLIP_DEFAULTS, **settings, "do_center_crop": False}
        return cls(**settings)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageProcessor:
        """Reads `folder/preprocessor_config.json`; a folder without one gets CLIP's defaults."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        path = folder / CONFIG_NAME
        if not is_file(path):
            return cls()
        try:
            return cls.from_dict(read_json(path))
        except CheckpointError:
            raise
        except (ValueError, TypeError, AttributeError) as e:  # a value of the wrong kind, e.g. size: [224]
            raise CheckpointError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """A CLIPImageProcessor config, or a SiglipImageProcessor one where that is the same recipe
        (a fixed size without crop, which SigLIP's processor cannot express otherwise)."""
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        if not self.do_center_crop and set(self.size) == {"height", "width"}:
            del d["do_center_crop"], d["crop_size"]
            return {"image_processor_type": "SiglipImageProcessor", **d}
        return {"image_processor_type": "CLIPImageProcessor", **d}

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Writes `folder/preprocessor_config.json`, which transformers' CLIPImageProcessor loads too, whole or
        not at all (`clipx.files.replacing`)."""
        path = Path(folder) / CONFIG_NAME
        make_folder(path.parent)
        write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", path)
        return path

    # --- preprocessing ---------------------------------------------------------------------------
    def __call__(self, images: Any) -> torch.Tensor:
        """One image or a list (PIL, path, array, or preprocessed tensor) -> FloatTensor [B, 3, H, W]."""
        items = image_list(images)
        batches = [self._one(image, i) for i, image in enumerate(items)]
        shapes = {tuple(b.shape[1:]) for b in batches}
        if len(shapes) > 1:
            raise ValueError(f"images came out in different sizes {sorted(shapes)} and cannot form one batch; "
                             "keep do_center_crop=True or pass images of one aspect ratio")
        return batches[0] if len(batches) == 1 else torch.cat(batches)

    def _one(self, image: Any, i: int) -> torch.Tensor:
        """One input -> [n, 3, H, W]."""
        if isinstance(image, torch.Tensor):
            return check_pixel_values(image, f"images[{i}]")
        image = self._to_rgb(_to_pil(image, i), i)
        width, height = image.size
        if self.do_resize:
            size = self._resized_size(width, height)
            # refused before allocating, where PIL refuses a file (twice its limit; it only warns below)
            if Image.MAX_IMAGE_PIXELS and size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
                raise ValueError(f"images[{i}]: a {width}x{height} image resized to {size[0]}x{size[1]} would hold "
                                 f"more than twice PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels; "
                                 "crop its extreme aspect ratio first")
            image = image.resize(size, resample=self.resample)
        if self.do_center_crop:
            image = image.crop(self._crop_region(*image.size))  # PIL fills outside the image with 0, as HF pads
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        # transformers multiplies in float64 and rounds to float32 afterwards; normalising in float32
        # then matches it to the last bit
        x = (x.double() * self.rescale_factor).float() if self.do_rescale else x.float()
        if self.do_normalize:
            x = (x - _channels(self.image_mean)) / _channels(self.image_std)
        return x[None]

    def _to_rgb(self, image: Image.Image, i: int) -> Image.Image:
        image = eight_bit(image, f"images[{i}]")
        if not self.do_convert_rgb:
            if image.mode != "RGB":
                raise ValueError(f"images[{i}] is a {image.mode} image and do_convert_rgb is False; pass RGB images")
            return image
        # transformers composites anything with an alpha band (or a transparent palette colour) onto
        # white; note its test is the letter "A" among the bands, which LAB images also pass
        try:
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
            return image.convert("RGB")
        except ValueError as e:
            raise ValueError(f"images[{i}]: cannot convert a {image.mode} image to RGB: {e}") from e

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, with transformers' arithmetic (the long edge is floored)."""
        if "shortest_edge" not in self.size:
            return self.size["width"], self.size["height"]
        s = self.size["shortest_edge"]
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def _crop_region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop; offsets floored like transformers'."""
        if not self.do_center_crop:
            return 0, 0, width, height
        h, w = self.crop_size["height"], self.crop_size["width"]
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    # --- the way back ----------------------------------------------------------------------------
    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of an original `width` x `height` image that the preprocessed
        crop shows, in original pixels (it reaches outside where the crop was padded)."""
        new_w, new_h = self._resized_size(width, height) if self.do_resize else (width, height)
        left, top, right, bottom = self._crop_region(new_w, new_h)
        # PIL's resize maps the edges of the image onto each other, so the scale is exact
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, right * sx, bottom * sy

    def value_range(self) -> tuple[float, float]:
        """The lowest and the highest value (over the channels) this processor's output can hold."""
        top = 255 * self.rescale_factor if self.do_rescale else 255.0
        mean, std = (self.image_mean, self.image_std) if self.do_normalize else ((0.0,) * 3, (1.0,) * 3)
        ends = [(v - m) / s for m, s in zip(mean, std) for v in (0.0, top)]
        return min(ends), max(ends)

    def to_pil(self, pixel_values: torch.Tensor) -> list[Image.Image]:
        """Undo normalise and rescale: [3, H, W] or [B, 3, H, W] -> RGB images for display."""
        x = check_pixel_values(pixel_values, "pixel_values").detach().float().cpu()
        if self.do_normalize:
            x = x * _channels(self.image_std) + _channels(self.image_mean)
        if self.do_rescale:
            x = x / self.rescale_factor
        arrays = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a, "RGB") for a in arrays]


def _three(name: str, values: Any) -> tuple[float, float, float]:
    values = [values] * 3 if isinstance(values, (int, float)) else list(values)
    if len(values) != 3:
        raise ValueError(f"{name} needs one value or one per RGB channel, got {values}")
    return tuple(float(v) for v in values)


def _channels(values: tuple) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None]


def image_list(images: Any) -> list:
    """One image or a list / tuple of them -> a non-empty list (a tensor batch is the caller's to split)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given: pass an image or a non-empty list of images")
    return items


def check_pixel_values(x: torch.Tensor, name: str) -> torch.Tensor:
    """A preprocessed tensor, [3, H, W] or [B, 3, H, W] float -> [B, 3, H, W], values untouched."""
    check_has_values(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name}: a tensor must be preprocessed pixel values, float [B,3,H,W]; got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3 or 0 in x.shape:
        raise ValueError(f"{name}: expected a float tensor of shape [B,3,H,W] (or [3,H,W]); "
                         f"got shape {list(x.shape)}")
    return x


def _to_pil(image: Any, i: int) -> Image.Image:
    """A PIL image, path or array -> a non-empty PIL image (any mode)."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, f"images[{i}]")
    elif isinstance(image, np.ndarray):
        image = _from_array(image, i)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"images[{i}]: expected a PIL image, a path, a numpy array or a float tensor "
                        f"[B,3,H,W]; got {type(image).__name__}")
    if 0 in image.size:
        raise ValueError(f"images[{i}] is empty: size {image.size[0]}x{image.size[1]}")
    return image


def open_image(path: str | os.PathLike, name: str | None = None, upright: bool = True,
               mode: str | None = "RGB", data: bytes | None = None) -> Image.Image:
    """An image file as the processor sees it: turned upright by its EXIF orientation, RGB.

    Everything that shows maps on an original opens it here, so the maps (computed on the upright
    image) land on the pixels they were computed from. `name` (e.g. "images[0]") prefixes errors.
    For annotations: upright=False keeps the pixels as stored, without the EXIF rotation (masks are
    drawn on those), and mode=None the file's own mode (a palette PNG's indices, not their colours).
    `data`: the file's bytes where they come from elsewhere (a tar member, a dataset's cell); `path`
    then only names them in errors.
    """
    with _reading(path, name, data) as f:
        # transformers' load_image: apply the EXIF rotation, then a plain convert("RGB"); a file's
        # alpha is dropped here, not composited onto white as for a PIL image passed in
        image = ImageOps.exif_transpose(f) if upright else f
        return eight_bit(image, name or str(path)).convert(mode) if mode is not None else image.copy()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The files of `folder` and its subfolders whose extension PIL reads, sorted; an error for a folder
    that does not exist or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    extensions = Image.registered_extensions()
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not found:
        raise ValueError(f"{folder} holds no image files (none with an extension PIL reads, such as .png or .jpg)")
    return found


def image_size(path: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(width, height) of `open_image(path)`, read from the header and EXIF where the format allows."""
    with _reading(path, name) as f:
        width, height = f.size
        turned = f.getexif().get(ExifTags.Base.Orientation) in _TURNED
        return (height, width) if turned else (width, height)


# the EXIF orientations that exif_transpose turns by 90 degrees (transpose, rotate, transverse)
_TURNED = {5, 6, 7, 8}


@contextmanager
def _reading(path: str | os.PathLike, name: str | None, data: bytes | None = None) -> Iterator[Image.Image]:
    """The file (or `data`, named by `path`) opened lazily by PIL; a missing, unreadable or oversized file
    is one clear error naming it."""
    path, prefix = Path(path), f"{name}: " if name else ""
    if data is None and not path.is_file():
        raise FileNotFoundError(f"{prefix}no such image file: {path}")
    opened = path if data is None else io.BytesIO(data)
    try:
        f = Image.open(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # a warning where filters make it one
        raise _bomb(prefix, path, e) from None
    except (OSError, ValueError) as e:  # PIL signals a file it cannot read with OSError subclasses
        # PIL names a buffer by its repr (a memory address): name it by path, so the message is the same each run
        raise ValueError(f"{prefix}cannot read an image from {path}: {str(e).replace(repr(opened), str(path))}") from e
    # PIL only warns between 1x and 2x its pixel limit and decodes anyway: refuse both alike (checked
    # here rather than by turning the warning into an error: warning filters are global, not per thread)
    if Image.MAX_IMAGE_PIXELS and f.size[0] * f.size[1] > Image.MAX_IMAGE_PIXELS:
        f.close()
        raise _bomb(prefix, path, f"{f.size[0]}x{f.size[1]} pixels")
    with f:
        try:
            yield f
        except (OSError, ValueError) as e:  # a header that opened but pixels that do not decode
            raise ValueError(f"{prefix}cannot read an image from {path}: {e}") from e


# PIL's modes of more than 8 bits a channel, which convert("RGB") clips at 255 (a 16-bit photo turns white)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def eight_bit(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit or 32-bit grey image as 8-bit grey, scaled by its type's range: 16-bit integers by 255 / 65535,
    floats from [0, 1], 32-bit integers ("I") only where they hold 0..255 (PIL's own reading). A range that
    cannot be known is an error naming the image, never a clipped picture. Other modes are returned as
    they are."""
    if image.mode not in _WIDE_MODES:
        return image
    values = np.asarray(image)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if image.mode == "F":
        if not (np.isfinite(values).all() and low >= 0 and high <= 1):
            raise ValueError(f"{name}: a 32-bit float image must hold values in [0, 1]; got [{low}, {high}]")
        scale = 255.0
    elif image.mode == "I":
        if low < 0 or high > 255:
            raise ValueError(f"{name}: a 32-bit integer image with values [{low}, {high}] has no known range; "
                             "convert it to 8 bits, or to 16 bits (mode I;16), first")
        scale = 1.0
    else:
        scale = 255 / 65535
    return Image.fromarray(np.round(values.astype(np.float64) * scale).astype(np.uint8))


def _from_array(a: np.ndarray, i: int) -> Image.Image:
    """HWC (C = 1, 3, 4) or HW; uint8 (or integers in 0..255), or floats in [0, 1]."""
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ValueError(f"images[{i}]: expected an array of shape HxW or HxWxC with C in 1, 3, 4; "
                         f"got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"images[{i}] is empty: shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"images[{i}]: a float array must hold values in [0, 1]; "
                             f"got [{a.min()}, {a.max()}]")
        # PIL resizes 8-bit images: quantise by rounding (transformers truncates, and with its
        # default do_rescale it would scale [0, 1] floats by 1/255 twice)
        a = np.round(a * 255)
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"images[{i}]: an integer array must hold values in 0..255; got [{a.min()}, {a.max()}]")
    else:
        raise TypeError(f"images[{i}]: unsupported array dtype {a.dtype}; use uint8 or floats in [0, 1]")
    a = a.astype(np.uint8)
    return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)


def _bomb(prefix: str, path: Path, detail: object) -> ValueError:
    return ValueError(f"{prefix}{path} has more pixels than PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} "
                      f"allows, a guard against decompression bombs ({detail}); downscale the image, or if you "
                      "trust the file raise the limit in Python (PIL.Image.MAX_IMAGE_PIXELS = None removes it)")
