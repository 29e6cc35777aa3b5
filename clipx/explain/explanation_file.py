"""The .safetensors file of an `Explanation`: its tensors, and the rest as JSON in the metadata.

Options are stored faithfully: tensors and numpy arrays as tensors of the file, tuples, paths and
non-finite floats under tags, so that they load back equal. Every field is checked against the
others on save and on load, so a tampered or foreign file is an error naming it, never an
Explanation whose maps disagree with its captions.

The file carries the digest of its contents (clipx.files.DIGEST), checked on load, so a flipped bit, a
retyped or swapped tensor is refused too. Format 1 (clipx before options were tagged: no "format" field,
plain JSON options) and format 2 (no digest) still load.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path, PurePath
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save

from ..files import DIGEST, read_safetensors, save_safetensors

FORMAT = 3
KEY = "clipx_explanation"  # the metadata entry holding the JSON
TENSORS = ("image", "text", "scores", "images", "token_maps")
META = ("tokens", "texts", "method", "options", "crop_boxes", "image_sizes")
_OPTION_TENSOR = "options.{}"  # names of the tensors options are stored in, numbered


def write(fields: dict[str, Any], path: str | Path) -> None:
    """Check the fields (an Explanation's), then write them; nothing is written if either step fails."""
    try:
        check(fields)
    except ValueError as e:
        raise ValueError(f"cannot save this Explanation to {path}: {e}") from None
    tensors = {k: _stored(fields[k]) for k in TENSORS if fields[k] is not None}
    options = {}
    for name, value in fields["options"].items():
        options[name] = _encode(value, name, tensors)
    boxes, sizes = fields["crop_boxes"], fields["image_sizes"]  # checked: numbers, maybe numpy's, which JSON lacks
    meta = {"format": FORMAT, **{k: fields[k] for k in ("tokens", "texts", "method")}, "options": options,
            "crop_boxes": None if boxes is None else [[float(x) for x in b] for b in boxes],
            "image_sizes": None if sizes is None else [[int(x) for x in s] for s in sizes]}
    save_safetensors(tensors, path, metadata={KEY: json.dumps(meta, allow_nan=False)})


def read(path: str | Path) -> dict[str, Any]:
    """The fields of the Explanation saved at `path`, checked; a ValueError naming the file and what
    is wrong where it is not one (not safetensors, truncated, garbage metadata, disagreeing tensors)."""
    def invalid(what: str) -> ValueError:
        return ValueError(f"{path} is not a valid clipx Explanation file: {what}")

    tensors, metadata = read_safetensors(path)  # a CheckpointError (a ValueError) naming the file
    raw = metadata.get(KEY)
    if raw is None:
        raise ValueError(f"{path} is not a saved clipx Explanation (its metadata has no {KEY!r} entry)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise invalid(f"its metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise invalid(f"its metadata is a JSON {type(meta).__name__}, not an object")
    version = meta.pop("format", 1)
    if type(version) is not int or not 1 <= version <= FORMAT:
        raise invalid(f"it has format {version!r}, this clipx reads formats 1 to {FORMAT} "
                      "(a newer clipx writes higher ones)")
    if version >= 3 and DIGEST not in metadata:
        raise invalid(f"it carries no digest, which every file of format {version} has (its header was edited)")
    missing, unknown = sorted(set(META) - set(meta)), sorted(set(meta) - set(META))
    if missing or unknown:
        raise invalid("its metadata " + "; ".join(f"{what} {', '.join(keys)}" for what, keys in
                                                 (("lacks", missing), ("has unknown fields", unknown)) if keys))
    used: set[str] = set()
    try:
        if not isinstance(meta["options"], dict):
            raise ValueError(f"options must be a JSON object, got {_describe(meta['options'])}")
        if version > 1:
            meta["options"] = {name: _decode(v, name, tensors, used) for name, v in meta["options"].items()}
        extra = sorted(set(tensors) - set(TENSORS) - used)
        if extra:
            raise ValueError(f"it holds tensors no field uses: {', '.join(extra)}")
        for key in ("crop_boxes", "image_sizes"):
            if isinstance(meta[key], list):
                meta[key] = [tuple(v) if isinstance(v, list) else v for v in meta[key]]
        fields = {**{k: tensors.get(k) for k in TENSORS}, **meta}
        check(fields)
    except ValueError as e:
        raise invalid(str(e)) from None
    return fields


# --- consistency ---------------------------------------------------------------------------------

def check(f: dict[str, Any]) -> None:
    """ValueError saying what disagrees, unless every field fits `scores`' n_images x n_texts and each other."""
    scores = f["scores"]
    if not (isinstance(scores, torch.Tensor) and scores.ndim == 2 and scores.is_floating_point()):
        raise ValueError(f"scores must be a floating tensor [n_images, n_texts], got {_describe(scores)}")
    n_images, n_texts = scores.shape
    if not isinstance(f["method"], str):
        raise ValueError(f"method must be a string, got {_describe(f['method'])}")
    if not (isinstance(f["options"], dict) and all(isinstance(k, str) for k in f["options"])):
        raise ValueError(f"options must be a dict with string keys, got {_describe(f['options'])}")
    _check_list(f["texts"], "texts", n_texts, "caption", lambda t: isinstance(t, str), "a string")
    _check_list(f["tokens"], "tokens", n_texts, "caption",
                lambda t: isinstance(t, list) and all(isinstance(s, str) for s in t), "a list of strings")
    longest = max((len(t) for t in f["tokens"]), default=0)
    image, text, token_maps = (_check_map(f, k, rank) for k, rank in (("image", 4), ("text", 3), ("token_maps", 5)))
    if text is not None and text.shape[2] < longest:
        raise ValueError(f"text covers {text.shape[2]} token positions but a caption has {longest} tokens")
    if token_maps is not None:
        if text is not None and token_maps.shape[2] != text.shape[2]:
            raise ValueError(f"token_maps has {token_maps.shape[2]} token positions, text {text.shape[2]}")
        if token_maps.shape[2] < longest:
            raise ValueError(f"token_maps covers {token_maps.shape[2]} token positions "
                             f"but a caption has {longest} tokens")
        if image is not None and token_maps.shape[3:] != image.shape[2:]:
            raise ValueError(f"token_maps has a {_shape(token_maps.shape[3:])} grid, image {_shape(image.shape[2:])}")
    images = f["images"]
    if images is not None and not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8
                                   and images.ndim == 4 and images.shape[0] == n_images and images.shape[3] == 3):
        raise ValueError(f"images must be uint8 [{n_images}, H, W, 3] (scores have {n_images} images), "
                         f"got {_describe(images)}")
    boxes, sizes = f["crop_boxes"], f["image_sizes"]
    if (boxes is None) != (sizes is None):
        raise ValueError("crop_boxes and image_sizes are given together or not at all")
    if boxes is not None:
        _check_list(boxes, "crop_boxes", n_images, "image", lambda b: _numbers(b, 4, numbers.Real),
                    "(left, top, right, bottom)")
        _check_list(sizes, "image_sizes", n_images, "image", lambda s: _numbers(s, 2, numbers.Integral) and min(s) > 0,
                    "(width, height), positive whole numbers")


def _check_map(f: dict[str, Any], key: str, rank: int) -> torch.Tensor | None:
    value, (n_images, n_texts) = f[key], f["scores"].shape
    if value is None:
        return None
    if not (isinstance(value, torch.Tensor) and value.ndim == rank and value.is_floating_point()
            and value.shape[:2] == (n_images, n_texts)):
        raise ValueError(f"{key} must be a floating tensor of {rank} dimensions starting [{n_images}, {n_texts}] "
                         f"(scores have {n_images} images x {n_texts} texts), got {_describe(value)}")
    return value


def _check_list(value: Any, name: str, n: int, per: str, ok: Callable[[Any], bool], what: str) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{name} must be a list of {n} (one per {per}), got {_describe(value)}")
    for k, item in enumerate(value):
        if not ok(item):
            raise ValueError(f"{name}[{k}] must be {what}, got {item!r:.80}")


def _numbers(value: Any, n: int, kind: type) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(x, kind) and not isinstance(x, bool) and math.isfinite(x) for x in value))


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape [{', '.join(map(str, value.shape))}]"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{value!r:.80} ({type(value).__name__})"


# --- options -------------------------------------------------------------------------------------
# JSON values stand for themselves; every other value is a one-key object naming its kind, and dicts
# are tagged too, so a user's dict can never be mistaken for a tag.

def _stored(tensor: torch.Tensor) -> torch.Tensor:
    # a copy: safetensors refuses tensors that share memory (a map that is a view of another, an option of a map)
    return tensor.detach().cpu().contiguous().clone()


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": str(float(value))}  # "nan", "inf", "-inf"
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        scalar = isinstance(value, np.generic)
        tensor = value
        if not isinstance(value, torch.Tensor):
            try:
                tensor = torch.from_numpy(np.array(value))  # a C-ordered copy, 0-d for a scalar
            except TypeError:
                raise _unstorable(name, value, f"numpy dtype {value.dtype} has no torch equivalent") from None
        if tensor.layout != torch.strided:
            raise _unstorable(name, value, f"a {tensor.layout} tensor; make it dense (.to_dense())")
        try:  # an empty tensor of its dtype: safetensors' own word on whether it has that type
            save({"probe": torch.empty(0, dtype=tensor.dtype)})
        except (KeyError, ValueError, TypeError):
            raise _unstorable(name, value, f"safetensors has no type for {tensor.dtype}") from None
        key = _OPTION_TENSOR.format(len(tensors))
        tensors[key] = _stored(tensor)
        kind = "tensor" if isinstance(value, torch.Tensor) else "numpy"
        return {kind: key, "scalar": True} if scalar else {kind: key}
    if isinstance(value, PurePath):
        return {"path": str(value)}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, name, tensors) for v in value]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _unstorable(name, value, "a dict with keys that are not strings")
        return {"dict": {k: _encode(v, name, tensors) for k, v in value.items()}}
    raise _unstorable(name, value, f"a {type(value).__name__}")


def _unstorable(name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"option {name}={value!r:.60} cannot be saved in an Explanation file ({why}): options are "
                      "stored as None, bool, int, float, str, tensors, numpy arrays, paths, and lists, tuples or "
                      "str-keyed dicts of these; pass such a value, or drop the option from exp.options")


def _decode(value: Any, name: str, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, name, tensors, used) for v in value]
    if not isinstance(value, dict) or len(value) != 1 + ("scalar" in value):
        raise ValueError(f"option {name!r} holds an unknown value {value!r:.80}")
    (kind, content), = ((k, v) for k, v in value.items() if k != "scalar")
    if kind in ("tensor", "numpy"):
        if content not in tensors:
            raise ValueError(f"option {name!r} names tensor {content!r}, which the file lacks")
        used.add(content)
        if kind == "tensor":
            return tensors[content]
        array = tensors[content].numpy()
        return array[()] if value.get("scalar") else array
    if kind == "float" and content in ("nan", "inf", "-inf"):
        return float(content)
    if kind == "path" and isinstance(content, str):
        return Path(content)
    if kind == "tuple" and isinstance(content, list):
        return tuple(_decode(v, name, tensors, used) for v in content)
    if kind == "dict" and isinstance(content, dict):
        return {k: _decode(v, name, tensors, used) for k, v in content.items()}
    raise ValueError(f"option {name!r} holds an unknown value {value!r:.80}")
