"""clipx.load on hostile or broken checkpoint folders: each must end in CheckpointError (or
CheckpointNotFoundError) naming the file or field, fast, reading nothing outside the folder and
building no model from sizes the weights do not have."""

import json
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import clipx
import clipx.io.loading
from clipx import CheckpointError, CheckpointNotFoundError
from clipx.cli import main
from open_clip_weights import hf_to_openai


def edit_json(name, change):
    def damage(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return damage


def vision(**fields):
    return edit_json("config.json", lambda c: c["vision_config"].update(fields))


def write(name, content):
    def damage(folder):
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return damage


def remove(*names):
    def damage(folder):
        for name in names:
            (folder / name).unlink()
    return damage


def then(*damages):
    def damage(folder):
        for d in damages:
            d(folder)
    return damage


class RunsCode:
    """A pickle that runs code when loaded without weights_only: it would create the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def pickled_bin(make_content):
    def damage(folder):
        (folder / "model.safetensors").unlink()
        torch.save(make_content(folder), folder / "pytorch_model.bin")
    return damage


def shard_index(shard_name):
    """The weights moved outside the folder (a valid file there) and an index that points at them."""
    def damage(folder):
        outside = folder.parent / "outside"
        outside.mkdir()
        shutil.move(folder / "model.safetensors", outside / "model.safetensors")
        keys = load_file(outside / "model.safetensors")
        index = {"metadata": {}, "weight_map": {k: shard_name.format(outside=outside) for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return damage


MERGES = "#version: 0.2\n"

# (id, damage to a copy of the tiny checkpoint, exception, substrings of the message)
HOSTILE = [
    # point 5: a shard index must not lead out of its folder
    ("index-absolute-path", shard_index("{outside}/model.safetensors"), CheckpointError,
     ["model.safetensors.index.json", "not a file inside"]),
    ("index-dot-dot", shard_index("../outside/model.safetensors"), CheckpointError,
     ["'../outside/model.safetensors'", "not a file inside"]),
    ("index-dot-dot-inside-name", shard_index("sub/../../outside/model.safetensors"), CheckpointError,
     ["not a file inside"]),
    ("index-windows-dot-dot", shard_index("..\\outside\\model.safetensors"), CheckpointError, ["not a file inside"]),
    ("index-names-a-pickle", then(remove("model.safetensors"),
                                  write("model.safetensors.index.json", '{"weight_map": {"a": "evil.bin"}}')),
     CheckpointError, ["'evil.bin'", "not a .safetensors file"]),
    ("index-is-a-list", then(remove("model.safetensors"), write("model.safetensors.index.json", "[1]")),
     CheckpointError, ["model.safetensors.index.json must hold a JSON object"]),
    ("index-weight-map-not-names", then(remove("model.safetensors"),
                                        write("model.safetensors.index.json", '{"weight_map": {"a": 3}}')),
     CheckpointError, ["model.safetensors.index.json is not a valid shard index", "weight_map"]),
    # point 7: sizes of the wrong type or value, named by their field
    ("hidden-size-float", vision(hidden_size=1e9), CheckpointError,
     ["config.json", "vision_config.hidden_size must be an integer >= 1, got 1000000000.0"]),
    ("hidden-size-string", vision(hidden_size="48"), CheckpointError, ["vision_config.hidden_size", "'48'"]),
    ("hidden-size-bool", vision(hidden_size=True), CheckpointError, ["vision_config.hidden_size", "True"]),
    ("intermediate-negative", vision(intermediate_size=-1), CheckpointError,
     ["vision_config.intermediate_size must be an integer >= 1, got -1"]),
    ("zero-heads", vision(num_attention_heads=0), CheckpointError,
     ["vision_config.num_attention_heads must be an integer >= 1, got 0"]),
    ("heads-not-dividing", edit_json("config.json", lambda c: c["text_config"].update(num_attention_heads=5)),
     CheckpointError, ["text_config.num_attention_heads=5 does not divide hidden_size=32"]),
    ("projection-dim-zero", edit_json("config.json", lambda c: c.update(projection_dim=0)), CheckpointError,
     ["config.json", "projection_dim must be an integer >= 1, got 0"]),
    ("eps-string", vision(layer_norm_eps="small"), CheckpointError, ["vision_config.layer_norm_eps"]),
    ("activation-number", vision(hidden_act=42), CheckpointError, ["vision_config.hidden_act must be a string"]),
    ("activation-unknown", vision(hidden_act="swish"), CheckpointError, ["config.json", "unsupported hidden_act"]),
    ("logit-scale-string", edit_json("config.json", lambda c: c.update(logit_scale_init_value="x")),
     CheckpointError, ["logit_scale_init_value must be a finite number"]),
    # point 7: sizes that disagree with the weights, before anything is built
    ("hidden-size-huge", vision(hidden_size=10**9, num_attention_heads=1), CheckpointError,
     ["config.json says vision_config.hidden_size=1000000000 but the weights have 48"]),
    ("layers-million", vision(num_hidden_layers=10**6), CheckpointError,
     ["config.json says vision_config.num_hidden_layers=1000000 but the weights have 2"]),
    ("vocab-huge", edit_json("config.json", lambda c: c["text_config"].update(vocab_size=10**9)), CheckpointError,
     ["text_config.vocab_size=1000000000 but the weights have 49408"]),
    ("image-size-huge", vision(image_size=8 * 10**5), CheckpointError,
     ["vision_config.image_size=800000 with patch_size=8, which needs 10000000001 positions", "have 17"]),
    ("channels", vision(num_channels=1), CheckpointError, ["vision_config.num_channels=1 but the weights have 3"]),
    # point 8: config.json of the wrong shape
    ("config-list", write("config.json", "[1, 2]"), CheckpointError,
     ["config.json must hold a JSON object", "list"]),
    ("config-string", write("config.json", '"clip"'), CheckpointError, ["config.json must hold a JSON object"]),
    ("config-number", write("config.json", "3"), CheckpointError, ["config.json must hold a JSON object"]),
    ("config-not-json", write("config.json", "{hidden_size: 48"), CheckpointError, ["config.json is not valid JSON"]),
    ("config-not-utf8", write("config.json", b"\xff\xfe{}"), CheckpointError, ["config.json is not valid JSON"]),
    ("config-deeply-nested", write("config.json", "[" * 100_000), CheckpointError, ["config.json is not valid JSON"]),
    ("tower-config-list", edit_json("config.json", lambda c: c.update(text_config=[1])), CheckpointError,
     ["config.json", "text_config must be a JSON object"]),
    # point 8: weights that are no state dict
    ("bin-random-bytes", then(remove("model.safetensors"),
                              write("pytorch_model.bin", random.Random(0).randbytes(4096))),
     CheckpointError, ["pytorch_model.bin", "cannot read weights from"]),
    ("bin-plain-pickle-of-code", then(remove("model.safetensors"), lambda folder: (folder / "pytorch_model.bin")
                                      .write_bytes(pickle.dumps({"w": RunsCode(folder / "ran")}, protocol=2))),
     CheckpointError, ["pytorch_model.bin", "could run code"]),
    ("bin-torch-save-of-code", pickled_bin(lambda folder: {"w": RunsCode(folder / "ran")}), CheckpointError,
     ["pytorch_model.bin", "could run code", "makedirs"]),
    ("bin-not-tensors", pickled_bin(lambda folder: {"w": [1, 2]}), CheckpointError,
     ["pytorch_model.bin does not hold a state dict of tensors"]),
    ("bin-int-keys", pickled_bin(lambda folder: {3: torch.zeros(1)}), CheckpointError,
     ["does not hold a state dict of tensors"]),
    ("bin-a-list", pickled_bin(lambda folder: [torch.zeros(1)]), CheckpointError,
     ["does not hold a state dict of tensors"]),
    # point 8: tokenizer and processor files
    ("tokenizer-garbage", write("tokenizer.json", "not json at all"), CheckpointError,
     ["tokenizer.json is not a valid tokenizer file"]),
    ("tokenizer-wrong-structure", write("tokenizer.json", '{"model": 3}'), CheckpointError,
     ["tokenizer.json is not a valid tokenizer file"]),
    ("vocab-garbage", then(remove("tokenizer.json"), write("vocab.json", "["), write("merges.txt", MERGES)),
     CheckpointError,
     ["vocab.json", "merges.txt is not a valid tokenizer file"]),
    ("vocab-without-eos", then(remove("tokenizer.json"), write("vocab.json", '{"a": 0, "<|startoftext|>": 1}'),
                               write("merges.txt", MERGES)),
     CheckpointError, ["vocab.json has no token '<|endoftext|>' (eos_token)"]),
    ("tokenizer-config-list", write("tokenizer_config.json", "[]"), CheckpointError,
     ["tokenizer_config.json must hold a JSON object"]),
    ("tokenizer-config-token-number", edit_json("tokenizer_config.json", lambda c: c.update(eos_token=5)),
     CheckpointError, ["tokenizer_config.json: eos_token must be a token string"]),
    ("preprocessor-garbage", write("preprocessor_config.json", "\x00\x01"), CheckpointError,
     ["preprocessor_config.json is not valid JSON"]),
    ("preprocessor-list", write("preprocessor_config.json", "[224]"), CheckpointError,
     ["preprocessor_config.json must hold a JSON object"]),
    ("preprocessor-size-list", edit_json("preprocessor_config.json", lambda c: c.update(size=[224])),
     CheckpointError, ["preprocessor_config.json:"]),
    ("preprocessor-size-string", edit_json("preprocessor_config.json", lambda c: c.update(crop_size="big")),
     CheckpointError, ["preprocessor_config.json:"]),
]


@pytest.mark.parametrize("damage, error, parts", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_folder(tiny_checkpoint, tmp_path, monkeypatch, capsys, damage, error, parts):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint[0], folder)
    damage(folder)
    real_clip = clipx.io.loading.CLIP

    def clip(config):  # never let an absurd config allocate, even on code that forgets to check
        towers = [t for t in (config.vision_config, config.text_config) if t is not None]
        assert all(t.hidden_size <= 64 and t.num_hidden_layers <= 2 and getattr(t, "image_size", 0) <= 64
                   and getattr(t, "vocab_size", 0) <= 49408 for t in towers), "built a model from absurd sizes"
        return real_clip(config)

    monkeypatch.setattr(clipx.io.loading, "CLIP", clip)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch UserWarning noise on top of the error
        with pytest.raises(error) as info:
            clipx.load(folder)
    assert time.perf_counter() - start < 5, "a hostile folder must fail at once"
    for part in parts:
        assert part in str(info.value)
    assert not (folder / "ran").exists()
    # the command says the same in one line, exit 2
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(image)
    assert main(["score", str(image), "a cat", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipx score: error: ") and parts[-1] in err and "Traceback" not in err


def test_hub_cache_symlinks_to_blobs_are_followed(tiny_checkpoint, tmp_path):
    """The hub cache stores a snapshot's files as symlinks into ../../blobs: the index's plain names are fine."""
    repo = tmp_path / "models--openai--clip-tiny"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    state = load_file(tiny_checkpoint[0] / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
    files = {name: lambda path, part=part: save_file({k: state[k] for k in part}, path)
             for name, part in shards.items()}
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    files["model.safetensors.index.json"] = lambda path: path.write_text(json.dumps(index))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        files[name] = lambda path, name=name: shutil.copy(tiny_checkpoint[0] / name, path)
    for i, (name, make) in enumerate(files.items()):
        make(blobs / f"blob{i}")
        (snapshot / name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    expected = clipx.load(tiny_checkpoint[0])
    model = clipx.load(snapshot)
    for (name, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"])
@pytest.mark.parametrize("damage, message", [
    ("missing blob", r"is a symbolic link to .*blob, which is missing or loops"),
    ("loop", r"is a symbolic link to .*, which is missing or loops"),
    ("folder", r"is a folder, not a file clipx can read"),
])
def test_a_side_file_that_exists_but_cannot_be_read_is_never_taken_as_absent(tiny_checkpoint, tmp_path, name,
                                                                              damage, message):
    """Taken as absent, a broken processor file would load the default processing and broken tokenizer files
    no tokenizer, silently: each is refused, naming it."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint[0], folder)
    path = folder / name
    path.unlink()
    if damage == "missing blob":
        path.symlink_to(Path("..", "blobs", "blob"))
    elif damage == "loop":
        path.symlink_to(path.name)
    else:
        path.mkdir()
    with pytest.raises(CheckpointError, match=message) as caught:
        clipx.load(folder)
    assert str(path) in str(caught.value)


def test_a_config_whose_end_token_the_tokenizer_never_emits_is_warned_about_at_load(tiny_checkpoint, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(eos_token_id=400, pooling="eos")  # a word's id: no caption ends with it
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"pools at eos_token_id=400 \(config.json\), but its tokenizer never emits "
                                         r"it \(it makes \[49406, 49407\] of an empty caption\)"):
        clipx.load(folder)
    config["text_config"]["eos_token_id"] = 49407
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipx.load(folder)


def test_unusable_names_are_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="neither a local file or folder nor a valid hub id"):
        clipx.load("x" * 300)
    with pytest.raises(CheckpointNotFoundError, match="neither a local file or folder nor a valid hub id"):
        clipx.load("owner/" + "n" * 120)
    with pytest.raises(CheckpointNotFoundError, match="neither a local file or folder nor a valid hub id"):
        clipx.load("not a repo!")


@pytest.mark.parametrize("unreadable", ["model.safetensors", "config.json", "tokenizer.json",
                                        "preprocessor_config.json", "pytorch_model.bin"])
def test_unreadable_files_say_permission_denied(tiny_checkpoint, tmp_path, monkeypatch, unreadable):
    """Mode 000 files: tests run as root here, who may read them, so opening is made to fail as it would
    for any other user (safetensors itself reports that as 'No such file')."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint[0], folder)
    if unreadable == "pytorch_model.bin":
        torch.save(load_file(folder / "model.safetensors"), folder / unreadable)
        (folder / "model.safetensors").unlink()
    (folder / unreadable).chmod(0)
    real_open = Path.open

    def open_(self, *args, **kwargs):
        if self.name == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(CheckpointError, match=f"cannot read {folder / unreadable}: permission denied"):
        clipx.load(folder)


def test_folder_that_cannot_be_looked_into(tiny_checkpoint, tmp_path, monkeypatch):
    """A folder without execute permission: stat of its files fails. That is not 'no weights in the folder'."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint[0], folder)
    real_is_file = Path.is_file

    def is_file(self):
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors: permission denied"):
        clipx.load(folder)


def test_openai_layout_that_makes_no_clip(tiny_checkpoint, tmp_path):
    """OpenAI state dicts carry no config: heads are width // 64, which is 0 for these widths."""
    torch.save(hf_to_openai(tiny_checkpoint[1].state_dict()), tmp_path / "ViT-narrow.pt")
    with pytest.raises(CheckpointError, match=r"ViT-narrow.pt do not make a ViT CLIP: .*num_attention_heads"):
        clipx.load(tmp_path / "ViT-narrow.pt")
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": [1]}')
    with pytest.raises(CheckpointError, match="open_clip_config.json: model_cfg must be a JSON object"):
        clipx.load(tmp_path / "ViT-narrow.pt")
