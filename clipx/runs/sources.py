"""What a dataset run reads: image files, a Hugging Face `datasets.Dataset`, or WebDataset tar shards.

A source lists its `items`, the JSON values a run's manifest keeps (a path; a row index; [shard, key]);
`describe()`s what identifies its data as JSON for the run's config, so that a run refuses to resume over
a changed dataset; and `load(item)`s one sample: the image as `open_image` opens a file (upright, RGB), the
sample's own captions where it has them, and what a caption function is given.

`datasets` is imported only for its source, and brace patterns of shards need `braceexpand` (both come
with pip extras: `clipx-lens[datasets]`, `clipx-lens[webdataset]`).
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..extras import require
from ..preprocess.image import image_files, open_image

# a sample's image member, when image_column does not name one: the first of these it has
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "pnm", "bmp", "gif", "tif", "tiff")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # compressed ones are refused by name (no random access)
# WebDataset's rules (webdataset.tariterators): a member's key is its path up to the first dot of its
# basename, the rest its extension (lowercased); members under a `__name__` component are metadata
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


@dataclass
class Sample:
    image: Image.Image
    captions: list[str] | None  # the sample's own (its caption column, its txt member), if it has them
    data: Any                   # what a caption function is given: the path, the row, the WebDataset sample


def caption_list(given: Any, where: str) -> list[str]:
    """A caption or a list of captions as a non-empty list of strings; anything else is an error naming `where`."""
    captions = [given] if isinstance(given, str) else given
    if not isinstance(captions, (list, tuple)) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{where} is {given!r}: a caption is a string or a list of strings")
    return list(captions)


class ImageFiles:
    """Image files: a folder's (searched recursively, `processing.image_files`) or a list of paths. A
    caption function is given the path."""

    caption_column, has_captions = None, False

    def __init__(self, images: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        if isinstance(images, (str, os.PathLike)):
            self.items = [str(p) for p in image_files(images)]
        else:
            self.items = [str(p) for p in images]
            if not self.items:
                raise ValueError("no images given: got an empty list")

    def describe(self) -> None:
        return None  # the items, paths, say it all (and so runs begun before the other sources still resume)

    def load(self, item: str) -> Sample:
        return Sample(open_image(item), None, item)


class HuggingFaceDataset:
    """The rows of a `datasets.Dataset`; items are row indices. The image column holds `datasets.Image`
    cells (decoded here, exactly as image files are) or paths; the caption column, if named, a caption or
    a list of captions per row. A caption function is given the row, its image cell undecoded
    ({"bytes", "path"})."""

    def __init__(self, dataset: Any, image_column: str | None = None, caption_column: str | None = None) -> None:
        datasets = require("datasets", "A Hugging Face dataset as a source", "datasets")
        if isinstance(dataset, datasets.DatasetDict):
            raise TypeError(f"a DatasetDict of the splits {list(dataset)}: pass one of them, "
                            f"dataset[{next(iter(dataset), 'train')!r}]")
        if not isinstance(dataset, datasets.Dataset):  # an IterableDataset among others
            raise TypeError(f"expected a datasets.Dataset (its rows are read back by index, which resuming a run "
                            f"needs), got {type(dataset).__name__}")
        self.image_column, self.caption_column = image_column or "image", caption_column
        for role, column in (("image_column", self.image_column), ("caption_column", caption_column)):
            if column is not None and column not in dataset.column_names:
                raise ValueError(f"{role}={column!r}: the dataset has no such column; its columns are "
                                 f"{dataset.column_names}")
        feature = dataset.features[self.image_column]
        decoded_here = isinstance(feature, datasets.Image)
        if not (decoded_here or getattr(feature, "dtype", None) in ("string", "large_string")):
            raise ValueError(f"image_column={self.image_column!r} is a {feature}, neither a datasets.Image column "
                             "nor image paths (strings)")
        self.description = {"kind": "datasets", "fingerprint": dataset._fingerprint,
                            "split": None if dataset.split is None else str(dataset.split),
                            "num_rows": dataset.num_rows, "image_column": self.image_column,
                            "caption_column": caption_column}
        if decoded_here:  # the cell's bytes, for open_image: EXIF orientation and the size guard, as for files
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.dataset = dataset.with_format(None)  # plain Python rows, whatever format the caller set
        self.items = list(range(dataset.num_rows))

    @property
    def has_captions(self) -> bool:
        return self.caption_column is not None

    def describe(self) -> dict[str, Any]:
        return self.description

    def load(self, item: int) -> Sample:
        row = self.dataset[item]
        cell, name = row[self.image_column], f"row {item}"
        if isinstance(cell, str):
            image = open_image(cell, name)
        elif isinstance(cell, dict) and (cell.get("bytes") or cell.get("path")):
            image = open_image(cell.get("path") or self.image_column, name, data=cell.get("bytes"))
        else:
            raise ValueError(f"{name}: no image in column {self.image_column!r}")
        captions = None
        if self.caption_column is not None and row[self.caption_column] is not None:
            captions = caption_list(row[self.caption_column], f"{name}'s {self.caption_column!r}")
        return Sample(image, captions, row)


class WebDatasetShards:
    """The samples of WebDataset tar shards (a list of paths, or a brace pattern: "shards-{000..009}.tar"),
    grouped from the tar headers as `webdataset.WebDataset` groups them; items are [shard, key]. A sample's
    members are read back at random by their offset in the (uncompressed) tar, never by streaming it. The
    image is the member image_column names (an extension), else the first of IMAGE_EXTENSIONS it has; its
    captions the caption_column member's text (default `txt`, stripped). A caption function is given the
    sample as `webdataset.WebDataset` yields it: {"__key__", "__url__", extension: bytes}."""

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], image_column: str | None = None,
                 caption_column: str | None = None) -> None:
        patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
        self.shards = [path for pattern in patterns for path in _expand(str(pattern))]
        if not self.shards:
            raise ValueError("no WebDataset shards given: got an empty list")
        twice = [s for s, n in Counter(self.shards).items() if n > 1]
        if twice:
            raise ValueError(f"WebDataset shard {twice[0]} is listed twice")
        self.image_column, self.caption_column = image_column, caption_column or "txt"
        self._members: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}  # (shard, key) -> ext -> (offset, size)
        states = {}
        for shard in self.shards:
            for key, members in _samples(shard):
                self._members[shard, key] = members
            stat = os.stat(shard)
            states[shard] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}  # changed since: another dataset
        self.items = [list(item) for item in self._members]
        self.description = {"kind": "webdataset", "shards": states, "image_column": image_column,
                            "caption_column": self.caption_column}
        self._file = None  # items come shard by shard: one open shard serves them in turn

    @property
    def has_captions(self) -> bool:
        return any(self.caption_column in members for members in self._members.values())

    def describe(self) -> dict[str, Any]:
        return self.description

    def load(self, item: Sequence[str]) -> Sample:
        shard, key = item
        members, name = self._members[shard, key], f"{shard}:{key}"
        sample = {"__key__": key, "__url__": shard,
                  **{extension: self._read(shard, *where) for extension, where in members.items()}}
        image = self.image_column or next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if image not in members:
            raise ValueError(f"{name} has no {image or 'image'} member (its members: {', '.join(members)})")
        captions = None
        if self.caption_column in members:
            captions = caption_list(sample[self.caption_column].decode("utf-8").strip(), f"{name}.{self.caption_column}")
        return Sample(open_image(f"{name}.{image}", data=sample[image]), captions, sample)

    def _read(self, shard: str, offset: int, size: int) -> bytes:
        if self._file is None or self._file.name != shard:
            if self._file is not None:
                self._file.close()
            self._file = open(shard, "rb")  # noqa: SIM115 (kept open across loads, closed on the next shard)
        self._file.seek(offset)
        return self._file.read(size)


def _expand(pattern: str) -> list[str]:
    """A brace pattern's paths in order ("a-{0..2}.tar" -> a-0, a-1, a-2), as webdataset expands them."""
    if "{" not in pattern:
        return [pattern]
    return list(require("braceexpand", f"The shard pattern {pattern}", "webdataset").braceexpand(pattern))


def _samples(shard: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """A shard's samples from its tar headers alone: (key, {extension: (data offset, size)}), consecutive
    members with one key making one sample, as webdataset's group_by_keys does."""
    try:
        with tarfile.open(shard, "r:") as tar:
            members = tar.getmembers()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such WebDataset shard: {shard}") from None
    except tarfile.ReadError as e:
        raise ValueError(f"{shard} is not a readable uncompressed tar file ({e}): shards are read at random by "
                         "member offset, so a compressed one must be decompressed first") from None
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    for member in members:
        match = _KEY.match(member.name)
        if not member.isreg() or _META.match(member.name) or match is None:
            continue
        key, extension = match.group(1), match.group(2).lower()
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        if extension in samples[-1][1]:
            raise ValueError(f"{shard}: member {member.name} repeats the {extension!r} of sample {key!r}")
        samples[-1][1][extension] = (member.offset_data, member.size)
    repeated = [key for key, n in Counter(key for key, _ in samples).items() if n > 1]
    if repeated:
        raise ValueError(f"{shard}: the members of sample {repeated[0]!r} are not adjacent, so WebDataset would "
                         "yield two samples by that key; write each sample's members together")
    return samples


def as_source(images: Any, image_column: str | None = None, caption_column: str | None = None):
    """The source `images` names: a source as is; a `datasets.Dataset`; WebDataset shards (paths or a
    pattern ending in .tar); else image files (a folder, or a list of paths)."""
    if isinstance(images, (ImageFiles, HuggingFaceDataset, WebDatasetShards)):
        if image_column is not None or caption_column is not None:
            raise ValueError("image_column and caption_column are set on the source itself, not beside it")
        return images
    datasets = sys.modules.get("datasets")  # a dataset object exists only where its package is imported
    if datasets is not None and isinstance(images, (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset)):
        return HuggingFaceDataset(images, image_column, caption_column)
    if isinstance(images, (str, os.PathLike)):
        names = [str(images)]
    elif isinstance(images, Sequence):
        names = [str(p) for p in images]
    else:
        raise TypeError(f"images must be a folder, a list of image paths, a datasets.Dataset or WebDataset shards "
                        f"(.tar paths or a pattern); got {type(images).__name__}")
    shards = [name.endswith(SHARD_SUFFIXES) for name in names]
    if names and all(shards):
        return WebDatasetShards(images, image_column, caption_column)
    if any(shards):
        raise ValueError(f"images mixes WebDataset shards ({names[shards.index(True)]}) and image files "
                         f"({names[shards.index(False)]}): give one kind")
    if image_column is not None or caption_column is not None:
        raise ValueError("image_column and caption_column name a datasets.Dataset's columns or a WebDataset "
                         "sample's members; image files have neither")
    return ImageFiles(images)
