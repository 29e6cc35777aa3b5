"""The segmentation benchmarks that explanation papers score maps on, read from the user's own copy, and
those papers' scores of a map against a mask.

ImageNet-segmentation (Guillaumin et al., "ImageNet Auto-annotation with Segmentation Propagation", IJCV
2014): 4,276 ImageNet validation images with a foreground mask each, in `gtsegs_ijcv.mat`, a MATLAB v7.3
(HDF5) file. Chefer et al. ("Transformer Interpretability Beyond Attention Visualization", CVPR 2021;
github.com/hila-chefer/Transformer-Explainability, `data/Imagenet.py`, `baselines/ViT/imagenet_seg_eval.py`)
and Gandelsman et al. (TextSpan, "Interpreting CLIP's Image Representation via Text-Based Decomposition",
ICLR 2024; github.com/yossigandelsman/clip_text_span, `compute_segmentations.py`) read and score it as
`read_imagenet_segmentation` and `segmentation_scores` / `aggregate` do here (our own code, same rules).

Pascal VOC 2012 segmentation (Everingham et al., IJCV 2010): `ImageSets/Segmentation/{split}.txt`,
`JPEGImages/{id}.jpg`, `SegmentationClass/{id}.png` (palette indices: 0 background, 1..20 the classes of
`VOC_CLASSES`, 255 void, left out of every score), read by `read_voc_segmentation`.

h5py, needed for the .mat file only, is the `segmentation` extra: `pip install "clipx-lens[segmentation]"`.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..extras import require
from .metrics import ArrayLike, _map, _mask, _resize, average_precision
from ..preprocess.image import open_image

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor")  # VOC's class ids 1..20, their names written as words for captions
VOC_VOID = 255


# --- ImageNet-segmentation ------------------------------------------------------------------------

def _h5py():
    return require("h5py", "reading gtsegs_ijcv.mat", "segmentation")


class ImagenetSegmentation(Sequence):
    """`gtsegs_ijcv.mat` as a sequence of (RGB PIL image, bool mask [H, W]), read from the file per item.

    The layout (MATLAB v7.3, so HDF5 with every array stored transposed): `value/img` and `value/gt` are
    [n, 1] arrays of object references; image i is the [3, W, H] uint8 array `value/img[i, 0]` points to,
    and its mask the [W, H] 0/1 array that the 1x1 cell `value/gt[i, 0]` points to.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        h5py = _h5py()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        if not h5py.is_hdf5(self.path):
            raise ValueError(f"{self.path} is not an HDF5 file; gtsegs_ijcv.mat is a MATLAB v7.3 (HDF5) .mat")
        with h5py.File(self.path, "r") as f:
            n_images, n_masks = (self._references(f, key).shape[0] for key in ("value/img", "value/gt"))
        if n_images != n_masks:
            raise ValueError(f"{self.path}: value/img holds {n_images} images but value/gt {n_masks} masks")
        self._len = n_images

    def _references(self, f, key: str):
        h5py = _h5py()
        node = f.get(key)
        if not isinstance(node, h5py.Dataset):  # a bad file, not a bad argument: ValueError
            raise ValueError(f"{self.path} has no dataset {key}: not gtsegs_ijcv.mat")  # noqa: TRY004
        if h5py.check_dtype(ref=node.dtype) is not h5py.Reference or node.ndim != 2 or node.shape[1] != 1:
            raise ValueError(f"{self.path}: {key} should be an [n, 1] array of object references (a MATLAB "
                             f"cell array), got shape {node.shape} of {node.dtype}")
        return node

    @staticmethod
    def _array(f, reference, where: str) -> np.ndarray:
        """The array an object reference points to."""
        try:
            node = f[reference]
        except (KeyError, ValueError) as e:  # a null reference, or one into nothing
            raise ValueError(f"{where}: a reference does not resolve: {e}") from None
        if not isinstance(node, _h5py().Dataset):
            raise ValueError(f"{where}: a reference points to {node.name}, which is not an array")  # noqa: TRY004
        return node[()]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        i = operator.index(index)
        if not -self._len <= i < self._len:
            raise IndexError(f"index {index} is out of range for {self._len} images in {self.path}")
        i %= self._len
        where = f"{self.path}: image {i}"
        with _h5py().File(self.path, "r") as f:
            image = self._array(f, self._references(f, "value/img")[i, 0], where)
            cell = self._array(f, self._references(f, "value/gt")[i, 0], where)
            if cell.shape != (1, 1) or cell.dtype.kind != "O":
                raise ValueError(f"{where}: value/gt should point to a 1x1 cell holding a reference to the mask, "
                                 f"got shape {cell.shape} of {cell.dtype}")
            mask = self._array(f, cell[0, 0], where)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{where} should be a [3, W, H] uint8 array (MATLAB's H x W x 3, transposed), "
                             f"got shape {image.shape} of {image.dtype}")
        image, mask = image.transpose(2, 1, 0), mask.T
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{where}: its mask has shape (H, W) = {mask.shape} but the image {image.shape[:2]}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{where}: the mask should hold 0 and 1 only, got values {np.unique(mask)[:8]}")
        return Image.fromarray(np.ascontiguousarray(image), "RGB"), mask.astype(bool)

    def __repr__(self) -> str:
        return f"ImagenetSegmentation({str(self.path)!r}, {self._len} images)"


def read_imagenet_segmentation(path: str | os.PathLike) -> ImagenetSegmentation:
    """The ImageNet-segmentation benchmark from your copy of `gtsegs_ijcv.mat`: a lazy sequence of
    (RGB PIL image, bool foreground mask [H, W]) at the images' own sizes. The file is checked here (HDF5,
    the keys, as many masks as images: a ValueError naming it otherwise) and each item when read."""
    return ImagenetSegmentation(path)


# --- Pascal VOC -----------------------------------------------------------------------------------

@dataclass
class VOCItem:
    """One VOC image: `labels` [H, W] uint8 holds each pixel's class id (0 background, k for
    `VOC_CLASSES[k - 1]`, 255 void); `classes` names the classes present, in id order."""

    id: str
    image: Image.Image
    labels: np.ndarray

    @property
    def classes(self) -> list[str]:
        return [VOC_CLASSES[k - 1] for k in np.unique(self.labels).tolist() if 1 <= k <= len(VOC_CLASSES)]

    @property
    def void(self) -> np.ndarray:
        """bool [H, W]: the void pixels (object outlines, unlabelled), which no score counts."""
        return self.labels == VOC_VOID

    def mask(self, name: str) -> np.ndarray:
        """bool [H, W]: the pixels of class `name` (one of `VOC_CLASSES`)."""
        if name not in VOC_CLASSES:
            raise ValueError(f"{name!r} is not a VOC class; VOC_CLASSES has: {', '.join(VOC_CLASSES)}")
        return self.labels == VOC_CLASSES.index(name) + 1


class VOCSegmentation(Sequence):
    """A VOC split as a sequence of `VOCItem`, each read from its files when asked for."""

    def __init__(self, root: str | os.PathLike, split: str = "val") -> None:
        self.root = Path(root)
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"no split file {listing}: root should be the VOC2012 folder (the one "
                                    "holding ImageSets/, JPEGImages/ and SegmentationClass/)")
        self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        bad = [i for i in self.ids if Path(i).name != i or i in (".", "..")]
        if bad:
            raise ValueError(f"{listing}: lines should be image ids (file names without extension), got {bad[:3]}")
        if not self.ids:
            raise ValueError(f"{listing} lists no images")
        self.split = split

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> VOCItem:
        i = operator.index(index)
        if not -len(self.ids) <= i < len(self.ids):
            raise IndexError(f"index {index} is out of range for {len(self.ids)} images in the {self.split} split")
        image_id = self.ids[i]
        png = self.root / "SegmentationClass" / f"{image_id}.png"
        annotation = open_image(png, upright=False, mode=None)
        if annotation.mode not in ("P", "L"):
            raise ValueError(f"{png} is a {annotation.mode} image; VOC's class masks are palette PNGs of class ids")
        labels = np.array(annotation)
        unknown = np.setdiff1d(np.unique(labels), [*range(len(VOC_CLASSES) + 1), VOC_VOID])
        if unknown.size:
            raise ValueError(f"{png} holds class ids {unknown.tolist()[:8]}; VOC's are 0..20 and 255 (void)")
        jpg = self.root / "JPEGImages" / f"{image_id}.jpg"
        image = open_image(jpg, upright=False)  # the pixels as stored: the ones the mask was drawn on
        if image.size != annotation.size:
            raise ValueError(f"{jpg} is {image.size[0]}x{image.size[1]} but its mask {png} "
                             f"{annotation.size[0]}x{annotation.size[1]} (W x H)")
        return VOCItem(image_id, image, labels)

    def __repr__(self) -> str:
        return f"VOCSegmentation({str(self.root)!r}, split={self.split!r}, {len(self.ids)} images)"


def read_voc_segmentation(root: str | os.PathLike, split: str = "val") -> VOCSegmentation:
    """Pascal VOC's segmentation split from your copy (`root` is the VOC2012 folder): a lazy sequence of
    `VOCItem` (id, RGB image, class-id labels; `.classes`, `.mask(name)`, `.void`)."""
    return VOCSegmentation(root, split)


# --- scores ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentationScores:
    """One map against one mask, in the counts that sum over a dataset: correct / labeled pixels of the
    binarised map, and per class (background, foreground) the intersection and union of predicted and
    true pixels; and the average precision of the map itself (`segmentation_scores`)."""

    correct: int
    labeled: int
    intersection: tuple[int, int]
    union: tuple[int, int]
    ap: float

    def to_json(self) -> dict:
        return {"correct": self.correct, "labeled": self.labeled, "intersection": list(self.intersection),
                "union": list(self.union), "ap": self.ap}

    @classmethod
    def from_json(cls, d: dict) -> SegmentationScores:
        return cls(d["correct"], d["labeled"], tuple(d["intersection"]), tuple(d["union"]), d["ap"])


def segmentation_scores(saliency: ArrayLike, mask: ArrayLike, ignore: ArrayLike | None = None) -> SegmentationScores:
    """Chefer et al.'s (and TextSpan's) scores of one map against one foreground mask [H, W].

    The map is upsampled bilinearly to the mask's size and min-max normalised to [0, 1] over the scored
    pixels (all but `ignore`, bool [H, W], e.g. VOC's void). Binarised: foreground where it exceeds its
    mean. A constant map ranks nothing: all background, and every score tied for the AP.
    AP: as theirs, one ranking that pools two channels, the map against the mask and 1 - map against the
    background, i.e. `average_precision(cat(map, 1 - map), cat(mask, ~mask))`, not a mean of two APs.
    """
    m = _mask(mask, allow_empty=True)
    s = _resize(_map(saliency), tuple(m.shape), "bilinear")
    scored = torch.ones_like(m) if ignore is None else ~_mask(ignore, "ignore", allow_empty=True)
    if scored.shape != m.shape:
        raise ValueError(f"ignore {tuple(scored.shape)} and mask {tuple(m.shape)} differ in shape")
    if not scored.any():
        raise ValueError("every pixel is ignored: nothing to score")
    s, y = s[scored], m[scored]
    low, high = s.min(), s.max()
    s = (s - low) / (high - low) if high > low else torch.zeros_like(s)
    fg = s > s.mean()
    ranked = torch.cat([s, 1 - s]) if high > low else torch.zeros(2 * len(s), dtype=s.dtype)
    return SegmentationScores(
        correct=int((fg == y).sum()), labeled=len(y),
        intersection=(int((~fg & ~y).sum()), int((fg & y).sum())),
        union=(int((~fg | ~y).sum()), int((fg | y).sum())),
        ap=average_precision(ranked, torch.cat([y, ~y])))


def aggregate(scores: Iterable[SegmentationScores]) -> dict[str, float]:
    """A dataset's figures, as those papers total them: pixel accuracy = all correct / all labeled pixels;
    mIoU = the mean over background and foreground of (total intersection / total union); mAP = the mean
    of the per-image APs. Fractions in [0, 1]. A class absent from every prediction and every mask has no
    IoU and is left out of the mean (they would count it as 0)."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to aggregate")
    intersection = np.sum([s.intersection for s in scores], axis=0)
    union = np.sum([s.union for s in scores], axis=0)
    return {"pixel accuracy": sum(s.correct for s in scores) / sum(s.labeled for s in scores),
            "mIoU": float(np.mean(intersection[union > 0] / union[union > 0])),
            "mAP": float(np.mean([s.ap for s in scores]))}
