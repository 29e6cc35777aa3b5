"""Checkpoint folders as a careless or hostile download may hold them: each is refused with a
clear error naming the file or field, before any large allocation, and never followed out of
its folder; the clipx command reports each as `clipx score: error: ...`, exit 2."""

import json
import os
import pickle
import shutil
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import clipx
import clipx.checkpoint
import clipx.loading
from clipx import CheckpointError, CheckpointNotFoundError
from clipx.cli import main


def edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        for path, value in changes.items():
            tower, field = path.split("__")
            config[tower][field] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def write(name, text):
    def edit(folder):
        (folder / name).write_text(text) if isinstance(text, str) else (folder / name).write_bytes(text)
    return edit


def shards(weight_map):
    """A sharded layout whose index names `weight_map`'s files (the real file kept as a shard)."""
    def edit(folder):
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        keys = load_file(folder / "model-00001-of-00001.safetensors")
        mapping = {k: "model-00001-of-00001.safetensors" for k in keys}
        mapping.update(weight_map(folder))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": mapping}))
    return edit


def bin_file(data: bytes):
    def edit(folder):
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(data)
    return edit


class RunsCode:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious_bin(folder):
    state = load_file(folder / "model.safetensors")
    state["payload"] = RunsCode(folder.parent / "pwned")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(state, f, protocol=2)  # torch.save's protocol: no warning about another one


OUTSIDE = "/etc/passwd"
CASES = {  # what is done to a good checkpoint folder -> what the error says
    "index with an absolute shard": (shards(lambda f: {"extra": OUTSIDE}),
                                     "names the shard '/etc/passwd', outside its folder"),
    "index climbing out": (shards(lambda f: {"extra": "../elsewhere/model.safetensors"}), "outside its folder"),
    "index whose weight_map is a list": (lambda f: (shards(lambda _: {})(f),
                                                    write("model.safetensors.index.json", '{"weight_map": ["a"]}')(f)),
                                         "not a valid shard index: weight_map must map"),
    "garbage .bin": (bin_file(os.urandom(4096)), "cannot read weights from .*pytorch_model.bin"),
    "pickle that runs code": (malicious_bin, "pytorch_model.bin: it is not a torch state dict that loads safely"),
    "0 heads": (edit_config(vision_config__num_attention_heads=0),
                "vision_config.num_attention_heads=0: must be a positive"),
    "heads that do not divide": (edit_config(text_config__num_attention_heads=5),
                                 "text_config.hidden_size=32 is not divisible"),
    "a float size": (edit_config(vision_config__hidden_size=1e9),
                     "vision_config.hidden_size=1000000000.0: must be a positive integer"),
    "a string size": (edit_config(text_config__vocab_size="49408"), "text_config.vocab_size='49408'"),
    "config that is a list": (write("config.json", "[1, 2]"), "config.json: the config must be a JSON object, got a list"),
    "config that is not JSON": (write("config.json", b"\xff\xfe{"), "config.json is not valid JSON"),
    "unknown activation": (edit_config(vision_config__hidden_act="swish9"), "unsupported hidden_act 'swish9'"),
    "garbage tokenizer.json": (write("tokenizer.json", "{not json"), "tokenizer.json is not a valid tokenizer file"),
    "tokenizer_config.json that is a list": (write("tokenizer_config.json", "[]"),
                                             "tokenizer_config.json is not a valid tokenizer file"),
    "garbage preprocessor_config.json": (write("preprocessor_config.json", "{{"),
                                         "preprocessor_config.json is not a valid image processor config"),
    "preprocessor_config.json that is a list": (write("preprocessor_config.json", "[3]"),
                                                "preprocessor_config.json is not a valid"),
}


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(path)
    return path


@pytest.mark.parametrize("case", CASES)
def test_hostile_folder_is_a_clear_error(tiny_checkpoint, tmp_path, image, capsys, case):
    edit, message = CASES[case]
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    edit(folder)
    with pytest.raises(CheckpointError, match=message):
        clipx.load(folder)
    assert main(["score", str(image), "a cat", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipx score: error: ") and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()  # nothing in a pickle ran


@pytest.mark.parametrize("field, value, weights", [
    ("hidden_size", 10 ** 9, 48), ("num_hidden_layers", 10 ** 6, 2), ("intermediate_size", 10 ** 9, 96)])
def test_absurd_sizes_fail_before_anything_is_built(tiny_checkpoint, tmp_path, monkeypatch, field, value, weights):
    """hidden_size 1e9 used to allocate 7.9 GB before failing, a million layers to fill memory."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    edit_config(**{f"vision_config__{field}": value})(folder)
    built = []
    monkeypatch.setattr(clipx.loading, "CLIP", lambda config: built.append(config))
    start = time.perf_counter()
    message = f"the config says vision_config.{field}={value} but the weights have {weights}"
    with pytest.raises(CheckpointError, match=message):
        clipx.load(folder)
    assert built == [] and time.perf_counter() - start < 5


def test_unreadable_weights_say_so(tiny_checkpoint, tmp_path, monkeypatch):
    """As root a mode-000 file is readable, so the refusal is simulated; safetensors' own error said 'No such file'."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(clipx.checkpoint, "open", refuse, raising=False)
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors: permission denied"):
        clipx.load(folder)


@pytest.mark.parametrize("name", ["a" * 300, "org/" + "b" * 300, "two words"])
def test_names_that_are_neither_paths_nor_hub_ids(name, capsys, image):
    with pytest.raises(CheckpointNotFoundError, match="neither a file or folder here nor a valid hub id"):
        clipx.load(name)
    assert main(["score", str(image), "a cat", "--model", name]) == 2
    assert "nor a valid hub id" in capsys.readouterr().err


def test_a_checkpoint_in_another_dtype_loads_as_float32(tiny_checkpoint, tmp_path):
    """Weights are taken over from the file (no second copy): a float16 file still gives the float32
    model a CLIP built here would be, as before."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    state = load_file(folder / "model.safetensors")
    save_file({k: v.half() for k, v in state.items()}, folder / "model.safetensors")
    model = clipx.load(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in model.parameters())
