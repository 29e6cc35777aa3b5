"""clipx.segmentation: the benchmark files read back exactly as written in their real layouts (a MATLAB
v7.3 gtsegs_ijcv.mat written with h5py, a VOC folder of JPEGs and palette PNGs), tampered files refused
by name, the papers' scores on hand-computed cases, and benchmarks/segmentation_eval.py end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import clipx
from clipx import segmentation, shapes
from clipx.eval.segmentation import SegmentationScores, aggregate, segmentation_scores
from paths import ROOT

MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


# --- the files, written as their makers wrote them --------------------------------------------------

def one_object_scenes(n: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image HWC uint8, mask, caption) of one-object scenes padded with grey to sizes where H != W, so
    that a transposed image or mask cannot pass for the right one."""
    out = []
    for k in range(n):
        scene = shapes.scene(seed=500 + k, n_objects=1, size=96)
        pad = ((0, 24), (0, 16 * k)) if k % 2 == 0 else ((0, 16 * k), (0, 24))
        image = np.pad(np.array(scene.image), (*pad, (0, 0)), constant_values=128)
        out.append((image, np.pad(scene.objects[0].mask, pad), shapes.describe(scene.objects[0])))
    return out


def write_mat(path: Path, images: list[np.ndarray], masks: list[np.ndarray], gt_count: int | None = None,
              mask_of=lambda m: m.T.astype(np.uint8)) -> None:
    """gtsegs_ijcv.mat's layout as MATLAB v7.3 saves it: a 512-byte user block with the MAT header, the
    arrays transposed (an H x W x 3 image is [3, W, H]), `value/img` an [n, 1] cell of references to the
    images, `value/gt` an [n, 1] cell of references to 1x1 cells that reference the masks."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        image_refs, gt_refs = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            image_refs.append(refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0)).ref)
            mask_ref = refs.create_dataset(f"mask{i}", data=mask_of(mask)).ref
            cell = refs.create_dataset(f"cell{i}", data=np.array([[mask_ref]], dtype=h5py.ref_dtype))
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
            gt_refs.append(cell.ref)
        value = f.create_group("value")
        value.attrs["MATLAB_class"] = np.bytes_("struct")
        value.create_dataset("img", data=np.array(image_refs, dtype=h5py.ref_dtype).reshape(-1, 1))
        value.create_dataset("gt", data=np.array(gt_refs[:gt_count], dtype=h5py.ref_dtype).reshape(-1, 1))
    with open(path, "r+b") as fh:
        fh.write(MATLAB_HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture(scope="module")
def imagenet_seg(tmp_path_factory) -> tuple[Path, list]:
    scenes = one_object_scenes(4)
    path = tmp_path_factory.mktemp("imagenet-seg") / "gtsegs_ijcv.mat"
    write_mat(path, [s[0] for s in scenes], [s[1] for s in scenes])
    return path, scenes


VOC_PALETTE = [v for k in range(256) for v in ((k & 1) * 128, (k >> 1 & 1) * 128, (k >> 2 & 1) * 128)]


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels next to the mask (4-neighbours) but not in it: where VOC draws its void border."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def write_voc(root: Path, n: int = 3) -> tuple[list[str], list[np.ndarray], list[str]]:
    """A VOC2012 folder of two-object scenes (padded to H != W): each object's pixels carry a class id, a
    void (255) outline around it; the last image's JPEG carries an EXIF rotation, which the mask ignores.
    Returns (ids, labels, names): names is a 20-line class list whose id k names scene objects as the demo
    model's captions do, for the end-to-end run."""
    used = []
    scenes = [shapes.scene(seed=700 + k, n_objects=2, size=96) for k in range(n)]
    for scene in scenes:
        used += [shapes.describe(o) for o in scene.objects if shapes.describe(o) not in used]
    names = used + [c for c in shapes.class_names() if c not in used][:len(segmentation.VOC_CLASSES) - len(used)]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    ids, all_labels = [], []
    for k, scene in enumerate(scenes):
        image_id = f"2007_{k:06d}"
        pad = ((0, 8), (0, 24))
        labels = np.zeros((96, 96), dtype=np.uint8)
        for o in scene.objects:
            labels[outline(o.mask) & (labels == 0)] = 255
            labels[o.mask] = names.index(shapes.describe(o)) + 1
        labels = np.pad(labels, pad)
        image = np.pad(np.array(scene.image), (*pad, (0, 0)), constant_values=128)
        png = Image.fromarray(labels, "P")
        png.putpalette(VOC_PALETTE)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
        exif = Image.Exif()
        if k == n - 1:
            exif[0x0112] = 6  # "rotate 90 degrees to display": the stored pixels stay the annotated ones
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95, exif=exif)
        ids.append(image_id)
        all_labels.append(labels)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(i + "\n" for i in ids))
    return ids, all_labels, names


# --- ImageNet-segmentation ---------------------------------------------------------------------------

def test_imagenet_reader_gives_back_the_images_and_masks_written(imagenet_seg):
    path, scenes = imagenet_seg
    data = segmentation.read_imagenet_segmentation(path)
    assert len(data) == 4 and "4 images" in repr(data)
    for i, (image, mask, _) in enumerate(scenes):
        got_image, got_mask = data[i]
        assert got_image.mode == "RGB" and got_image.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.array(got_image), image)
        assert got_mask.dtype == bool
        np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_array_equal(data[-1][1], scenes[-1][1])
    with pytest.raises(IndexError, match="out of range for 4 images"):
        data[4]


def test_tampered_mat_files_are_refused_by_name(tmp_path, imagenet_seg):
    scenes = imagenet_seg[1]
    images, masks = [s[0] for s in scenes], [s[1] for s in scenes]

    def written(name: str, **options) -> Path:
        path = tmp_path / name
        write_mat(path, images, masks, **options)
        return path

    not_hdf5 = tmp_path / "old.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(ValueError, match=r"old\.mat is not an HDF5 file"):
        segmentation.read_imagenet_segmentation(not_hdf5)
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        segmentation.read_imagenet_segmentation(tmp_path / "missing.mat")
    with pytest.raises(ValueError, match=r"short\.mat: value/img holds 4 images but value/gt 3 masks"):
        segmentation.read_imagenet_segmentation(written("short.mat", gt_count=3))
    no_gt = written("no-gt.mat")
    with h5py.File(no_gt, "a") as f:
        del f["value/gt"]
    with pytest.raises(ValueError, match=r"no-gt\.mat has no dataset value/gt"):
        segmentation.read_imagenet_segmentation(no_gt)
    plain = written("plain.mat")
    with h5py.File(plain, "a") as f:
        del f["value/img"]
        f["value/img"] = np.zeros((4, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"plain\.mat: value/img should be an \[n, 1\] array of object references"):
        segmentation.read_imagenet_segmentation(plain)
    # masks saved untransposed, or as 0/255: refused when read, naming the image
    untransposed = written("untransposed.mat", mask_of=lambda m: m.astype(np.uint8))
    with pytest.raises(ValueError, match=r"image 0: its mask has shape \(H, W\) = \(96, 120\) but the image \(120"):
        segmentation.read_imagenet_segmentation(untransposed)[0]
    with pytest.raises(ValueError, match=r"image 2: the mask should hold 0 and 1 only"):
        segmentation.read_imagenet_segmentation(written("scaled.mat", mask_of=lambda m: m.T.astype(np.uint8) * 255))[2]


def test_missing_h5py_names_the_package(monkeypatch, imagenet_seg, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)  # what an environment without h5py imports
    with pytest.raises(ImportError, match=r"needs the h5py package: pip install .clipx-lens\[segmentation\]."):
        segmentation.read_imagenet_segmentation(imagenet_seg[0])
    write_voc(tmp_path)
    assert clipx.segmentation.read_voc_segmentation(tmp_path)[0].classes  # VOC needs no h5py


# --- VOC -------------------------------------------------------------------------------------------

def test_voc_reader_gives_back_the_images_and_class_masks_written(tmp_path):
    ids, labels, _ = write_voc(tmp_path)
    data = segmentation.read_voc_segmentation(tmp_path)
    assert len(data) == 3 and data.ids == ids
    for i, image_id in enumerate(ids):
        item = data[i]
        stored = np.array(Image.open(tmp_path / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        assert item.id == image_id and item.image.size == (120, 104)  # the EXIF rotation is not applied
        np.testing.assert_array_equal(np.array(item.image), stored)
        np.testing.assert_array_equal(item.labels, labels[i])
        present = sorted(set(np.unique(labels[i]).tolist()) - {0, 255})
        assert item.classes == [segmentation.VOC_CLASSES[k - 1] for k in present]
        for k in present:
            np.testing.assert_array_equal(item.mask(segmentation.VOC_CLASSES[k - 1]), labels[i] == k)
        np.testing.assert_array_equal(item.void, labels[i] == 255)
        assert item.void.any()
    with pytest.raises(ValueError, match="not a VOC class"):
        data[0].mask("cat-dog")
    with pytest.raises(IndexError, match="out of range for 3 images in the val split"):
        data[3]


def test_tampered_voc_folders_are_refused_by_name(tmp_path):
    ids, labels, _ = write_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no split file .*train\.txt: root should be the VOC2012 folder"):
        segmentation.read_voc_segmentation(tmp_path, "train")
    png = tmp_path / "SegmentationClass" / f"{ids[0]}.png"
    Image.fromarray(labels[0]).convert("RGB").save(png)
    with pytest.raises(ValueError, match=f"{ids[0]}.png is a RGB image"):
        segmentation.read_voc_segmentation(tmp_path)[0]
    bad = labels[1].copy()
    bad[0, 0] = 42
    Image.fromarray(bad, "L").save(tmp_path / "SegmentationClass" / f"{ids[1]}.png")
    with pytest.raises(ValueError, match=r"holds class ids \[42\]"):
        segmentation.read_voc_segmentation(tmp_path)[1]
    Image.fromarray(labels[2][:-1], "L").save(tmp_path / "SegmentationClass" / f"{ids[2]}.png")
    with pytest.raises(ValueError, match=f"{ids[2]}.jpg is 120x104 but its mask"):
        segmentation.read_voc_segmentation(tmp_path)[2]
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("../../etc/passwd\n")
    with pytest.raises(ValueError, match="lines should be image ids"):
        segmentation.read_voc_segmentation(tmp_path)


# --- scores ----------------------------------------------------------------------------------------

MASK = np.array([[1, 0], [1, 0]], dtype=bool)
MAP = torch.tensor([[4.0, 3.0], [2.0, 0.0]])


def test_scores_of_a_hand_computed_map():
    # normalised: 1, .75, .5, 0; mean .5625: foreground the top row. Pooled ranking (map vs mask, 1 - map vs
    # background): 1 (2 positives), .75 (negative), .5 (positive, negative), .25 (positive), 0 (negatives)
    s = segmentation_scores(MAP, MASK)
    assert (s.correct, s.labeled, s.intersection, s.union) == (2, 4, (1, 1), (3, 3))
    assert s.ap == pytest.approx(2 / 4 * 1 + 1 / 4 * 3 / 5 + 1 / 4 * 4 / 6)


def test_perfect_inverted_and_constant_maps():
    perfect = segmentation_scores(MASK.astype(float), MASK)
    assert (perfect.correct, perfect.intersection, perfect.union, perfect.ap) == (4, (2, 2), (2, 2), 1.0)
    assert aggregate([perfect]) == {"pixel accuracy": 1.0, "mIoU": 1.0, "mAP": 1.0}
    inverted = segmentation_scores(1 - MASK.astype(float), MASK)
    # every negative of the pooled ranking above every positive, which then tie: AP = 4 / 8
    assert (inverted.correct, inverted.intersection, inverted.ap) == (0, (0, 0), 0.5)
    constant = segmentation_scores(torch.full((2, 2), 3.0), MASK)  # ranks nothing: all background, all tied
    assert (constant.correct, constant.intersection, constant.union, constant.ap) == (2, (2, 0), (4, 2), 0.5)


def test_map_is_upsampled_to_the_mask():
    """Bilinearly, cell centre on cell centre, as the papers' `interpolate(..., mode="bilinear")`."""
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True
    low = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    s = segmentation_scores(low, mask)
    full = torch.nn.functional.interpolate(low[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    assert s == segmentation_scores(full, mask) and s.labeled == 64 and s.correct > 56
    with pytest.raises(ValueError, match="different aspect ratios"):
        segmentation_scores(torch.rand(2, 3), mask)


def test_ignored_pixels_count_nowhere():
    # a third column of extreme values, ignored: neither normalisation, threshold, counts nor AP see it
    saliency = torch.cat([MAP, torch.tensor([[100.0], [-100.0]])], 1)
    mask = np.concatenate([MASK, [[True], [False]]], 1)
    ignore = np.zeros((2, 3), dtype=bool)
    ignore[:, 2] = True
    assert segmentation_scores(saliency, mask, ignore) == segmentation_scores(MAP, MASK)
    assert segmentation_scores(saliency, mask).labeled == 6
    with pytest.raises(ValueError, match="every pixel is ignored"):
        segmentation_scores(MAP, MASK, np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_scores(MAP, MASK, ignore)
    with pytest.raises(ValueError, match="mask must be boolean"):
        segmentation_scores(MAP, MASK * 3)
    with pytest.raises(ValueError, match="NaN"):
        segmentation_scores(torch.full((2, 2), float("nan")), MASK)


def test_aggregate_totals_over_the_dataset():
    perfect = segmentation_scores(MASK.astype(float), MASK)
    partial = segmentation_scores(MAP, MASK)
    got = aggregate([perfect, partial])
    # totals, not means of per-image figures: background 3 / 5, foreground 3 / 5 (IoUs per image: 1 and 1/3)
    assert got["pixel accuracy"] == 6 / 8
    assert got["mIoU"] == pytest.approx((3 / 5 + 3 / 5) / 2)
    assert got["mAP"] == pytest.approx((1 + partial.ap) / 2)
    # no foreground in the mask nor the (constant) map: foreground has no union, and no IoU to average
    empty = segmentation_scores(torch.ones(2, 2), np.zeros((2, 2), dtype=bool))
    assert empty.union == (4, 0) and aggregate([empty])["mIoU"] == 1.0
    assert SegmentationScores.from_json(partial.to_json()) == partial
    with pytest.raises(ValueError, match="no scores"):
        aggregate([])


# --- the benchmark ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(request):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its sibling import (scoring.py), as `python benchmarks/...` has
    request.addfinalizer(lambda: sys.path.remove(str(ROOT / "benchmarks")))
    spec = importlib.util.spec_from_file_location("segmentation_eval", ROOT / "benchmarks" / "segmentation_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


METHODS = ["relevance (all layers)", "legrad"]


def test_benchmark_on_the_synthetic_imagenet_file(bench, imagenet_seg, tmp_path, capsys):
    args = ["imagenet", "--mat", str(imagenet_seg[0]), "--model", "demo", "--methods", *METHODS,
            "--classes", "shapes", "--templates", "shapes", "--out", str(tmp_path / "run"), "--device", "cpu"]
    results = bench.main(args)
    table = capsys.readouterr().out
    print(table)  # the figures README quotes
    assert "imagenet: 4 images" in table and "| relevance (all layers) |" in table and "| centre prior |" in table
    assert set(results) == {*METHODS, "random map", "centre prior"}
    for row in results.values():
        assert set(row) == {"pixel accuracy", "mIoU", "mAP"} and all(0 <= v <= 1 for v in row.values())
    for method in METHODS:  # one object on a plain background: the demo's maps beat the floor
        assert results[method]["mIoU"] > results["random map"]["mIoU"]
        assert results[method]["mAP"] > results["random map"]["mAP"]
    assert bench.main(args) == results  # resumed from the run folder: the same figures


def test_benchmark_on_the_synthetic_voc_folder(bench, tmp_path, capsys):
    _, _, names = write_voc(tmp_path / "VOC2012")
    (tmp_path / "names.txt").write_text("\n".join(names))
    results = bench.main(["voc", "--root", str(tmp_path / "VOC2012"), "--model", "demo", "--methods", *METHODS,
                          "--classes", str(tmp_path / "names.txt"), "--templates", "{}", "--device", "cpu"])
    table = capsys.readouterr().out
    print(table)
    assert "voc: 6 (image, class present) pairs" in table
    assert results["relevance (all layers)"]["mAP"] > results["random map"]["mAP"]
    (tmp_path / "short.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="VOC needs 20 names"):
        bench.class_names(str(tmp_path / "short.txt"), "voc")
