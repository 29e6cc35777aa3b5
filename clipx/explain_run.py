"""`clipx.explain` over a folder or a list of image files, as a resumable, shardable run (`clipx.runs`).

Each image is explained against fixed captions (every image against all of them, one batched call per
batch of images) or against the captions a function gives for its path. An unreadable image, or a
caption function that raises, fails that item alone: it is listed in the run's errors, the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .explain import explain
from .model import CLIP
from .processing import image_files, open_image
from .runs import RunResult, run

Captions = Sequence[str] | Callable[[str], "str | Sequence[str]"]


def _paths(images: str | Path | Sequence[str | Path]) -> list[str]:
    """A folder -> its image files (`processing.image_files`); a list of paths as given."""
    if isinstance(images, (str, Path)):
        return [str(p) for p in image_files(images)]
    found = [str(p) for p in images]
    if not found:
        raise ValueError("no images given: got an empty list")
    return found


def explain_dataset(model: CLIP, images: str | Path | Sequence[str | Path], folder: str | Path,
                    captions: Captions, method: str = "relevance", shard_size: int = 256, batch_size: int = 8,
                    progress: bool = True, **options: Any) -> RunResult:
    """Explain every image against its captions, streaming the maps to shards in `folder` (see
    `clipx.runs.run`: resumable, and split across ranks under torchrun). Each item's result: `image`
    [n_captions, grid_h, grid_w], `scores` [n_captions], `text` [n_captions, L] where the method gives one,
    and `captions`. Read back with `RunResult(folder)`."""
    paths = _paths(images)
    if callable(captions):
        described = f"function {getattr(captions, '__module__', '?')}.{getattr(captions, '__qualname__', repr(captions))}"
        caption_for = captions
    else:
        fixed = [captions] if isinstance(captions, str) else list(captions)
        if not fixed or not all(isinstance(c, str) for c in fixed):
            raise ValueError("captions must be a non-empty list of strings, or a function of an image's path")
        described, caption_for = fixed, None
    config = {"task": "explain", "model": model.fingerprint(), "method": method,
              "options": json.loads(json.dumps(options, default=repr)), "captions": described}

    def process(batch: list[str]) -> list[dict[str, Any] | BaseException]:
        if caption_for is None:
            return _explain_batch(model, batch, fixed, method, options)
        return [_one(model, path, caption_for, method, options) for path in batch]

    return run(folder, paths, process, config, shard_size=shard_size, batch_size=batch_size, progress=progress)


def _one(model, path, caption_for, method, options) -> dict[str, Any] | BaseException:
    try:
        return _explain_batch(model, [path], _captions(caption_for, path), method, options)[0]
    except Exception as e:
        return e


def _captions(caption_for: Callable, path: str) -> list[str]:
    given = caption_for(path)
    given = [given] if isinstance(given, str) else list(given)
    if not given or not all(isinstance(c, str) for c in given):
        raise ValueError(f"the caption function gave {given!r} for {path}: a string or a list of strings")
    return given


def _explain_batch(model: CLIP, paths: list[str], captions: list[str], method: str,
                   options: dict[str, Any]) -> list[dict[str, Any] | BaseException]:
    """One explain call for the readable images among `paths`; an unreadable one is its own error."""
    loaded: dict[int, Image.Image | BaseException] = {}
    for i, path in enumerate(paths):
        try:
            loaded[i] = open_image(path)  # upright by its EXIF orientation, as everywhere in clipx
        except Exception as e:
            loaded[i] = e
    good = [i for i, image in loaded.items() if not isinstance(image, BaseException)]
    results: list[dict[str, Any] | BaseException] = [loaded[i] for i in range(len(paths))]
    if good:
        exp = explain(model, [loaded[i] for i in good], captions, method=method, **options)
        for row, i in enumerate(good):
            result = {"image": exp.image[row].float(), "scores": exp.scores[row].float(), "captions": captions}
            if exp.text is not None:
                result["text"] = exp.text[row].float()
            results[i] = result
    return results

