"""The Python API given what a hostile or careless caller gives it: each bad input is a clear error that
names it (or, where the input makes sense, the right answer), never a raw torch or Python error deep inside;
and the side files of a saved model written whole or not at all when saved on their own."""

import json
import math

import pytest
import torch
from PIL import Image

import clipx
from clipx.mech.sae.autoencoder import SAEConfig, SparseAutoencoder
from clipx.mech.sae.training import fit, new_sae
from damage import fill_disk
from floats import assert_float32_close


def _scenes(n=2):
    return [Image.new("RGB", (64, 64), (200 - 90 * k, 40 + 90 * k, 30)) for k in range(n)]


def test_zeroshot_reads_a_generator_of_classes_once(model):
    classes = ["a red square", "a green square"]
    given = clipx.zeroshot(model, _scenes(), classes)
    generated = clipx.zeroshot(model, _scenes(), (c for c in classes))
    assert generated.classnames == classes and generated.labels == given.labels
    assert torch.equal(generated.logits, given.logits)


def test_zeroshot_explain_counts_from_the_end_for_a_tensor_of_images(model):
    result = clipx.zeroshot(model, model.preprocess(_scenes()), ["a red square", "a green square"])
    last, second = result.explain(-1, method="gradcam"), result.explain(1, method="gradcam")
    assert torch.equal(last.scores, second.scores) and torch.equal(last.image, second.image)
    with pytest.raises(IndexError, match=r"image 2 of 2: i is an image's index, 0..1 \(or -1..-2 from the end\)"):
        result.explain(2)


@pytest.mark.parametrize("baseline, error, message", [
    ("blur", TypeError, r"image_baseline must be a number .* got 'blur'"),
    (torch.zeros(1, 3, 5, 5), ValueError, r"image_baseline of shape \(1, 3, 5, 5\) does not fit the pixel_values "
                                          r"\(2, 3, 32, 32\)"),
    (float("nan"), ValueError, "image_baseline holds NaN or infinite values"),
])
def test_integrated_gradients_names_a_bad_image_baseline(model, baseline, error, message):
    with pytest.raises(error, match=message):
        clipx.explain(model, model.preprocess(_scenes()), ["a cat"], method="integrated_gradients", n_steps=2,
                      image_baseline=baseline)


def test_integrated_gradients_takes_one_baseline_image_for_all(model):
    pixels = model.preprocess(_scenes())
    one_number = clipx.explain(model, pixels, ["a cat"], method="integrated_gradients", n_steps=2, image_baseline=0.5)
    one_image = clipx.explain(model, pixels, ["a cat"], method="integrated_gradients", n_steps=2,
                              image_baseline=torch.full(pixels.shape[1:], 0.5))
    assert torch.equal(one_number.image, one_image.image)


def test_meta_tensors_are_refused_by_name(model):
    pixels, tok = model.preprocess(_scenes()), model.tokenize(["a cat"])
    with pytest.raises(ValueError, match=r"^images is a meta tensor: it has a shape but no values"):
        clipx.explain(model, pixels.to("meta"), ["a cat"])
    with pytest.raises(ValueError, match=r"^input_ids is a meta tensor"):
        clipx.explain(model, pixels, {"input_ids": tok.input_ids.to("meta"), "attention_mask": tok.attention_mask})
    with pytest.raises(ValueError, match=r"^attention_mask is a meta tensor"):
        clipx.explain(model, pixels, {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask.to("meta")})
    with pytest.raises(ValueError, match=r"^image_baseline is a meta tensor"):
        clipx.explain(model, pixels, ["a cat"], method="integrated_gradients", image_baseline=torch.zeros((), device="meta"))


def test_a_model_on_the_meta_device_is_refused_by_name(tiny_checkpoint):
    model = clipx.load(tiny_checkpoint[0]).to("meta")
    with pytest.raises(ValueError, match=r"^the model's \S+ is a meta tensor"):
        clipx.explain(model, _scenes(1), ["a cat"])


def test_rise_refuses_a_cell_larger_than_the_image(model):
    pixels = model.preprocess(_scenes(1))
    grid = model.vision.patch_grid(pixels)
    side = max(grid)
    with pytest.raises(ValueError, match=f"cell_size {side + 1} is larger than the image's {grid[0]} x {grid[1]} "
                                         f"patch grid: .* use 1..{side}"):
        clipx.explain(model, pixels, ["a cat"], method="rise", cell_size=side + 1, n_masks=4)
    whole = clipx.explain(model, pixels, ["a cat"], method="rise", cell_size=side, n_masks=4)
    assert whole.image.shape[-2:] == grid


@pytest.mark.parametrize("captions, error, message", [
    ([None], TypeError, r"texts\[0\] is NoneType None, not a str"),
    (["a cat", b"a dog"], TypeError, r"texts\[1\] is bytes b'a dog', not a str"),
])
def test_captions_that_are_not_strings_are_named(model, captions, error, message):
    with pytest.raises(error, match=message):
        clipx.explain(model, _scenes(1), captions)


def _small_sae():
    return new_sae(torch.randn(64, 16), "vision.blocks.0.hook_resid_post", d_sae=8, k=2)


@pytest.mark.parametrize("field, value, message", [
    ("input_scale", "1.0", "input_scale must be a finite number > 0, got '1.0'"),
    ("input_scale", math.inf, "input_scale must be a finite number > 0, got inf"),
    ("input_scale", math.nan, "input_scale must be a finite number > 0, got nan"),
    ("k", True, "activation='topk' needs an int k in 1..d_sae=8, got k=True"),
    ("d_sae", 8.0, "d_sae must be a positive int, got 8.0"),
])
def test_an_sae_config_of_the_wrong_types_is_refused_naming_file_and_field(tmp_path, field, value, message):
    _small_sae().save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))  # Infinity, NaN: as Python writes them
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.json'}: {message}$"):
        SparseAutoencoder.load(tmp_path)


def test_an_sae_config_that_is_not_json_names_the_file(tmp_path):
    _small_sae().save(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.json'} is not valid JSON"):
        SparseAutoencoder.load(tmp_path)


def test_sae_config_refuses_a_bool_l1_in_python_too():
    with pytest.raises(ValueError, match=r"the L1 coefficient l1 must be a number >= 0 \(or None\), got l1=True"):
        SAEConfig("vision.blocks.0.hook_resid_post", 16, 8, activation="relu", l1=True)


def test_gradients_under_inference_mode_are_a_clear_error(model):
    pixels, tok = model.preprocess(_scenes(1)), model.tokenize(["a cat"])
    advice = r"needs gradients, which torch.inference_mode\(\) rules out: call it outside the inference_mode block"
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"^run_with_cache\(objective=...\) " + advice):
            model.run_with_cache(pixel_values=pixels, **tok, objective=lambda out: out.logits_per_image.sum())
        with pytest.raises(RuntimeError, match="^train_sae " + advice):
            clipx.train_sae(model, "vision.blocks.0.hook_resid_post", pixels, d_sae=8, k=2, steps=1, progress=False)
        with pytest.raises(RuntimeError, match="^fit " + advice):
            fit(_small_sae(), torch.randn(32, 16), steps=1, progress=False)


def test_an_sae_trains_inside_no_grad_as_outside(model):
    pixels = model.preprocess(_scenes(2))
    options = dict(d_sae=8, k=2, steps=3, batch_size=16, progress=False)
    outside, _ = clipx.train_sae(model, "vision.blocks.0.hook_resid_post", pixels, **options)
    with torch.no_grad():
        inside, _ = clipx.train_sae(model, "vision.blocks.0.hook_resid_post", pixels, **options)
    for (name, a), (_, b) in zip(outside.named_parameters(), inside.named_parameters()):
        assert_float32_close(b, a, rtol=1e-6), name


@pytest.mark.parametrize("part", ["tokenizer", "processor", "config"])
def test_side_files_saved_on_their_own_are_written_whole_or_not_at_all(model, tmp_path, monkeypatch, part):
    """The tokenizer's, processor's and config's own saves go through clipx.files' write-then-rename: a full
    disk mid-write leaves the files saved before as they were, and the error names the file."""
    save = {"tokenizer": model.tokenizer.save_pretrained, "processor": model.processor.save_pretrained,
            "config": model.config.save}[part]
    save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fill_disk(monkeypatch, after=5)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: '{tmp_path}/[^']+'$"):
        save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either
