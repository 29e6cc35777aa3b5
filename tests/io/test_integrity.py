"""Weights that would load as wrong numbers are refused naming the tensor (NaN or inf, a dtype retyped in
the header), and a folder `save_pretrained` wrote is one unit: written through a staging folder under a
manifest of digests, so a save stopped at any moment (a kill between two renames, a full disk, a
tokenizer that fails) or a file damaged since is refused naming the file, and the old save stays whole."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import clipx
import clipx.files
import clipx.model.save as save_module
from clipx import CheckpointError
from clipx.io.verify import verify
from clipx.model.save import MANIFEST
from damage import fill_disk, flip_bit, retype, swap
from open_clip_weights import open_clip_state

OPEN_CLIP_CFG = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                                 "patch_size": 8, "mlp_ratio": 2.0},
                 "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1}}


def copy(tiny_checkpoint, tmp_path):
    return shutil.copytree(tiny_checkpoint[0], tmp_path / "checkpoint")


def same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# --- weights from anywhere ---------------------------------------------------------------------------
def test_non_finite_weights_are_refused_naming_each_tensor(tiny_checkpoint, tmp_path):
    folder = copy(tiny_checkpoint, tmp_path)
    state = load_file(folder / "model.safetensors")
    state["text_model.final_layer_norm.bias"][3] = float("nan")
    state["vision_model.encoder.layers.1.mlp.fc2.weight"][0, :2] = float("-inf")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(
            f"the weights in {folder / 'model.safetensors'} hold NaN or infinite values (a damaged or diverged "
            "checkpoint):\n  text_model.final_layer_norm.bias: 1 of 32 values\n  "
            "vision_model.encoder.layers.1.mlp.fc2.weight: 2 of 4608 values")):
        clipx.load(folder)
    release = tmp_path / "open_clip"  # open_clip's layout, read without a config.json
    release.mkdir()
    state = open_clip_state(OPEN_CLIP_CFG)
    state["visual.ln_post.weight"][0] = float("inf")
    torch.save(state, release / "open_clip_pytorch_model.bin")
    (release / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG}))
    with pytest.raises(CheckpointError, match=re.escape(
            "open_clip_pytorch_model.bin hold NaN or infinite values (a damaged or diverged checkpoint):\n  "
            "vision_model.post_layernorm.weight: 1 of 64 values")):
        clipx.load(release)


def test_a_tensor_retyped_in_the_header_is_refused_naming_it(tiny_checkpoint, tmp_path):
    """F32 -> I32 keeps every size, so safetensors reads the bytes as integers: a LayerNorm bias of ~-1e9."""
    folder = copy(tiny_checkpoint, tmp_path)
    retype(folder / "model.safetensors", "text_model.final_layer_norm.bias", "I32")
    with pytest.raises(CheckpointError, match=re.escape(
            f"the weights in {folder / 'model.safetensors'} store numbers of another kind than the model's (a "
            "header edited, or not this model's weights):\n  text_model.final_layer_norm.bias: torch.int32 in the "
            "file, torch.float32 in the model")):
        clipx.load(folder)


def test_weights_in_half_precision_and_huge_finite_values_load(tiny_checkpoint, tmp_path):
    """The non-finite check is a sum first: a sum that overflows (fp16 values near its max) is counted exactly."""
    folder = copy(tiny_checkpoint, tmp_path)
    state = {k: v.half() for k, v in load_file(folder / "model.safetensors").items()}
    state["text_model.final_layer_norm.bias"][:] = 60000.0  # finite, but a sum of 32 of them is inf in fp16
    save_file(state, folder / "model.safetensors")
    model = clipx.load(folder)
    assert bool((model.text.ln_final.bias == 60000.0).all())


# --- folders clipx saves ------------------------------------------------------------------------------
def test_a_saved_folder_lists_every_file_with_its_digest_and_loads(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "saved")
    files = json.loads((tmp_path / "saved" / MANIFEST).read_text())["files"]
    on_disk = sorted(p.name for p in (tmp_path / "saved").iterdir() if p.name != MANIFEST)
    assert sorted(files) == on_disk and {"model.safetensors", "config.json", "preprocessor_config.json",
                                         "tokenizer.json", "vocab.json"} <= set(on_disk)
    for name, entry in files.items():
        assert entry == {"size": (tmp_path / "saved" / name).stat().st_size,
                         "xxh3_128": clipx.files.file_digest(tmp_path / "saved" / name)}
    assert same_weights(clipx.load(tmp_path / "saved"), tiny_model)


@pytest.mark.parametrize("damage, message", [
    (lambda f: flip_bit(f / "model.safetensors", bit=5), "model.safetensors is not the file clipx_manifest.json lists \\(another digest\\)"),
    (lambda f: swap(f / "model.safetensors", "text_model.final_layer_norm.bias", "text_model.final_layer_norm.weight"),
     "model.safetensors is not the file clipx_manifest.json lists \\(another digest\\)"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace("2", "3", 1)),
     "config.json is not the file clipx_manifest.json lists \\(another digest\\)"),
    (lambda f: (f / "vocab.json").write_bytes((f / "vocab.json").read_bytes()[:100]), r"vocab.json is not the file clipx_manifest.json lists \(100 bytes, not \d+\)"),
    (lambda f: (f / "preprocessor_config.json").unlink(), "is an incomplete save: preprocessor_config.json"),
    (lambda f: (f / MANIFEST).write_text("[]"), f"{MANIFEST} must hold a JSON object"),
    (lambda f: (f / MANIFEST).write_text('{"files": {"../x": {"size": 1, "xxh3_128": "0"}}}'),
     f"{MANIFEST} is not a clipx save manifest"),
], ids=["bit-flip", "swapped-offsets", "config-edited", "vocab-truncated", "processor-missing", "manifest-list",
        "manifest-outside"])
def test_a_saved_folder_damaged_since_is_refused_naming_the_file(tiny_model, tmp_path, damage, message):
    tiny_model.save_pretrained(tmp_path / "saved")
    damage(tmp_path / "saved")
    with pytest.raises(CheckpointError, match=message):
        clipx.load(tmp_path / "saved")


def test_the_refusal_says_what_to_do(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "config.json").write_text((tmp_path / "saved" / "config.json").read_text() + " ")
    size = (tmp_path / "saved" / "config.json").stat().st_size
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path / 'saved' / 'config.json'} is not the file {MANIFEST} lists ({size} bytes, not {size - 1}): "
            f"the save was stopped half way, or the file changed since: save the model again (if you changed it on "
            f"purpose, delete {MANIFEST})")):
        clipx.load(tmp_path / "saved")
    (tmp_path / "saved" / MANIFEST).unlink()  # as the message says: then the folder loads as any other
    assert same_weights(clipx.load(tmp_path / "saved"), tiny_model)


@pytest.mark.parametrize("first", [True, False], ids=["new-folder", "over-an-old-save"])
@pytest.mark.parametrize("renames", [0, 1, 3])
def test_a_save_killed_between_its_renames_is_refused(tiny_model, tmp_path, monkeypatch, first, renames):
    """Over an old save, the weights and the processor differ, so that the files renamed so far and those not
    yet renamed disagree (model.safetensors moves first; preprocessor_config.json fourth)."""
    folder = tmp_path / "saved"
    if not first:
        tiny_model.save_pretrained(folder)
        with torch.no_grad():
            tiny_model.text.ln_final.bias.add_(1)
        tiny_model.processor.image_mean = (0.25, 0.5, 0.75)
    real, done = save_module.put_in_place, []

    def put(*args, **kwargs):
        if len(done) == renames:
            raise KeyboardInterrupt  # as a kill -9 would stop it, less the staging folder it leaves
        done.append(args[1].name)
        real(*args, **kwargs)
    monkeypatch.setattr(save_module, "put_in_place", put)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save_pretrained(folder)
    monkeypatch.undo()
    assert done == ["model.safetensors", "config.json", "merges.txt"][:renames]
    assert not list(folder.glob(".clipx-save-*"))
    missing = f"{re.escape(str(folder))} is an incomplete save: \\S+, which clipx_manifest.json lists, is missing"
    with pytest.raises(CheckpointError, match=missing if first else "is not the file clipx_manifest.json lists"):
        clipx.load(folder)
    tiny_model.save_pretrained(folder)
    again = clipx.load(folder)
    assert same_weights(again, tiny_model) and again.processor.image_mean == tiny_model.processor.image_mean


def test_a_staging_folder_left_by_a_killed_save_is_removed_by_the_next(tiny_model, tmp_path):
    (tmp_path / "saved" / ".clipx-save-k1ll3d").mkdir(parents=True)
    (tmp_path / "saved" / ".clipx-save-k1ll3d" / "model.safetensors").write_bytes(b"half")
    tiny_model.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob(".clipx-save-*"))


@pytest.mark.parametrize("fail, named", [
    ("disk", "model.safetensors"), ("processor", "preprocessor_config.json"), ("tokenizer", None)])
def test_a_full_disk_mid_save_is_one_oserror_naming_the_file_and_the_old_save_stays(tiny_model, tmp_path, monkeypatch,
                                                                                     fail, named):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    if fail == "disk":
        fill_disk(monkeypatch, after=1000)
    elif fail == "processor":  # Python's own write, half done
        def half(self, folder):
            (folder / "preprocessor_config.json").write_text('{"crop')
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "preprocessor_config.json"))
        monkeypatch.setattr(type(tiny_model.processor), "save_pretrained", half)
    else:  # the tokenizers library's error: a bare Exception
        def half(self, folder):
            (folder / "vocab.json").write_text('{"a": 1,')
            raise Exception("No space left on device (os error 28)")
        monkeypatch.setattr(type(tiny_model.tokenizer), "save_pretrained", half)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: "
                                      f"'{re.escape(str(folder / named if named else folder))}'$"):
        tiny_model.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    clipx.load(folder)


def test_every_file_gets_the_mode_the_umask_gives(tiny_model, tmp_path):
    old = os.umask(0o027)
    try:
        tiny_model.save_pretrained(tmp_path / "saved")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "saved").iterdir()}
    assert set(modes.values()) == {0o640} and len(modes) >= 6


def test_a_folder_saved_without_a_manifest_loads_unchecked(tiny_model, tmp_path):
    """Folders from the hub and from clipx before manifests have none."""
    tiny_model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / MANIFEST).unlink()
    flip_bit(tmp_path / "saved" / "model.safetensors", "logit_scale", bit=0)  # nothing to tell it by
    assert not same_weights(clipx.load(tmp_path / "saved"), tiny_model)


# --- verify ---------------------------------------------------------------------------------------
def hub_cache(checkpoint, root):
    """A snapshot as huggingface_hub caches one: links to blobs named by SHA-256 (weights) or git's SHA-1."""
    repo = root / "models--openai--clip-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in sorted(checkpoint.iterdir()):
        data = path.read_bytes()
        name = (hashlib.sha256(data) if path.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data)).hexdigest()
        (blobs / name).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", name))
    return snapshot


def test_verify_checks_hub_blobs_against_their_names(tiny_checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = hub_cache(tiny_checkpoint[0], tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    checked = verify("openai/clip-tiny")
    assert [p.name for p in checked] == sorted(p.name for p in tiny_checkpoint[0].iterdir())
    flip_bit((snapshot / "model.safetensors").resolve(), bit=12)  # a disk error in a weight blob
    with pytest.raises(CheckpointError, match=f"{re.escape(str(snapshot / 'model.safetensors'))} is damaged: the "
                                              "blob it links to .* does not hash to its name"):
        verify("openai/clip-tiny")
    clipx.load("openai/clip-tiny")  # loading does not hash the hub's files: verify is the check


def test_verify_checks_a_git_blob_and_a_saved_folder(tiny_checkpoint, tiny_model, tmp_path):
    snapshot = hub_cache(tiny_checkpoint[0], tmp_path / "hub")
    blob = (snapshot / "config.json").resolve()
    blob.write_text(blob.read_text().replace("32", "33", 1))
    with pytest.raises(CheckpointError, match="config.json is damaged"):
        verify(snapshot)
    tiny_model.save_pretrained(tmp_path / "saved")
    assert verify(tmp_path / "saved") == []  # no blobs: its manifest was checked
    flip_bit(tmp_path / "saved" / "model.safetensors", bit=1)
    with pytest.raises(CheckpointError, match="model.safetensors is not the file clipx_manifest.json lists"):
        verify(tmp_path / "saved")
