"""Bad inputs end in a clear error naming what to fix (or, for pixel values that merely look wrong,
a warning pointing at the caller's line); nothing runs on, nothing is written."""

import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image, ImageOps

import clipx
from clipx.assets import demo_image
from clipx.cli import main
from clipx.preprocess.image import ImageProcessor
from clipx.views import AttentionView, Compare, Explorer, TokenPatchView

PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # a real photo matplotlib ships


def real_images():
    """A photo, demo scenes, and flat images: white (all > 1.9 normalised), black (all < 0), greys."""
    flat = [Image.new("RGB", (80, 60), colour) for colour in ("white", "black", (128, 128, 128), (200, 200, 200))]
    return [PHOTO, str(demo_image("shapes-scene")), str(demo_image("circle-and-square")), *flat]


# --- pixel tensors: NaN / inf are errors, unnormalised ranges a warning at the caller ----------------------

def _calls(model, pixel_values):
    """Every way pixel values reach the model: forward, encode_image, explain."""
    tok = model.tokenize(["a cat", "a dog"])
    return {"forward": lambda: model(pixel_values=pixel_values, input_ids=tok.input_ids,
                                     attention_mask=tok.attention_mask),
            "encode_image": lambda: model.encode_image(pixel_values),
            "explain": lambda: clipx.explain(model, pixel_values, ["a cat", "a dog"])}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_pixel_values_are_an_error(tiny_model, bad):
    pixel_values = tiny_model.preprocess([PHOTO, PHOTO])
    pixel_values[1, 2, 5, 7] = bad
    for name, call in _calls(tiny_model, pixel_values).items():
        with pytest.raises(ValueError, match="pixel_values hold NaN or infinite values"):
            call()


def _unnormalised(model, scale):
    """The photo's pixels rescaled to [0, scale], the normalisation forgotten."""
    size = model.vision.config.image_size
    pixels = np.asarray(Image.open(PHOTO).convert("RGB").resize((size, size)), np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] * (scale / 255)


@pytest.mark.parametrize("scale", [255, 1])
def test_unnormalised_pixel_values_warn_once_at_the_callers_line(tiny_model, scale):
    for name, call in _calls(tiny_model, _unnormalised(tiny_model, scale)).items():
        with pytest.warns(UserWarning, match=r"model\.preprocess\(images\)") as record:
            call()
        assert len(record) == 1, name
        assert record[0].filename == __file__, f"{name}: the warning points at {record[0].filename}"


def test_preprocessed_images_never_warn(tiny_model):
    """Real images alone and together, resampled to another size, and in half precision."""
    images = real_images()
    batches = [tiny_model.preprocess([im]) for im in images] + [tiny_model.preprocess(images)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pixel_values in batches:
            tiny_model.encode_image(pixel_values)
            bigger = F.interpolate(pixel_values, scale_factor=1.5, mode="bicubic", align_corners=False)
            tiny_model.encode_image(bigger, interpolate_pos_encoding=True)
        clipx.explain(tiny_model, images, "a cat")
        half = tiny_model.half()
        assert torch.isfinite(half.encode_image(batches[-1].half())).all()


def test_the_plausible_range_follows_the_processor(tiny_model):
    """Without normalisation the processor gives [0, 1]: that is then right, and 0..255 still wrong."""
    tiny_model.processor = ImageProcessor(size=32, crop_size=32, do_normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model.encode_image(tiny_model.preprocess(real_images()))
    with pytest.warns(UserWarning, match=r"preprocessed images span \[0\.00, 1\.00\]"):
        tiny_model.encode_image(_unnormalised(tiny_model, 255))


def test_pixel_values_smaller_than_a_patch_are_an_error(tiny_model, tmp_path):
    tiny = torch.zeros(1, 3, 5, 40)
    for name, call in _calls(tiny_model, tiny).items():
        with pytest.raises(ValueError, match="pixel_values are 5x40 pixels, smaller than one 8x8 patch"):
            call()
    # an image file that small is resized by the processor, and explained
    Image.new("RGB", (3, 2), (200, 30, 30)).save(tmp_path / "dot.png")
    exp = clipx.explain(tiny_model, [tmp_path / "dot.png"], "a red dot")
    assert exp.pixel_maps(original=True)[0].shape == (1, 2, 3) and torch.isfinite(exp.image).all()


def test_empty_or_integer_pixel_tensors_are_an_error(tiny_model):
    with pytest.raises(ValueError, match="pixel_values holds no images"):
        tiny_model.encode_image(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match="images: a tensor must be preprocessed pixel values.*uint8"):
        clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "a cat")


# --- image files: decompression bombs, EXIF orientation ----------------------------------------------------

def write_blank_png(path, width, height):
    """A black 1-bit PNG of any size in a few kB: its rows are compressed as they are made."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row, packer = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_a_clear_error(tiny_model, tmp_path):
    from clipx.preprocess.image import image_size, open_image

    bomb = write_blank_png(tmp_path / "bomb.png", 20_000, 20_000)
    assert bomb.stat().st_size < 100_000
    calls = {"open_image": lambda: open_image(bomb), "image_size": lambda: image_size(bomb),
             "preprocess": lambda: tiny_model.preprocess([bomb]), "explain": lambda: clipx.explain(tiny_model, bomb, "a")}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"{bomb} has more pixels than PIL.Image.MAX_IMAGE_PIXELS = 89478485 allows"):
            call()


def test_an_image_over_the_warning_limit_is_refused_too(tiny_model, tmp_path, monkeypatch):
    """PIL only warns between 1x and 2x its limit and then decodes: clipx refuses those alike."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")  # 1600 pixels: PIL's warning, not its error
    Image.new("RGB", (30, 30)).save(tmp_path / "fine.png")
    refused = r"images\[1\]: .*big.png has more pixels than PIL.Image.MAX_IMAGE_PIXELS = 1000 allows"
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValueError, match=refused):
        tiny_model.preprocess([tmp_path / "fine.png", tmp_path / "big.png"])  # PIL warns, clipx refuses
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # where the user's filters turn PIL's warning into an exception
        with pytest.raises(ValueError, match=refused):
            tiny_model.preprocess([tmp_path / "fine.png", tmp_path / "big.png"])
        assert tiny_model.preprocess([tmp_path / "fine.png"]).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("command", ["score", "explain"])
def test_the_cli_refuses_a_decompression_bomb_before_the_model_loads(tmp_path, capsys, monkeypatch, command):
    import clipx.io.loading

    monkeypatch.setattr(clipx.io.loading, "load", lambda *a, **k: pytest.fail("the model loaded before the check"))
    bomb = write_blank_png(tmp_path / "bomb.png", 20_000, 20_000)
    out = ["--out", str(tmp_path / "out")] if command == "explain" else ["--model", "demo"]
    assert main([command, str(bomb), "a cat", *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipx {command}: error: {bomb} has more pixels than PIL.Image.MAX_IMAGE_PIXELS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_image_file_opens_upright_and_its_size_says_so(tmp_path, orientation):
    from clipx.preprocess.image import image_size, open_image

    stored = Image.new("RGB", (30, 20), (10, 20, 30))
    stored.paste((250, 0, 0), (0, 0, 5, 5))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "photo.png", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "photo.png"))
    opened = open_image(tmp_path / "photo.png")
    assert opened.mode == "RGB" and opened.tobytes() == upright.convert("RGB").tobytes()
    assert image_size(tmp_path / "photo.png") == opened.size == ((20, 30) if orientation >= 5 else (30, 20))


# --- explanation options: ints only, errors naming the option passed -----------------------------------------

INT_OPTIONS = [("relevance", "start_layer"), ("relevance", "start_layer_text"), ("rollout", "start_layer"),
               ("attention", "layer"), ("attention", "head"), ("gradcam", "layer"), ("legrad", "start_layer")]


@pytest.mark.parametrize("method, option", INT_OPTIONS)
def test_int_options_must_be_ints(tiny_model, method, option):
    for bad in ("0", True, 1.0, None if option != "head" else [0]):
        with pytest.raises(TypeError, match=f"^{option} must be an int, got {re.escape(repr(bad))}"):
            clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32), "a cat", method=method, **{option: bad})
    exp = clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32), "a cat", method=method, **{option: np.int64(0)})
    assert exp.options[option] == 0


@pytest.mark.parametrize("method, option", [(m, o) for m, o in INT_OPTIONS if o != "head"])
def test_layer_errors_name_the_option_given(tiny_model, method, option):
    with pytest.raises(ValueError, match=f"^{option} 5 is outside the (vision|text) tower's 2 blocks"):
        clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32), "a cat", method=method, **{option: 5})


def test_a_head_out_of_range_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="head 4 is out of range: the towers have 4 and 4 heads"):
        clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32), "a cat", method="attention", head=4)


def test_method_must_be_a_name(tiny_model):
    with pytest.raises(TypeError, match="method must be a method's name .*got list"):
        clipx.explain(tiny_model, torch.zeros(1, 3, 32, 32), "a cat", method=["relevance"])


def test_pixel_maps_of_one_caption(tiny_model):
    exp = clipx.explain(tiny_model, [PHOTO, str(demo_image("shapes-scene"))], ["a cat", "a dog", "a star"])
    for j in (0, 2, -1):
        torch.testing.assert_close(exp.pixel_maps(text=j), exp.pixel_maps()[:, [j]])
        for one, every in zip(exp.pixel_maps(original=True, text=j), exp.pixel_maps(original=True)):
            torch.testing.assert_close(one, every[[j]])
    with pytest.raises(TypeError, match="text must be an int, got True"):
        exp.pixel_maps(text=True)  # a bool would index as a mask
    with pytest.raises(IndexError, match="text 3 is out of range for 3 captions"):
        exp.pixel_maps(original=True, text=3)


# --- views ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("view", [Explorer, TokenPatchView, AttentionView, Compare])
def test_views_refuse_no_captions_or_no_images(tiny_model, view):
    with pytest.raises(ValueError, match=f"no captions given to {view.__name__}"):
        view(tiny_model, PHOTO, [])
    with pytest.raises(ValueError, match="no images given"):
        view(tiny_model, [], ["a cat"])


def test_views_refuse_unknown_methods(tiny_model):
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        Explorer(tiny_model, PHOTO, ["a cat"], method="magic")
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        Compare(tiny_model, PHOTO, ["a cat"], methods=["relevance", "magic"])


# --- overlays of big photos ------------------------------------------------------------------------------------

def test_overlay_of_a_big_photo_makes_no_float64_copies():
    """numpy's allocations show in tracemalloc: a float64 RGB copy of the image alone is 6 float32 maps."""
    import tracemalloc

    from clipx.explain.legend import Scale
    from clipx.views.render import overlay

    side = 1500
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    heatmap = torch.from_numpy(rng.random((side, side), dtype=np.float32))
    tracemalloc.start()
    try:
        out = overlay(image, heatmap, alpha=0.3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    map_bytes = side * side * 4
    assert peak < 4 * map_bytes, f"overlay's numpy peak is {peak / map_bytes:.1f} full-size float32 maps"
    colours = Scale.fit(heatmap).rgba(heatmap, alpha=0.3).astype(np.float64)
    opacity = colours[..., 3:] / 255
    want = np.asarray(image, np.float64) * (1 - opacity) + colours[..., :3] * opacity
    assert np.abs(np.asarray(out) - want).max() <= 1  # the blend, rounded to 8 bits
