"""Native-resolution, any-aspect-ratio preprocessing (NaFlex, as SigLIP 2 has it), identical to transformers'
`Siglip2ImageProcessorPil`: each image is resized, at its own aspect ratio, to the largest size whose
patch grid fits a budget of `max_num_patches` patches, rescaled and normalised, cut into patches flattened
in (row, column, channel) order, and padded with zero patches to the budget. The batch is `PatchedImages`:
`pixel_values [B, L, p*p*C]`, `pixel_attention_mask [B, L]` (1 for an image's own patches) and
`spatial_shapes [B, 2]` (each image's patch rows and columns), the inputs a linear patch embedding takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from PIL import Image

from .image import ImageProcessor, image_list

BILINEAR = int(Image.Resampling.BILINEAR)  # 2, what preprocessor_config.json stores


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images [B, C, H, W] (H and W multiples of the patch) -> patches [B, rows * cols, p * p * C], row-major,
    each patch flattened (row in patch, column in patch, channel)."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, rows: int, cols: int, patch_size: int) -> torch.Tensor:
    """`patchify` undone for the first rows * cols patches of [B, L, p * p * C] -> [B, C, rows * p, cols * p]."""
    b, p = patches.shape[0], patch_size
    c = patches.shape[-1] // (p * p)
    x = patches[:, :rows * cols].reshape(b, rows, cols, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, rows * p, cols * p)


def size_for_patch_budget(height: int, width: int, patch_size: int, max_num_patches: int,
                          eps: float = 1e-5) -> tuple[int, int]:
    """(height, width) of the image resized so that its patch grid holds at most `max_num_patches`, at its
    aspect ratio (up to rounding each side up to whole patches, at least one): transformers' binary search
    over the scale, so sizes come out the same to the pixel."""

    def scaled(size: int, scale: float) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (scaled(height, scale) / patch_size) * (scaled(width, scale) / patch_size) <= max_num_patches:
            low = scale
        else:
            high = scale
    return scaled(height, low), scaled(width, low)


class PatchedImages(dict):
    """A batch of patched images, the keyword arguments a linear-patch vision tower takes (transformers'
    names): `model(**batch, input_ids=...)`, or `model.encode_image(batch)`."""

    @property
    def grids(self) -> list[tuple[int, int]]:
        """Each image's (rows, cols) of patches."""
        return [tuple(s) for s in self["spatial_shapes"].tolist()]

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> PatchedImages:
        """pixel_values to `device` and `dtype`, the mask and shapes to `device` (they stay integers)."""
        return PatchedImages(pixel_values=self["pixel_values"].to(device=device, dtype=dtype),
                             pixel_attention_mask=self["pixel_attention_mask"].to(device),
                             spatial_shapes=self["spatial_shapes"].to(device))

    def images(self, patch_size: int) -> torch.Tensor:
        """The batch as images [B, C, rows * p, cols * p], which it is where every image has one grid; a
        ValueError saying what to do where the grids differ (no tensor holds images of several sizes)."""
        grids = self.grids
        if len(set(grids)) > 1:
            raise ValueError(f"these images were cut into patch grids of different shapes {grids} (rows, cols), "
                             "one per aspect ratio; pass images of one aspect ratio together, e.g. one image "
                             "per call")
        return unpatchify(self["pixel_values"], *grids[0], patch_size)


@dataclass
class NaFlexImageProcessor(ImageProcessor):
    """`Siglip2ImageProcessor`'s recipe; `size` and the crop do not apply (the patch budget sizes each image)."""

    resample: int = BILINEAR
    do_center_crop: bool = False
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    patch_size: int = 16
    max_num_patches: int = 256

    processor_types = ("Siglip2ImageProcessor", "Siglip2ImageProcessorPil", "Siglip2ImageProcessorFast")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("patch_size", "max_num_patches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        # transformers always resizes (it drops do_resize), and never crops
        self.do_resize, self.do_center_crop = True, False

    @classmethod
    def from_dict(cls, d: dict) -> NaFlexImageProcessor:
        names = {f.name for f in fields(cls)} - {"size", "crop_size"}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {"image_processor_type": "Siglip2ImageProcessor", "resample": self.resample,
                "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor,
                "do_normalize": self.do_normalize, "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "do_convert_rgb": self.do_convert_rgb,
                "patch_size": self.patch_size, "max_num_patches": self.max_num_patches}

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        height, width = size_for_patch_budget(height, width, self.patch_size, self.max_num_patches)
        return width, height

    def __call__(self, images: Any) -> PatchedImages:
        """One image or a list (PIL, path, array, or preprocessed [B, 3, H, W] with H and W multiples of the
        patch) -> `PatchedImages`, padded to `max_num_patches` patches (or to the most patches a given
        tensor holds, if more)."""
        patched, shapes = [], []
        for i, image in enumerate(image_list(images)):
            x = self._one(image, i)
            rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            if isinstance(image, torch.Tensor) and (rows * self.patch_size, cols * self.patch_size) != x.shape[-2:]:
                raise ValueError(f"images[{i}]: pixel_values of {x.shape[-2]}x{x.shape[-1]} pixels do not cut into "
                                 f"whole {self.patch_size}x{self.patch_size} patches")
            patched.extend(patchify(x, self.patch_size))
            shapes.extend([(rows, cols)] * x.shape[0])
        length = max(self.max_num_patches, *(len(p) for p in patched))
        pixel_values = torch.zeros(len(patched), length, patched[0].shape[-1])
        mask = torch.zeros(len(patched), length, dtype=torch.int32)
        for b, p in enumerate(patched):
            pixel_values[b, :len(p)] = p
            mask[b, :len(p)] = 1
        return PatchedImages(pixel_values=pixel_values, pixel_attention_mask=mask,
                             spatial_shapes=torch.tensor(shapes, dtype=torch.int64))
