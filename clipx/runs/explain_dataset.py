"""`clipx.explain` over a dataset as a resumable, shardable run (`clipx.runs`): image files (a folder or a
list of paths), a Hugging Face `datasets.Dataset`, or WebDataset tar shards (`clipx.runs.sources`).

Each image is explained against fixed captions (every image against all of them, one batched call per
batch of images), against the captions a function gives for its sample (a file's path, a dataset's row, a
WebDataset sample), or against its own (a dataset's caption column, a shard's `txt` members). An
unreadable image, or a caption function that raises, fails that item alone: it is listed in the run's
errors, the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..explain import default_method, explain, method_options
from ..model.clip import CLIP
from .runner import RunResult, run
from .sources import as_source, caption_list

Captions = Sequence[str] | Callable[[Any], "str | Sequence[str]"]


def explain_dataset(model: CLIP, images: Any, folder: str | Path, captions: Captions | None = None,
                    method: str | None = None, shard_size: int = 256, batch_size: int = 8, progress: bool = True,
                    image_column: str | None = None, caption_column: str | None = None, **options: Any) -> RunResult:
    """Explain every image against its captions, streaming the maps to shards in `folder` (see
    `clipx.runs.run`: resumable, and split across ranks under torchrun).

    `images`: a folder, a list of image paths, a `datasets.Dataset` (`image_column`, default "image";
    `caption_column`), or WebDataset shards: .tar paths or a pattern, "shards-{000..009}.tar" (`image_column`
    and `caption_column` name members by extension; default the first image one, and `txt`).
    `captions`: a list every image is explained against; a function of the sample (a path, a dataset row,
    a WebDataset sample dict) giving a caption or a list; or None for each sample's own captions.

    `method`: None is the model's default (`default_method` in clipx.explain). The run's config records the method and
    every option it runs with, defaults included, so a run begun under other defaults is not resumed.

    Each item's result: `image` [n_captions, grid_h, grid_w], `scores` [n_captions], `text` [n_captions, L]
    where the method gives one, and `captions`. Read back with `RunResult(folder)`."""
    data = as_source(images, image_column, caption_column)
    fixed, caption_for = None, None
    if captions is None:
        if not data.has_captions:
            raise ValueError("no captions given, and the images have none of their own: pass captions (a list or "
                             "a function), or a dataset's caption_column (WebDataset: samples with a txt member)")
        described = f"each sample's own ({data.caption_column})"
    elif callable(captions):
        described = f"function {getattr(captions, '__module__', '?')}.{getattr(captions, '__qualname__', repr(captions))}"
        caption_for = captions
    else:
        fixed = [captions] if isinstance(captions, str) else list(captions)
        if not fixed or not all(isinstance(c, str) for c in fixed):
            raise ValueError("captions must be a non-empty list of strings, a function of a sample, or None for "
                             "each sample's own")
        described = fixed
    method = default_method(model) if method is None else method
    used = method_options(method, options)  # an option the method does not take fails here, not in every item
    config = {"task": "explain", "model": model.fingerprint(), "method": method,
              "options": json.loads(json.dumps(used, default=repr)), "captions": described}
    if data.describe() is not None:
        config["source"] = data.describe()

    def process(batch: list[Any]) -> list[dict[str, Any] | BaseException]:
        if fixed is not None:
            return _explain_batch(model, [_image(data, item) for item in batch], fixed, method, options)
        return [_one(model, data, item, caption_for, method, options) for item in batch]

    return run(folder, data.items, process, config, shard_size=shard_size, batch_size=batch_size,
               progress=progress)


def _image(data, item) -> Image.Image | BaseException:
    try:
        return data.load(item).image
    except Exception as e:
        return e


def _one(model, data, item, caption_for, method, options) -> dict[str, Any] | BaseException:
    try:
        sample = data.load(item)
        if caption_for is not None:
            captions = caption_list(caption_for(sample.data), f"the caption function's result for item {item}")
        elif sample.captions is None:
            raise ValueError(f"item {item} has no caption of its own ({data.caption_column})")
        else:
            captions = sample.captions
        return _explain_batch(model, [sample.image], captions, method, options)[0]
    except Exception as e:
        return e


def _explain_batch(model: CLIP, images: list[Image.Image | BaseException], captions: list[str], method: str,
                   options: dict[str, Any]) -> list[dict[str, Any] | BaseException]:
    """One explain call for the loaded images; one that failed to load stays its own error."""
    good = [i for i, image in enumerate(images) if not isinstance(image, BaseException)]
    results: list[dict[str, Any] | BaseException] = list(images)
    if good:
        exp = explain(model, [images[i] for i in good], captions, method=method, **options)
        for row, i in enumerate(good):
            result = {"image": exp.image[row].float(), "scores": exp.scores[row].float(), "captions": captions}
            if exp.text is not None:
                result["text"] = exp.text[row].float()
            results[i] = result
    return results
