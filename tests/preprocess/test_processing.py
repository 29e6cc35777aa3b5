"""clipx.processing against transformers' PIL CLIP image processor, the inverse, and bad inputs.

transformers 5 splits CLIP's processor into a torchvision one (`CLIPImageProcessor`) and a PIL one
(`CLIPImageProcessorPil`, what OpenAI's preprocessing matches); before 5 the PIL one was
`CLIPImageProcessor` itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from clipx.preprocess.image import ImageProcessor

HF = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
transformers.logging.set_verbosity_error()  # ambiguous-channel and torchvision-fallback notices

TOL = 1e-5
MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "1", "LAB"]
# around the crop: equal, one more / less, odd and even differences, thin, tiny, very wide or tall
SIZES = [(224, 224), (225, 224), (224, 225), (225, 226), (226, 227), (227, 225), (300, 224), (223, 301),
         (640, 480), (481, 641), (100, 50), (50, 100), (7, 3), (3, 7), (1, 1), (1, 300), (300, 1), (30, 30)]
CONFIGS = {
    "default": {},
    "other-size-crop-mean-std": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 27},
                                 "resample": 2, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]},
    "old-integers": {"size": 37, "crop_size": 30, "resample": 3, "feature_extractor_type": "CLIPFeatureExtractor"},
    "no-center-crop": {"size": {"shortest_edge": 24}, "do_center_crop": False},
    "crop-larger-than-resize": {"size": {"shortest_edge": 20}, "crop_size": {"height": 31, "width": 25}},
    "no-resize": {"do_resize": False, "crop_size": {"height": 33, "width": 32}},
    "exact-resize": {"size": {"height": 30, "width": 41}, "crop_size": {"height": 25, "width": 40}},
    "scalar-mean-nearest": {"size": 29, "crop_size": 28, "image_mean": 0.5, "image_std": 0.5, "resample": 0},
    "raw-pixels": {"size": 26, "crop_size": 26, "do_rescale": False, "do_normalize": False},
    "rescale-only": {"size": 26, "crop_size": 26, "rescale_factor": 0.5, "do_normalize": False},
}


# --- helpers -------------------------------------------------------------------------------------
def random_image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode)


def hf_pixels(hf, image, **kwargs) -> torch.Tensor:
    return hf(image, return_tensors="pt", **kwargs).pixel_values.float()


def write_config(folder, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what):
    assert ours.shape == theirs.shape, what
    assert ours.dtype == torch.float32, what
    assert (ours - theirs).abs().max().item() <= TOL, what


@pytest.fixture(scope="module")
def default_pair():
    return ImageProcessor(), HF()


# --- equality with transformers ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf_on_sizes_and_modes(name, tmp_path):
    """Both processors read the same preprocessor_config.json; every size, modes in rotation."""
    folder = write_config(tmp_path, CONFIGS[name])
    ours, hf = ImageProcessor.from_pretrained(folder), HF.from_pretrained(folder)
    rng = np.random.default_rng(len(name))
    for k, (w, h) in enumerate(SIZES):
        image = random_image(rng, w, h, MODES[k % len(MODES)])
        assert_close(ours(image), hf_pixels(hf, image), (name, w, h, image.mode))


def test_matches_hf_on_very_elongated_images(default_pair):
    ours, hf = default_pair
    rng = np.random.default_rng(1)
    for w, h in [(2000, 3), (3, 700)]:
        image = random_image(rng, w, h)
        assert_close(ours(image), hf_pixels(hf, image), (w, h))


@pytest.mark.parametrize("mode", MODES)
def test_matches_hf_on_every_mode(mode, default_pair):
    ours, hf = default_pair
    rng = np.random.default_rng(2)
    for w, h in [(37, 23), (224, 224), (1, 5)]:
        image = random_image(rng, w, h, mode)
        assert image.mode == mode
        assert_close(ours(image), hf_pixels(hf, image), (mode, w, h))


def test_transparency_is_composited_onto_white_like_hf(default_pair):
    """Alpha bands and transparent palette / grey colours all turn white where transparent."""
    ours, hf = default_pair
    rng = np.random.default_rng(3)
    palette = random_image(rng, 40, 30, "P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    grey = random_image(rng, 40, 30, "L")
    grey.info["transparency"] = int(np.asarray(grey)[0, 0])
    clear = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    for image in (palette, grey, clear):
        assert_close(ours(image), hf_pixels(hf, image), image.mode)
    assert np.asarray(ours.to_pil(ours(clear))[0]).min() == 255  # transparent red shows as white


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
def test_paths_match_hf(tmp_path, default_pair):
    """Paths go through transformers' load_image: EXIF rotation, then a plain convert("RGB")."""
    ours, hf = default_pair
    rng = np.random.default_rng(4)
    paths = []
    for mode in ("RGB", "RGBA", "LA", "L", "P"):
        paths.append(tmp_path / f"{mode.replace(';', '_')}.png")
        random_image(rng, 45, 31, mode).save(paths[-1])
    transparent = random_image(rng, 45, 31, "P")
    paths.append(tmp_path / "trns.png")
    transparent.save(paths[-1], transparency=int(np.asarray(transparent)[0, 0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    paths.append(tmp_path / "rotated.jpg")
    random_image(rng, 60, 30).save(paths[-1], exif=exif)
    for path in paths:
        assert_close(ours(path), hf_pixels(hf, str(path)), path.name)
        assert_close(ours(str(path)), hf_pixels(hf, str(path)), path.name)
    # a file's alpha is dropped, a PIL image's composited onto white (both as in transformers)
    rgba = paths[1]
    assert not torch.allclose(ours(rgba), ours(Image.open(rgba)))
    # the one portrait-rotated JPEG comes out resized from 30x60: check the rotation happened
    assert ImageProcessor(do_center_crop=False, size=30)(paths[-1]).shape == (1, 3, 60, 30)


@pytest.mark.parametrize("mode, values, as_8_bit", [
    ("I;16", [0, 100, 255, 256, 1000, 32768, 65535], lambda v: v * 255 / 65535),
    ("F", [0.0, 0.001, 0.25, 0.5, 0.999, 1.0], lambda v: v * 255),
    ("I", [0, 1, 100, 200, 254, 255], lambda v: v),
])
def test_high_bit_depth_is_scaled_by_its_range_not_clipped(mode, values, as_8_bit, tmp_path):
    """PIL's convert("RGB") (transformers' too) clips 16-bit and float values at 255: a 16-bit photo turns
    white. Here each is scaled by its type's range, as a picture or as a file, before the 8-bit recipe."""
    values = np.array([values], dtype={"I;16": np.uint16, "F": np.float32, "I": np.int32}[mode])
    image = Image.fromarray(values) if mode != "I" else Image.fromarray(values).convert("I")
    assert image.mode == mode
    as_is = ImageProcessor(do_resize=False, do_center_crop=False)
    expected = np.round(as_8_bit(values.astype(np.float64))).astype(np.uint8)
    assert np.asarray(as_is.to_pil(as_is(image))[0])[..., 0].tolist() == expected.tolist()
    grey = Image.fromarray(expected).convert("RGB")
    assert torch.equal(ImageProcessor()(image), ImageProcessor()(grey))
    if mode == "I;16":  # PNG has no float or 32-bit integer mode
        image.save(tmp_path / "wide.png")
        assert torch.equal(ImageProcessor()(tmp_path / "wide.png"), ImageProcessor()(grey))


@pytest.mark.parametrize("mode, values, message", [
    ("F", [0.0, 1.5], r"images\[0\]: a 32-bit float image must hold values in \[0, 1\]; got \[0.0, 1.5\]"),
    ("F", [0.0, float("nan")], r"a 32-bit float image must hold values in \[0, 1\]"),
    ("I", [-1, 3], r"images\[0\]: a 32-bit integer image with values \[-1, 3\] has no known range"),
    ("I", [0, 70000], r"values \[0, 70000\] has no known range; convert it to 8 bits"),
])
def test_high_bit_depth_without_a_known_range_is_refused(mode, values, message):
    array = np.array([values], dtype=np.float32 if mode == "F" else np.int32)
    with pytest.raises(ValueError, match=message):
        ImageProcessor()(Image.fromarray(array))


def test_numpy_arrays_match_hf(default_pair):
    ours, hf = default_pair
    rng = np.random.default_rng(5)
    for shape in [(31, 45, 3), (31, 45, 4), (31, 45, 1), (1, 300, 3), (4, 3, 3), (224, 225, 3)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        theirs = hf_pixels(hf, a, input_data_format="channels_last")  # HWC, even where 3 or 4 lead
        assert_close(ours(a), theirs, shape)
        assert_close(ours(a.astype(np.int64)), theirs, shape)
    # transformers takes no HxW array; compare with the greyscale image it stands for
    grey = rng.integers(0, 256, (31, 45), dtype=np.uint8)
    assert_close(ours(grey), hf_pixels(hf, Image.fromarray(grey, "L")), "HxW")


def test_float_arrays_are_quantised_by_rounding(default_pair):
    """transformers mishandles floats in [0, 1]: with its default do_rescale it scales them by 1/255
    twice, and with do_rescale=False its resize truncates to 8 bits. clipx rounds to 8 bits."""
    ours, hf = default_pair
    rng = np.random.default_rng(6)
    a = rng.random((40, 50, 3))
    eight_bit = np.round(a * 255).astype(np.uint8)
    assert_close(ours(a), hf_pixels(hf, eight_bit), "float")
    assert_close(ours(a.astype(np.float32)), hf_pixels(hf, eight_bit), "float32")
    assert hf_pixels(hf, a, input_data_format="channels_last").mean() < -1  # HF: almost black


def test_do_convert_rgb_false_matches_hf_on_rgb(tmp_path):
    folder = write_config(tmp_path, {"do_convert_rgb": False, "size": 30, "crop_size": 30})
    ours, hf = ImageProcessor.from_pretrained(folder), HF.from_pretrained(folder)
    image = random_image(np.random.default_rng(7), 50, 40)
    assert_close(ours(image), hf_pixels(hf, image), "RGB")
    with pytest.raises(ValueError, match=r"images\[0\].*LA.*do_convert_rgb"):
        ours(image.convert("LA"))


def test_a_list_is_the_batch_of_its_images(default_pair):
    ours, hf = default_pair
    rng = np.random.default_rng(8)
    images = [random_image(rng, w, h, mode) for (w, h), mode in zip(SIZES[:5], MODES)]
    batch = ours(images)
    assert batch.shape == (5, 3, 224, 224)
    assert torch.equal(batch, torch.cat([ours(image) for image in images]))
    assert torch.equal(ours(tuple(images)), batch)
    assert_close(batch, hf_pixels(hf, images), "list")


def test_images_of_different_sizes_without_a_crop_cannot_be_batched():
    processor = ImageProcessor(do_center_crop=False, size=20)
    with pytest.raises(ValueError, match="different sizes"):
        processor([Image.new("RGB", (20, 20)), Image.new("RGB", (40, 20))])


def test_preprocessed_tensors_pass_through():
    processor = ImageProcessor()
    batch = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    assert processor(batch) is batch
    single = torch.randn(3, 32, 32)
    assert torch.equal(processor(single), single[None])
    assert torch.equal(processor([single, single * 2]), torch.stack([single, single * 2]))
    mixed = processor([torch.zeros(3, 224, 224), Image.new("RGB", (300, 250))])
    assert mixed.shape == (2, 3, 224, 224) and torch.equal(mixed[0], torch.zeros(3, 224, 224))


# --- configuration files -------------------------------------------------------------------------
def test_old_integer_config_reads_like_hf(tmp_path):
    folder = write_config(tmp_path, CONFIGS["old-integers"])
    ours, hf = ImageProcessor.from_pretrained(folder), HF.from_pretrained(folder)
    assert ours.size == {"shortest_edge": 37} == dict(hf.size)
    assert ours.crop_size == {"height": 30, "width": 30} == dict(hf.crop_size)
    assert ours.resample == 3 == int(hf.resample)


def test_missing_file_gives_clip_defaults(tmp_path):
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert processor == ImageProcessor()
    defaults = HF()
    assert processor.size == dict(defaults.size) and processor.crop_size == dict(defaults.crop_size)
    assert processor.resample == int(defaults.resample) == 3
    assert processor.image_mean == tuple(defaults.image_mean) and processor.image_std == tuple(defaults.image_std)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        ImageProcessor.from_pretrained(tmp_path / "no-such-folder")


def test_hf_written_config_is_read(tmp_path):
    HF(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 56}, image_mean=[0.1, 0.2, 0.3],
       do_center_crop=False).save_pretrained(tmp_path)
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert processor == ImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 56},
                                       image_mean=(0.1, 0.2, 0.3), do_center_crop=False)


@pytest.mark.parametrize("name", ["other-size-crop-mean-std", "no-center-crop", "exact-resize", "raw-pixels"])
def test_save_pretrained_round_trips_through_hf(name, tmp_path):
    processor = ImageProcessor.from_dict(CONFIGS[name])
    processor.save_pretrained(tmp_path / "saved")
    assert ImageProcessor.from_pretrained(tmp_path / "saved") == processor
    # the settings as transformers' CLIPImageProcessor reads them (its PIL class without torchvision)
    settings = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "saved").to_dict()
    assert ImageProcessor.from_dict(settings) == processor
    image = random_image(np.random.default_rng(9), 50, 37)
    assert_close(processor(image), hf_pixels(HF.from_pretrained(tmp_path / "saved"), image), name)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="size"):
        ImageProcessor(size={"longest_edge": 100})
    with pytest.raises(ValueError, match="crop_size"):
        ImageProcessor(crop_size={"shortest_edge": 100})
    with pytest.raises(ValueError, match="image_mean"):
        ImageProcessor(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="image_std"):
        ImageProcessor(image_std=[0.5, 0, 0.5])


# --- the way back --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "other-size-crop-mean-std", "no-resize", "scalar-mean-nearest",
                                  "raw-pixels", "rescale-only"])
def test_to_pil_inverts_to_the_resized_cropped_image(name):
    processor = ImageProcessor.from_dict(CONFIGS[name])
    # transformers with rescale and normalise off gives the resized, cropped 8-bit pixels
    hf = HF(**{k: v for k, v in processor.to_dict().items() if k != "image_processor_type"})
    rng = np.random.default_rng(10)
    for w, h in [(50, 37), (300, 224), (20, 41)]:
        image = random_image(rng, w, h, "RGBA")
        shown = processor.to_pil(processor(image))
        assert len(shown) == 1 and shown[0].mode == "RGB"
        expected = hf_pixels(hf, image, do_rescale=False, do_normalize=False)[0].permute(1, 2, 0).numpy()
        assert np.abs(np.asarray(shown[0], dtype=np.float32) - expected).max() <= 1, (name, w, h)
    assert len(processor.to_pil(processor([image, image]))) == 2
    assert len(processor.to_pil(processor(image)[0])) == 1  # [3, H, W] too


@pytest.mark.parametrize("config, width, height", [
    ({}, 400, 300),                                          # downscale, crop across the width
    ({}, 301, 640),                                          # downscale, crop across the height, odd
    ({}, 50, 31),                                            # upscale
    ({"size": 20, "crop_size": {"height": 31, "width": 25}}, 60, 40),  # crop larger: reaches outside
    ({"do_resize": False, "crop_size": 16}, 40, 25),
    ({"do_center_crop": False, "size": 32}, 90, 50),
    ({"size": {"height": 30, "width": 41}, "crop_size": 24}, 83, 61),
])
def test_crop_box_places_a_marker_pixel_back(config, width, height):
    """A white pixel of the original shows in the crop where crop_box says: its centroid lies within
    a quarter of a crop pixel of the pixel's centre mapped through the box (an off-by-one crop offset
    or a half-pixel slip would miss); far outside the box it is cropped away."""
    processor = ImageProcessor.from_dict(config)
    left, top, right, bottom = processor.crop_box(width, height)
    rng = np.random.default_rng(11)

    def draw(low, high, size):  # off the original's border, where resampling's clamped edges skew centroids
        return int(rng.integers(max(1, int(low)), min(size - 1, int(high))))

    inside = 0
    for k in range(10):
        box = (left, top, right, bottom) if k < 6 else (0, 0, width, height)  # mostly inside the box
        x, y = draw(box[0], box[2], width), draw(box[1], box[3], height)
        image = Image.new("L", (width, height))
        image.putpixel((x, y), 255)
        shown = np.asarray(processor.to_pil(processor(image))[0].convert("L"), dtype=np.float64)
        crop_h, crop_w = shown.shape
        u, v = (x + 0.5 - left) / (right - left) * crop_w, (y + 0.5 - top) / (bottom - top) * crop_h
        if 1 <= u <= crop_w - 1 and 1 <= v <= crop_h - 1:
            inside += 1
            rows, cols = np.indices(shown.shape) + 0.5
            centroid = (shown * cols).sum() / shown.sum(), (shown * rows).sum() / shown.sum()
            assert centroid == pytest.approx((u, v), abs=0.25), (x, y)
        elif min(abs(u), abs(u - crop_w), abs(v), abs(v - crop_h)) > 3:
            assert shown.max() <= 1, (x, y, u, v)
    assert inside >= 4


def test_crop_box_of_the_default_processor():
    # 400x300 resizes to 298x224 (the long edge floored, so x and y scale slightly differently)
    # and the crop starts (298 - 224) // 2 = 37 pixels in
    assert ImageProcessor().crop_box(400, 300) == pytest.approx((37 * 400 / 298, 0, 261 * 400 / 298, 300))
    # 30x20 resizes to 15x10; the 25x25 crop starts at floor(-10 / 2) = -5 and floor(-15 / 2) = -8
    assert ImageProcessor(size=10, crop_size=25).crop_box(30, 20) == (-10, -16, 40, 34)
    assert ImageProcessor().crop_box(224, 224) == (0, 0, 224, 224)


# --- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs_name_the_problem(tmp_path):
    processor = ImageProcessor()
    good = Image.new("RGB", (10, 10))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    cases = [
        ([], ValueError, "no images"),
        ([good, Image.new("RGB", (0, 10))], ValueError, r"images\[1\].*empty"),
        ([good, good, Image.new("L", (10, 0))], ValueError, r"images\[2\].*empty"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, r"images\[0\].*empty"),
        ([good, tmp_path / "missing.png"], FileNotFoundError, r"images\[1\].*missing\.png"),
        (str(tmp_path / "missing.png"), FileNotFoundError, "missing.png"),
        (tmp_path, FileNotFoundError, "no such image file"),
        ([good, not_an_image], ValueError, r"images\[1\].*notes\.png"),
        (torch.zeros(4, 8, 8), ValueError, r"\[B,3,H,W\]"),
        ([good, torch.zeros(2, 1, 8, 8)], ValueError, r"images\[1\].*\[B,3,H,W\]"),
        (torch.zeros(8, 8), ValueError, r"\[B,3,H,W\]"),
        (torch.zeros(0, 3, 8, 8), ValueError, r"\[B,3,H,W\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, r"float.*\[B,3,H,W\]"),
        ([good, 5], TypeError, r"images\[1\].*int"),
        ({"image": good}, TypeError, r"images\[0\].*dict"),
        (np.zeros((5, 5, 2), np.uint8), ValueError, r"images\[0\].*shape"),
        (np.zeros((2, 5, 5, 3), np.uint8), ValueError, r"images\[0\].*shape"),
        (np.full((5, 5, 3), 1.5), ValueError, r"\[0, 1\]"),
        (np.full((5, 5, 3), np.nan), ValueError, r"\[0, 1\]"),
        (np.full((5, 5, 3), 300), ValueError, "0..255"),
        (np.zeros((5, 5, 3), bool), TypeError, "dtype"),
        # a thin strip, small on disk, that resizing its short edge to 224 px would blow up to 5e9 pixels
        ([good, Image.new("RGB", (300_000, 3))], ValueError,
         r"images\[1\]: a 300000x3 image resized to 22400000x224 would hold more than twice "
         r"PIL.Image.MAX_IMAGE_PIXELS"),
    ]
    for images, error, message in cases:
        with pytest.raises(error, match=message):
            processor(images)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        processor.to_pil(torch.zeros(2, 4, 8, 8))
    with pytest.raises(TypeError, match="float"):
        processor.to_pil(torch.zeros(1, 3, 8, 8, dtype=torch.long))
