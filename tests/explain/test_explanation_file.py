"""Explanation files: options saved faithfully, every tampered, damaged or foreign file refused with its
name, old files still readable, and .safetensors files written whole with the umask's permissions, also
on a full disk."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import clipx
from clipx import Explanation
from clipx.files import DIGEST, tensor_digest
from damage import fill_disk, flip_bit, retype, swap, truncate

TOKENS = [["<|startoftext|>", "a", "star", "<|endoftext|>"], ["<|startoftext|>", "two", "<|endoftext|>"]]


def explanation(**options) -> Explanation:
    """A consistent 1 image x 2 captions Explanation with every field set (L = 4, a 2x2 grid)."""
    g = torch.Generator().manual_seed(0)
    return Explanation(image=torch.rand(1, 2, 2, 2, generator=g), text=torch.rand(1, 2, 4, generator=g),
                       scores=torch.rand(1, 2, generator=g), tokens=TOKENS, texts=["a star", "two"],
                       method="similarity", options=options,
                       images=torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8, generator=g),
                       token_maps=torch.rand(1, 2, 4, 2, 2, generator=g), crop_boxes=[(0.0, 1.5, 8.0, 9.5)],
                       image_sizes=[(8, 11)])


def contents(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["clipx_explanation"])


def rewrite(path: Path, tensors: dict[str, torch.Tensor], meta: dict | str, digest: bool = True) -> None:
    """The file as a tamperer would write it: safetensors' own writer, our metadata key, and a digest that
    fits (so that the checks of the fields, not the digest's, are what refuses it)."""
    metadata = {"clipx_explanation": meta if isinstance(meta, str) else json.dumps(meta)}
    if digest:
        metadata[DIGEST] = tensor_digest(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def assert_same(back: Explanation, exp: Explanation) -> None:
    for key in ("image", "text", "scores", "images", "token_maps"):
        saved, loaded = getattr(exp, key), getattr(back, key)
        assert loaded is saved is None or torch.equal(loaded, saved), key
    for key in ("tokens", "texts", "method", "crop_boxes", "image_sizes"):
        assert getattr(back, key) == getattr(exp, key), key


# --- options -------------------------------------------------------------------------------------
def test_tensor_option_of_a_real_explanation_is_saved_as_a_tensor(tiny_model, tmp_path):
    baseline = torch.full((1, 3, 32, 32), 0.25)
    exp = clipx.explain(tiny_model, torch.randn(1, 3, 32, 32), ["a cat", "a dog"], method="integrated_gradients",
                        n_steps=2, image_baseline=baseline)
    exp.save(tmp_path / "ig.safetensors")
    tensors, meta = contents(tmp_path / "ig.safetensors")
    stored = meta["options"]["image_baseline"]
    assert list(stored) == ["tensor"] and torch.equal(tensors[stored["tensor"]], baseline)  # not its str()
    back = Explanation.load(tmp_path / "ig.safetensors")
    assert_same(back, exp)
    assert torch.equal(back.options["image_baseline"], baseline) and back.options["n_steps"] == 2


@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_explanation_passes_the_checks_and_loads_back_equal(tiny_model, tmp_path, method):
    """The checks on save and load refuse no real Explanation (padded text maps, token maps, crops)."""
    from PIL import Image

    options = {"n_steps": 2} if method == "integrated_gradients" else {}
    exp = clipx.explain(tiny_model, [Image.new("RGB", (40, 30), "red")], ["a cat", "two dogs on a mat"],
                        method=method, **options)
    exp.save(tmp_path / "e.safetensors")
    back = Explanation.load(tmp_path / "e.safetensors")
    assert_same(back, exp)
    assert back.options == exp.options


def test_options_of_every_storable_kind_load_back_equal(tmp_path):
    options = dict(tensor=torch.arange(6, dtype=torch.int16).reshape(2, 3)[:, 1:],  # a non-contiguous view
                   array=np.linspace(0, 1, 5, dtype=np.float64), scalar=np.float32(0.5), flag=np.bool_(True),
                   pair=(1, 2.5), nested=[(None, "x"), {"k": Path("/data/cat.png")}], path=Path("a/b.png"),
                   nan=float("nan"), inf=float("inf"), minus_inf=np.float64(-math.inf), none=None, true=True,
                   text="$x$",
                   tagged={"tuple": [1]}, view_of_a_map=None)
    exp = explanation(**options)
    exp.options["view_of_a_map"] = exp.image[0, 0]  # shares memory with a saved map: still saved
    exp.save(tmp_path / "e.safetensors")
    back = Explanation.load(tmp_path / "e.safetensors").options
    assert set(back) == set(exp.options)
    assert torch.equal(back["tensor"], options["tensor"]) and back["tensor"].dtype == torch.int16
    assert torch.equal(back["view_of_a_map"], exp.image[0, 0])
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.float64
    assert np.array_equal(back["array"], options["array"])
    assert type(back["scalar"]) is np.float32 and back["scalar"] == 0.5 and type(back["flag"]) is np.bool_
    assert back["pair"] == (1, 2.5) and type(back["pair"]) is tuple
    assert back["nested"] == [(None, "x"), {"k": Path("/data/cat.png")}] and back["path"] == Path("a/b.png")
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["minus_inf"] == -math.inf
    assert back["none"] is None and back["true"] is True and back["text"] == "$x$"
    assert back["tagged"] == {"tuple": [1]}  # a user's dict that looks like a tag stays a dict


@pytest.mark.parametrize("value, why", [(lambda x: x, "a function"), ({1: "a"}, "keys that are not strings"),
                                        (np.array([object()]), "numpy dtype object"), ([1, {2, 3}], "a set"),
                                        (torch.zeros(2, dtype=torch.complex128), "no type for torch.complex128")])
def test_an_option_that_cannot_be_stored_is_named_and_nothing_is_written(tmp_path, value, why):
    with pytest.raises(ValueError, match=f"option baseline=.* cannot be saved .*{why}"):
        explanation(n_steps=4, baseline=value).save(tmp_path / "e.safetensors")
    assert os.listdir(tmp_path) == []


# --- tampered and foreign files -------------------------------------------------------------------
def _set(key, value):
    def change(tensors, meta):
        (tensors if isinstance(value, torch.Tensor) or key in tensors else meta)[key] = value
    return change


def _drop(key):
    return lambda tensors, meta: (tensors if key in tensors else meta).pop(key)


TAMPERINGS = {
    "7 image maps": (_set("image", torch.rand(7, 2, 2, 2)), r"image must be .* starting \[1, 2\]"),
    "image of ints": (_set("image", torch.ones(1, 2, 2, 2, dtype=torch.int64)), "image must be a floating"),
    "scores of 3 texts": (_set("scores", torch.rand(1, 3)), r"texts must be a list of 3"),
    "scores of ints": (_set("scores", torch.ones(1, 2, dtype=torch.int32)), "scores must be a floating"),
    "scores missing": (_drop("scores"), "scores must be a floating tensor"),
    "text shorter than tokens": (_set("text", torch.rand(1, 2, 3)),
                                 "text covers 3 token positions but a caption has 4"),
    "text with 3 dims wrong": (_set("text", torch.rand(2, 2, 4)), r"text must be .* starting \[1, 2\]"),
    "token_maps grid": (_set("token_maps", torch.rand(1, 2, 4, 3, 3)), "token_maps has a 3x3 grid, image 2x2"),
    "token_maps length": (_set("token_maps", torch.rand(1, 2, 5, 2, 2)), "token_maps has 5 token positions, text 4"),
    "3 images": (_set("images", torch.zeros(3, 8, 8, 3, dtype=torch.uint8)), r"images must be uint8 \[1, H, W, 3\]"),
    "float images": (_set("images", torch.zeros(1, 8, 8, 3)), "images must be uint8"),
    "extra tensor": (_set("evil", torch.zeros(1)), "it holds tensors no field uses: evil"),
    "2 crop boxes": (_set("crop_boxes", [[0, 0, 8, 8]] * 2), r"crop_boxes must be a list of 1 \(one per image\)"),
    "crop box of text": (_set("crop_boxes", [["0", 0, 8, 8]]), r"crop_boxes\[0\] must be \(left, top, right, bottom\)"),
    "negative size": (_set("image_sizes", [[-8, 8]]), r"image_sizes\[0\] must be \(width, height\), positive"),
    "sizes without boxes": (_set("crop_boxes", None), "crop_boxes and image_sizes are given together or not at all"),
    "3 token lists": (_set("tokens", TOKENS + [["x"]]), r"tokens must be a list of 2 \(one per caption\)"),
    "token of int": (_set("tokens", [TOKENS[0], ["a", 5]]), r"tokens\[1\] must be a list of strings"),
    "long tokens": (_set("tokens", [TOKENS[0], ["a"] * 5]), "text covers 4 token positions but a caption has 5"),
    "texts of 1": (_set("texts", ["a star"]), "texts must be a list of 2"),
    "method not str": (_set("method", 5), "method must be a string"),
    "options a list": (_set("options", [1]), "options must be a JSON object"),
    "option tensor missing": (_set("options", {"b": {"tensor": "options.9"}}),
                              r"option 'b' names tensor 'options\.9', which the file lacks"),
    "option unknown tag": (_set("options", {"b": {"pickle": "x"}}), "option 'b' holds an unknown value"),
    "field missing": (_drop("texts"), "its metadata lacks texts"),
    "field unknown": (_set("owner", "x"), "its metadata has unknown fields owner"),
    "newer format": (_set("format", 99), r"it has format 99, this clipx reads formats 1 to 3 \(a newer clipx writes"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_a_tampered_file_is_refused_naming_it_and_what_disagrees(tmp_path, name):
    change, message = TAMPERINGS[name]
    path = tmp_path / "e.safetensors"
    explanation(n_steps=4).save(path)
    tensors, meta = contents(path)
    change(tensors, meta)
    rewrite(path, tensors, meta)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is not a valid clipx Explanation file: {message}"):
        Explanation.load(path)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b"not a safetensors file at all"), "is not a readable .safetensors file"),
    (lambda path: path.write_bytes(path.read_bytes()[:-10]), "is not a readable .safetensors file"),
    (truncate, "is not a readable .safetensors file"),
    (lambda path: flip_bit(path, "scores", bit=9), "is damaged: its contents do not match the digest"),
    (lambda path: retype(path, "scores", "I32"), "is damaged: its contents do not match the digest"),
    (lambda path: swap(path, "image", "text"), "is damaged: its contents do not match the digest"),
    (lambda path: rewrite(path, *contents(path), digest=False), "it carries no digest, which every file of format 3"),
    (lambda path: rewrite(path, contents(path)[0], "{not json"), "its metadata is not JSON"),
    (lambda path: rewrite(path, contents(path)[0], "[1, 2]"), "its metadata is a JSON list, not an object"),
    (lambda path: save_file({"a": torch.zeros(1)}, str(path)), "is not a saved clipx Explanation"),
])
def test_a_foreign_truncated_or_garbled_file_is_a_value_error_naming_it(tmp_path, damage, message):
    path = tmp_path / "e.safetensors"
    explanation().save(path)
    damage(path)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{message}"):
        Explanation.load(path)


def test_saving_an_inconsistent_explanation_writes_nothing(tmp_path):
    exp = explanation()
    exp.texts = ["only one"]
    with pytest.raises(ValueError, match="cannot save this Explanation to .*texts must be a list of 2"):
        exp.save(tmp_path / "e.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_file_of_format_2_without_a_digest_still_loads(tmp_path):
    exp = explanation(steps=torch.arange(3))
    exp.save(tmp_path / "e.safetensors")
    tensors, meta = contents(tmp_path / "e.safetensors")
    rewrite(tmp_path / "e.safetensors", tensors, {**meta, "format": 2}, digest=False)
    back = Explanation.load(tmp_path / "e.safetensors")
    assert_same(back, exp)
    assert torch.equal(back.options["steps"], torch.arange(3))


@pytest.mark.parametrize("make, error, message", [
    (lambda path: path.mkdir(), ValueError, "cannot read {}: Is a directory"),
    (lambda path: path.symlink_to(path), ValueError, "cannot read {}: Too many levels of symbolic links"),
    (lambda path: path.symlink_to(path.parent / "gone"), FileNotFoundError, r"\[Errno 2\] No such file or directory: '{}'"),
    (lambda path: None, FileNotFoundError, r"\[Errno 2\] No such file or directory: '{}'"),
])
def test_a_name_that_is_no_readable_file_is_named(tmp_path, make, error, message):
    path = tmp_path / "e.safetensors"
    make(path)
    with pytest.raises(error, match="^" + message.format(re.escape(str(path))) + "$"):
        Explanation.load(path)


def test_a_file_of_the_previous_format_still_loads(tmp_path):
    """Format 1: no "format" field, options as plain JSON (written here as clipx 0.x's save did)."""
    exp = explanation(start_layer=-1, variant="tokens")
    meta = {k: getattr(exp, k) for k in ("tokens", "texts", "method", "options", "crop_boxes", "image_sizes")}
    tensors = {k: getattr(exp, k) for k in ("image", "text", "scores", "images", "token_maps")}
    rewrite(tmp_path / "old.safetensors", tensors, meta)
    back = Explanation.load(tmp_path / "old.safetensors")
    assert_same(back, exp)
    assert back.options == {"start_layer": -1, "variant": "tokens"}


# --- how files are written -------------------------------------------------------------------------
def _write_explanation(folder: Path, tiny_model) -> Path:
    explanation().save(folder / "e.safetensors")
    return folder / "e.safetensors"


def _write_model(folder: Path, tiny_model) -> Path:
    tiny_model.save_pretrained(folder / "model")
    return folder / "model" / "model.safetensors"


@pytest.mark.parametrize("write", [_write_explanation, _write_model], ids=["Explanation.save", "save_pretrained"])
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_safetensors_files_get_the_mode_the_umask_gives(tmp_path, tiny_model, write, umask, mode):
    old = os.umask(umask)
    try:
        path = write(tmp_path, tiny_model)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize("write", [_write_explanation, _write_model], ids=["Explanation.save", "save_pretrained"])
@pytest.mark.parametrize("kept", [0o600, 0o664])
def test_overwriting_a_file_keeps_its_mode(tmp_path, tiny_model, write, kept):
    """As open(path, "w") does: a file a user made private stays private, a group-writable one stays so."""
    path = write(tmp_path, tiny_model)
    path.chmod(kept)
    old = os.umask(0o022)
    try:
        write(tmp_path, tiny_model)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == kept


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import clipx.files

    path = tmp_path / "e.safetensors"
    explanation().save(path)
    before = path.read_bytes()

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a fi")
        raise KeyboardInterrupt

    monkeypatch.setattr(clipx.files, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        explanation(n_steps=4).save(path)
    assert os.listdir(tmp_path) == ["e.safetensors"] and path.read_bytes() == before


def test_a_full_disk_is_an_oserror_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    path = tmp_path / "e.safetensors"
    explanation().save(path)
    before = path.read_bytes()
    tried = fill_disk(monkeypatch, after=100)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: '{re.escape(str(path))}'$"):
        explanation(n_steps=4).save(path)
    assert tried and os.listdir(tmp_path) == ["e.safetensors"] and path.read_bytes() == before
