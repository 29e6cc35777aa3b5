"""clipx.load on folders, files, sharded checkpoints and a local hub cache; and every way it refuses."""

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import clipx
import clipx.io.loading
from clipx import CheckpointError, CheckpointNotFoundError
from inputs import texts_to_ids


def logits(model, seed=1):
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    ids, mask = texts_to_ids()
    with torch.no_grad():
        return model(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image


def copy_checkpoint(tiny_checkpoint, dst):
    shutil.copytree(tiny_checkpoint[0], dst)
    return dst


def test_load_attaches_tokenizer_processor_and_settings(tiny_checkpoint):
    model = clipx.load(tiny_checkpoint[0], dtype=torch.float64, attention="eager")
    assert model.attention_backend == "eager" and not model.training
    px = model.preprocess([torch.randn(3, 32, 32)])  # a tensor passes as preprocessed pixel values
    assert px.dtype == torch.float64 and px.shape == (1, 3, 32, 32)
    tok = model.tokenize(["a photo of a cat", "a dog"])
    assert tok.input_ids[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask).logits_per_image.shape == (1, 2)


def test_pickled_bin_is_read_with_weights_only(tiny_checkpoint, tmp_path, monkeypatch):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "bin")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    torch.testing.assert_close(logits(clipx.load(folder)), logits(clipx.load(tiny_checkpoint[0])))
    assert calls and all(k.get("weights_only") is True for k in calls)


def test_sharded_safetensors(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "sharded")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.testing.assert_close(logits(clipx.load(folder)), logits(clipx.load(tiny_checkpoint[0])))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        clipx.load(folder)


def fake_hub_cache(root, repo_id, files_from, revision_hash="0123456789abcdef0123456789abcdef01234567"):
    """The on-disk layout huggingface_hub's cache uses: refs/main -> snapshots/<hash>/files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision_hash)
    shutil.copytree(files_from, repo / "snapshots" / revision_hash)
    return root


def test_hub_id_from_local_cache_offline(tiny_checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = fake_hub_cache(tmp_path / "hub", "openai/clip-vit-tiny", tiny_checkpoint[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = clipx.load("openai/clip-vit-tiny")
    torch.testing.assert_close(logits(model), logits(clipx.load(tiny_checkpoint[0])))
    with pytest.raises(CheckpointNotFoundError, match="openai/clip-vit-nothere.*offline"):
        clipx.load("openai/clip-vit-nothere")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointNotFoundError, match="clip-vit-nothere.*offline"):
        clipx.load("openai/clip-vit-nothere", local_files_only=True)


def test_hub_download_fetches_open_clip_only_repositories(tiny_checkpoint, tmp_path, monkeypatch):
    """Online, only the weight files clipx will read are fetched, format by format; a repository
    holding only open_clip's weights must be found too (huggingface_hub is faked: no network here)."""
    import fnmatch

    import huggingface_hub

    remote = copy_checkpoint(tiny_checkpoint, tmp_path / "remote")
    (remote / "model.safetensors").rename(remote / "open_clip_model.safetensors")
    fetched = []

    def snapshot_download(repo_id, revision=None, local_files_only=False, allow_patterns=()):
        local = tmp_path / "snapshot"
        local.mkdir(exist_ok=True)
        for f in remote.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, local / f.name)
                fetched.append(f.name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = clipx.load("laion/clip-tiny", local_files_only=False)
    torch.testing.assert_close(logits(model), logits(clipx.load(tiny_checkpoint[0])))
    assert fetched.count("open_clip_model.safetensors") == 1
    (remote / "open_clip_model.safetensors").unlink()
    shutil.rmtree(tmp_path / "snapshot")
    with pytest.raises(CheckpointNotFoundError, match="laion/clip-tiny.*no CLIP weights"):
        clipx.load("laion/clip-tiny", local_files_only=False)


def test_torchscript_archive_is_refused_with_advice(tmp_path, tiny_checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, its archives are not gone
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-16.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own "looks like a TorchScript archive" warning must not leak
        with pytest.raises(CheckpointError, match="TorchScript archive.*state_dict"):
            clipx.load(tmp_path / "ViT-B-16.pt")
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    torch.save(tiny_checkpoint[1].state_dict(), folder / "pytorch_model.bin")  # a plain torch.save zip is still read
    torch.testing.assert_close(logits(clipx.load(folder)), logits(clipx.load(tiny_checkpoint[0])))


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such file or folder"):
        clipx.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match="no weights.*model.safetensors.*pytorch_model.bin"):
        clipx.load(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_safetensors(tiny_checkpoint, tmp_path, damage):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / damage)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64 + data[64:])
    with pytest.raises(CheckpointError, match="cannot read weights from .*model.safetensors"):
        clipx.load(folder)


def test_mismatched_keys_are_listed(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "keys")
    state = load_file(folder / "model.safetensors")
    del state["text_model.final_layer_norm.bias"]
    state["text_model.extra.weight"] = torch.zeros(1)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        clipx.load(folder)
    assert "missing keys (1): text_model.final_layer_norm.bias" in str(info.value)
    assert "unexpected keys (1): text_model.extra.weight" in str(info.value)


def test_shapes_that_disagree_with_the_config(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "shapes")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = 100
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"vision_config.intermediate_size=100 but the weights have 96 "
                                              r"\(vision_model.encoder.layers.0.mlp.fc1.weight: \(96, 48\)\)"):
        clipx.load(folder)
    # a weight whose shape no config field names is caught by the strict load
    shutil.copy(tiny_checkpoint[0] / "config.json", folder / "config.json")
    state = load_file(folder / "model.safetensors")
    state["vision_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(48, 40)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"q_proj.weight: checkpoint \(48, 40\) vs model \(48, 48\)"):
        clipx.load(folder)


def test_bad_model_inputs(tiny_model):
    with pytest.raises(ValueError, match=r"pixel_values must be a float tensor \[batch, 3, height, width\]"):
        tiny_model.encode_image(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values must be a float tensor"):
        tiny_model.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        tiny_model.encode_text(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at most 77"):
        tiny_model.encode_text(torch.ones(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_model.encode_text(torch.tensor([[49406, 60000, 49407]]))
    with pytest.raises(ValueError, match="does not match"):
        tiny_model.encode_text(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pass pixel_values, input_ids"):
        tiny_model()


def test_bad_captions(tiny_model):
    with pytest.raises(ValueError):
        tiny_model.tokenize([])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = tiny_model.tokenize(["a cat " * 100, "a dog"])
    assert tok.input_ids.shape == (2, 77) and tok.input_ids[0, -1] == 49407
    assert any("truncat" in str(w.message) for w in caught)


def test_zero_size_image(tiny_model):
    from PIL import Image

    with pytest.raises(ValueError):
        tiny_model.preprocess([Image.new("RGB", (0, 10))])


@pytest.mark.parametrize("placement, message", [
    (dict(device="gpu"), r"device 'gpu' is not a torch device"),
    (dict(device="meta"), r"device meta holds no values"),
    (dict(device=f"cuda:{torch.cuda.device_count() + 3}"), r"this machine has \d+ CUDA devices? that torch can use"),
    (dict(dtype=torch.int8), r"dtype must be a floating-point torch dtype .* got torch.int8"),
    (dict(dtype="float17"), r"dtype must be a floating-point torch dtype .* got 'float17'"),
])
def test_a_device_or_dtype_the_model_cannot_take_is_refused_before_loading(placement, message, monkeypatch):
    monkeypatch.setattr(clipx.io.loading, "resolve", lambda *a: pytest.fail("read files before checking"))
    with pytest.raises(ValueError, match=message):
        clipx.load("demo", **placement)


def test_a_dtype_by_name_is_taken_as_transformers_takes_it():
    assert next(clipx.load("demo", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    assert next(clipx.load("demo", dtype="torch.float16").parameters()).dtype == torch.float16
