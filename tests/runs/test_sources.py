"""Dataset runs over a Hugging Face `datasets.Dataset` and over WebDataset tar shards (clipx.sources): one
result per sample equal to explaining its image directly, resume after a lost shard, a changed dataset or
shard refused naming what changed, samples grouped exactly as `webdataset.WebDataset` groups them, bad
samples failing alone; clipx importing without either package."""

import io
import os
import subprocess
import sys
import tarfile

import datasets
import pytest
import torch
import webdataset
from PIL import Image

import clipx
from clipx.demo import shapes
from clipx.runs import sources
from clipx.runs.explain_dataset import explain_dataset
from clipx.runs.runner import RunResult
from clipx.runs.sources import HuggingFaceDataset, WebDatasetShards, as_source

SEEDS = range(61_000, 61_005)
CAPTIONS = ["a red circle", "a blue square"]


def scene(seed: int) -> tuple[Image.Image, str]:
    sc = shapes.scene(seed=seed, n_objects=1)
    return sc.image, shapes.describe(sc.objects[0])


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "png")
    return buffer.getvalue()


def hf_dataset(seeds=SEEDS, broken: bool = True) -> datasets.Dataset:
    """Scenes with their captions; the last row's image bytes are no image at all."""
    pairs = [scene(s) for s in seeds]
    images = [{"bytes": png(image), "path": None} for image, _ in pairs]
    captions = [caption for _, caption in pairs]
    if broken:
        images.append({"bytes": b"not a png", "path": "broken.png"})
        captions.append("a green star")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "caption": captions}, features=features)


def assert_direct(demo, result: RunResult, expected: dict) -> None:
    """Each item's maps equal clipx.explain of its image against its captions; `expected`: item -> (image, captions)."""
    rows = {json_item(item): r for item, r, _ in result.results() if r is not None}
    assert rows.keys() == expected.keys()
    for item, (image, captions) in expected.items():
        direct = clipx.explain(demo, [image], captions)
        assert rows[item]["captions"] == captions
        torch.testing.assert_close(rows[item]["image"], direct.image[0].float(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(rows[item]["scores"], direct.scores[0].float(), rtol=1e-5, atol=1e-6)


def json_item(item):
    return tuple(item) if isinstance(item, list) else item


def same_results(a: RunResult, b: RunResult) -> None:
    rows_a, rows_b = list(a.results()), list(b.results())
    assert [i for i, _, _ in rows_a] == [i for i, _, _ in rows_b]
    for (_, ra, ea), (_, rb, eb) in zip(rows_a, rows_b):
        assert ea == eb and (ra is None) == (rb is None)
        if ra is not None:
            assert ra.keys() == rb.keys() and all(
                torch.equal(ra[k], rb[k]) if isinstance(ra[k], torch.Tensor) else ra[k] == rb[k] for k in ra)


# --- Hugging Face datasets ------------------------------------------------------------------------------

def test_a_dataset_run_explains_each_row_against_its_own_caption(demo, tmp_path):
    dataset = hf_dataset()
    result = explain_dataset(demo, dataset, tmp_path / "run", caption_column="caption", shard_size=2,
                             batch_size=2, progress=False)
    assert [item for item, _, _ in result.results()] == list(range(len(dataset)))  # one result per row
    errors = dict(result.errors)
    assert list(errors) == [5] and "row 5: cannot read an image from broken.png" in errors[5]
    assert_direct(demo, result, {k: (image, [caption]) for k, (image, caption) in enumerate(map(scene, SEEDS))})
    assert result.config["source"] == {"kind": "datasets", "fingerprint": dataset._fingerprint, "split": None,
                                       "num_rows": 6, "image_column": "image", "caption_column": "caption"}
    assert result.config["captions"] == "each sample's own (caption)"


def test_a_dataset_run_resumes_to_the_same_results_and_refuses_a_changed_dataset(demo, tmp_path):
    dataset = hf_dataset()
    whole = explain_dataset(demo, dataset, tmp_path / "run", CAPTIONS, shard_size=2, progress=False)
    first = {p.name: p.read_bytes() for p in (tmp_path / "run").glob("shard-*")}
    (tmp_path / "run" / "shard-00001.safetensors").unlink()
    resumed = explain_dataset(demo, dataset, tmp_path / "run", CAPTIONS, shard_size=2, progress=False)
    same_results(resumed, whole)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").glob("shard-*")} == first
    assert_direct(demo, resumed, {k: (image, CAPTIONS) for k, (image, _) in enumerate(map(scene, SEEDS))})
    other = hf_dataset(seeds=[*SEEDS[:-1], 61_999])  # as many rows, one image changed
    assert other._fingerprint != dataset._fingerprint
    with pytest.raises(ValueError, match=f"its config.source.fingerprint is '{dataset._fingerprint}', "
                                         f"this run's '{other._fingerprint}'"):
        explain_dataset(demo, other, tmp_path / "run", CAPTIONS, shard_size=2, progress=False)


def test_a_caption_function_is_given_the_row(demo, tmp_path):
    rows = []

    def captions(row):
        rows.append(row)
        return [row["caption"], "a blue square"]

    dataset = hf_dataset(SEEDS[:2], broken=False)
    result = explain_dataset(demo, dataset, tmp_path / "run", captions, progress=False)
    assert [row["caption"] for row in rows] == dataset["caption"] and rows[0]["image"]["bytes"] == png(scene(SEEDS[0])[0])
    assert_direct(demo, result, {k: (image, [caption, "a blue square"])
                                 for k, (image, caption) in enumerate(map(scene, SEEDS[:2]))})


def test_an_image_column_of_paths_is_read_as_files(demo, tmp_path):
    paths = []
    for seed in SEEDS[:2]:
        paths.append(str(tmp_path / f"{seed}.png"))
        scene(seed)[0].save(paths[-1])
    dataset = datasets.Dataset.from_dict({"image": [*paths, str(tmp_path / "gone.png")]})
    result = explain_dataset(demo, dataset, tmp_path / "run", CAPTIONS, progress=False)
    assert [(item, error.split(":")[0]) for item, error in result.errors] == [(2, "FileNotFoundError")]
    assert_direct(demo, result, {k: (Image.open(path), CAPTIONS) for k, path in enumerate(paths)})


def test_bad_datasets_are_refused_naming_the_problem(tmp_path):
    dataset = hf_dataset(SEEDS[:1], broken=False)
    with pytest.raises(TypeError, match=r"a DatasetDict of the splits \['train', 'test'\]: pass one of them"):
        as_source(datasets.DatasetDict(train=dataset, test=dataset))
    with pytest.raises(TypeError, match="expected a datasets.Dataset .* got IterableDataset"):
        as_source(dataset.to_iterable_dataset())
    with pytest.raises(ValueError, match=r"caption_column='text': .* its columns are \['image', 'caption'\]"):
        as_source(dataset, caption_column="text")
    with pytest.raises(ValueError, match="image_column='label' is a .*int64.*, neither a datasets.Image"):
        HuggingFaceDataset(dataset.add_column("label", [7]), image_column="label")
    with pytest.raises(ValueError, match="no captions given, and the images have none of their own"):
        explain_dataset(None, dataset, tmp_path / "run", progress=False)


# --- WebDataset shards ------------------------------------------------------------------------------------

# (key, members) per shard: keys with dots in their folders, a corrupt image, a sample without a caption,
# upper-case extensions, and a metadata member WebDataset skips
SHARDS = [
    [("scenes.v1/a.b/s0", {"png": 0, "txt": 0}), ("scenes.v1/s1", {"jpg": 1, "txt": 1, "json": b"{}"}),
     ("s2", {"PNG": 2, "TXT": 2})],
    [("more.x/s3", {"png": 3, "txt": 3}), ("more.x/broken", {"jpg": b"not a jpeg", "txt": "a green star"}),
     ("more.x/quiet", {"png": 4})],
]


def write_shards(folder) -> list[str]:
    folder.mkdir()
    paths = []
    for k, samples in enumerate(SHARDS):
        paths.append(str(folder / f"shards-{k:03d}.tar"))
        with webdataset.TarWriter(paths[-1]) as writer:
            for key, members in samples:
                sample = {"__key__": key}
                for ext, value in members.items():
                    if isinstance(value, int):  # a scene: its image, or its caption with a trailing newline
                        image, caption = scene(SEEDS[value])
                        value = (png(image) if ext.lower() == "png" else jpeg(image)) if ext.lower() != "txt" \
                            else caption + "\n"
                    sample[ext] = value
                writer.write(sample)
        with tarfile.open(paths[-1], "a") as tar:  # metadata members, which WebDataset skips
            info = tarfile.TarInfo("__meta__/info.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    return paths


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "jpeg", quality=95)
    return buffer.getvalue()


def test_shards_are_grouped_as_webdataset_groups_them(tmp_path):
    paths = write_shards(tmp_path / "shards")
    ours = WebDatasetShards(str(tmp_path / "shards" / "shards-{000..001}.tar"))
    theirs = list(webdataset.WebDataset(paths, shardshuffle=False, empty_check=False))
    assert ours.items == [[s["__url__"], s["__key__"]] for s in theirs]
    assert [key for _, key in ours.items] == [key for shard in SHARDS for key, _ in shard]
    for item, sample in zip(ours.items, theirs):
        if item[1] != "more.x/broken":
            loaded = ours.load(item)
            assert loaded.data == {k: v for k, v in sample.items() if k != "__local_path__"}
            assert loaded.captions == (None if "txt" not in sample else [sample["txt"].decode().strip()])
    assert ours.describe()["shards"] == {p: {"size": os.stat(p).st_size, "mtime_ns": os.stat(p).st_mtime_ns}
                                         for p in paths}


def test_a_sample_is_read_by_member_offset_not_by_streaming_its_shard(tmp_path, monkeypatch):
    paths = write_shards(tmp_path / "shards")
    ours, read = WebDatasetShards(paths), []

    class Counting(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(sources, "open", lambda path, mode: Counting(path, mode), raising=False)
    sample = ours.load([paths[0], "s2"]).data  # the shard's last sample
    assert sum(read) == sum(len(v) for k, v in sample.items() if not k.startswith("__")) < os.path.getsize(paths[0]) / 4


def test_a_shard_run_explains_each_sample_against_its_txt_and_fails_bad_samples_alone(demo, tmp_path):
    paths = write_shards(tmp_path / "shards")
    result = explain_dataset(demo, str(tmp_path / "shards" / "shards-{000..001}.tar"), tmp_path / "run",
                             shard_size=4, batch_size=2, progress=False)
    errors = {item[1]: error for item, error in result.errors}
    assert errors.keys() == {"more.x/broken", "more.x/quiet"}
    assert errors["more.x/broken"] == f"ValueError: cannot read an image from {paths[1]}:more.x/broken.jpg: " \
                                      f"cannot identify image file {paths[1]}:more.x/broken.jpg"
    assert "has no caption of its own (txt)" in errors["more.x/quiet"]
    decoded = {key: Image.open(io.BytesIO(data)).convert("RGB") for key, data in (
        ("scenes.v1/a.b/s0", png(scene(SEEDS[0])[0])), ("scenes.v1/s1", jpeg(scene(SEEDS[1])[0])),
        ("s2", png(scene(SEEDS[2])[0])), ("more.x/s3", png(scene(SEEDS[3])[0])))}
    shard_of = {key: paths[k] for k, shard in enumerate(SHARDS) for key, _ in shard}
    assert_direct(demo, result, {(shard_of[key], key): (image, [scene(SEEDS[n])[1]])
                                 for n, (key, image) in enumerate(decoded.items())})
    assert len(list(result.results())) == 6


def test_a_changed_shard_is_refused_naming_it(demo, tmp_path):
    paths = write_shards(tmp_path / "shards")
    explain_dataset(demo, paths, tmp_path / "run", CAPTIONS, progress=False)
    os.utime(paths[1], ns=(1, 1))
    with pytest.raises(ValueError, match=rf"its config.source.shards\['{paths[1]}'\].mtime_ns is \d+, this run's 1;"):
        explain_dataset(demo, paths, tmp_path / "run", CAPTIONS, progress=False)


def test_bad_shards_are_refused_naming_them(tmp_path):
    (tmp_path / "compressed.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(ValueError, match="compressed.tar.gz is not a readable uncompressed tar"):
        as_source(str(tmp_path / "compressed.tar.gz"))
    with pytest.raises(FileNotFoundError, match="no such WebDataset shard: .*missing.tar"):
        as_source([str(tmp_path / "missing.tar")])
    apart = tmp_path / "apart.tar"
    with tarfile.open(apart, "w") as tar:
        for name in ("a.png", "b.png", "a.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="apart.tar: the members of sample 'a' are not adjacent"):
        as_source(str(apart))
    with pytest.raises(ValueError, match="mixes WebDataset shards .*apart.tar.* and image files"):
        as_source([str(apart), str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="listed twice"):
        as_source([str(tmp_path / "shards-{0..1}.tar"), str(tmp_path / "shards-1.tar")])


# --- optional packages ------------------------------------------------------------------------------------

WITHOUT_EXTRAS = """
import sys
for name in ("datasets", "webdataset", "braceexpand", "faiss"):
    sys.modules[name] = None  # as if not installed: importing them fails
import torch
import clipx
from clipx.apps.index import faiss_index
from clipx.runs.sources import HuggingFaceDataset, as_source
for needs in (lambda: HuggingFaceDataset(None), lambda: as_source("s-{0..1}.tar"), lambda: faiss_index(torch.ones(1, 4))):
    try:
        needs()
    except ImportError as e:
        print(e)
"""


def test_clipx_imports_without_datasets_webdataset_and_faiss_and_names_the_extra_they_need():
    out = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "A Hugging Face dataset as a source needs the datasets package: pip install 'clipx-lens[datasets]'",
        "The shard pattern s-{0..1}.tar needs the braceexpand package: pip install 'clipx-lens[webdataset]'",
        "Search with backend='faiss' needs the faiss package: pip install 'clipx-lens[faiss]'"]
