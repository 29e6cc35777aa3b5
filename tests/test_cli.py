"""The clipx command."""

import pytest
from PIL import Image

from clipx.assets import demo_image
from clipx.cli import main
from paths import ROOT


def _score_rows(printed: str) -> tuple[list[str], list[list[str]]]:
    lines = printed.strip().splitlines()
    return lines[0].split(), [[part.strip() for part in line.rsplit(None, 2)] for line in lines[1:]]


def test_score_prints_the_captions_in_the_order_given(tmp_path, capsys):
    """The demo by default; the rows as given, not sorted (the worse caption first here); a softmax over
    the captions, and the header says so."""
    import clipx

    captions = ["a yellow circle", "a blue star", "a red triangle"]  # the shapes scene shows a blue star
    assert main(["score", "demo:shapes-scene", *captions]) == 0
    header, rows = _score_rows(capsys.readouterr().out)
    assert header == ["caption", "logit", "softmax"]
    assert [r[0] for r in rows] == captions
    model = clipx.load("demo")
    logits = model(pixel_values=model.preprocess([demo_image("shapes-scene")]), **model.tokenize(captions)).logits_per_image[0]
    assert [float(r[1]) for r in rows] == pytest.approx(logits.tolist(), abs=1e-3)
    assert sorted(float(r[1]) for r in rows) != [float(r[1]) for r in rows]  # a sorted print would pass unnoticed
    assert sum(float(r[2]) for r in rows) == pytest.approx(1, abs=2e-3)


def test_score_of_a_sigmoid_model_says_sigmoid(capsys):
    """SigLIP scores each caption by its own sigmoid: the column says so, and its values need not sum to 1."""
    import torch

    assert main(["score", "demo:shapes-scene", "a blue star", "a blue star", "--model", "demo-siglip"]) == 0
    header, rows = _score_rows(capsys.readouterr().out)
    assert header == ["caption", "logit", "sigmoid"]
    logit, prob = float(rows[0][1]), float(rows[0][2])
    assert prob == pytest.approx(torch.sigmoid(torch.tensor(logit)).item(), abs=2e-3)
    assert rows[0] == rows[1] and sum(float(r[2]) for r in rows) != pytest.approx(1, abs=2e-3)


def test_bad_input_exits_2_with_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing.png"), "a cat", "--model", str(tiny_checkpoint[0])]) == 2
    assert "missing.png" in capsys.readouterr().err
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["score", str(image), "a cat", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_explain_writes_one_overlay_per_caption(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.open(demo_image("circle-and-square")).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(image), "a red circle", "a blue square", "--model", str(tiny_checkpoint[0]),
                 "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["00-a-red-circle.png", "01-a-blue-square.png"]
    first, second = (Image.open(p) for p in pngs)
    assert first.width >= 224 and first.height > 224  # the original image, titled, its colour bar beneath
    assert first.tobytes() != second.tobytes()
    printed = capsys.readouterr().out
    assert "a red circle" in printed and str(pngs[0]) in printed


def test_explain_pngs_are_labelled_and_bare_on_request(tiny_checkpoint, tmp_path):
    """A wide photo: the card holds the bare overlay with the crop the model saw outlined; outside the crop
    the bare overlay is the photo itself, since the model saw nothing there."""
    import numpy as np

    photo = Image.new("RGB", (90, 40), (90, 90, 90))
    photo.paste((200, 40, 40), (40, 10, 55, 30))
    photo.save(tmp_path / "wide.png")
    model = ["--model", str(tiny_checkpoint[0])]
    for kind in ("card", "bare"):
        assert main(["explain", str(tmp_path / "wide.png"), "a red square", *model, "--out", str(tmp_path / kind),
                     *(["--bare"] if kind == "bare" else [])]) == 0
    card, bare = (np.asarray(Image.open(tmp_path / kind / "00-a-red-square.png").convert("RGB"), np.int16)
                  for kind in ("card", "bare"))
    original = np.asarray(photo, np.int16)
    assert bare.shape == original.shape
    assert (bare[:, :24] == original[:, :24]).all() and (bare[:, 66:] == original[:, 66:]).all()  # the crop: x 25..65
    assert card.shape[0] > 40 and card.shape[1] >= 90
    top, left = next((y, x) for y in range(card.shape[0] - 39) for x in range(card.shape[1] - 89)
                     if (card[y:y + 40, x:x + 8] == original[:, :8]).all())  # where the photo sits in the card
    inside = card[top:top + 40, left:left + 90]
    assert (inside[5:35, 25] == 255).all()  # the crop's left edge, outlined in white
    assert (inside[2:38, 30:60] == bare[2:38, 30:60]).all() and (inside[:, :23] == original[:, :23]).all()


def test_explain_bad_input_exits_2(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the unknown hub id must fail at once, not wait on a network
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["explain", str(tmp_path / "nope.png"), "a cat", "--model", str(tiny_checkpoint[0])]) == 2
    assert "no such image file" in capsys.readouterr().err
    assert main(["explain", str(image), "a cat", "--model", "no-such-org/no-such-model", "--out", str(tmp_path)],) == 2
    assert "no-such-org/no-such-model" in capsys.readouterr().err
    assert main(["explain", str(image), "a cat", "--method", "magic", "--model", str(tiny_checkpoint[0])]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_methods_lists_every_method_and_the_models_default(capsys):
    import clipx

    assert main(["methods"]) == 0
    listed, default = capsys.readouterr().out.split("\n\n")
    assert [line.split()[0] for line in listed.splitlines()] == clipx.methods()
    assert "relevance              start_layer=0, start_layer_text=-1" in listed
    assert default.startswith("demo's default: relevance ")
    assert main(["methods", "--model", "demo-siglip"]) == 0
    assert "demo-siglip's default: integrated_gradients " in capsys.readouterr().out


def test_explain_on_a_demo_scene_tells_its_objects_apart(tmp_path):
    """The README's main job: two captions naming the two objects give different overlays."""
    out = tmp_path / "out"
    assert main(["explain", str(demo_image("shapes-scene")), "a blue star", "a yellow circle",
                 "--out", str(out), "--bare"]) == 0
    star, circle = (Image.open(p).convert("RGB") for p in sorted(out.glob("*.png")))
    assert star.size == circle.size == (224, 224)
    assert star.tobytes() != circle.tobytes()


# --- issue 10: photos turned by EXIF, checks before the model loads, errors as exit 2, memory ---------------

def _turned(upright: Image.Image, orientation: int) -> tuple[Image.Image, Image.Exif]:
    """The stored pixels and EXIF of a photo whose viewer turns it upright by `orientation`."""
    stored = upright.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, exif


@pytest.mark.parametrize("orientation", [6, 8])
def test_explain_paints_an_exif_turned_photo_upright(tiny_checkpoint, tmp_path, orientation):
    """A phone photo: its maps are computed on the upright image and must be painted onto it, so the
    overlays are those of the same photo stored upright: same size, same hot spot."""
    upright = Image.new("RGB", (48, 32), (20, 20, 20))
    upright.paste((230, 40, 40), (30, 4, 44, 14))  # an object in the top right corner
    upright.save(tmp_path / "upright.png")
    stored, exif = _turned(upright, orientation)
    stored.save(tmp_path / "phone.png", exif=exif)
    model = ["--model", str(tiny_checkpoint[0])]
    for name in ("upright", "phone"):
        assert main(["explain", str(tmp_path / f"{name}.png"), "a red square", "a dark room", *model,
                     "--out", str(tmp_path / name), "--bare"]) == 0
    for want, got in zip(sorted((tmp_path / "upright").glob("*.png")), sorted((tmp_path / "phone").glob("*.png"))):
        want, got = Image.open(want), Image.open(got)
        assert got.size == upright.size
        assert got.tobytes() == want.tobytes()


def _no_model_load(monkeypatch):
    """Makes loading a model fail the test: these errors must come before it."""
    import clipx.io.loading

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(clipx.io.loading, "load", load)


def test_explain_out_that_cannot_be_a_folder_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    note = tmp_path / "notes.txt"
    note.write_text("keep me")
    for out in (note, note / "out"):  # an existing file, and a folder under a file
        assert main(["explain", str(image), "a cat", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clipx explain: error: --out ") and str(note) in err and "is a file" in err
    assert note.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "notes.txt"]


def test_explain_out_where_nothing_can_be_written_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import tempfile

    _no_model_load(monkeypatch)
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)

    def refuse(*args, **kwargs):  # as root a chmod 000 folder is writable, so refuse here
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    out = tmp_path / "new" / "out"
    assert main(["explain", str(image), "a cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipx explain: error: --out {out}: cannot write in {tmp_path}")
    assert "Permission denied" in err and not (tmp_path / "new").exists()


def test_explain_checks_the_image_before_the_model_loads(tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["explain", str(broken), "a cat", "--out", str(tmp_path / "out")]) == 2
    assert f"cannot read an image from {broken}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_score_with_a_backend_that_cannot_run_exits_2(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    # the tiny model is float32 on the CPU, where no flash kernel runs
    assert main(["score", str(image), "a cat", "--model", str(tiny_checkpoint[0]), "--attention", "flash"]) == 2
    assert capsys.readouterr().err.startswith("clipx score: error: --attention flash: ")


def test_unexpected_errors_keep_their_traceback(tiny_checkpoint, tmp_path, monkeypatch):
    """A RuntimeError from inside torch is a bug to report, not a bad input to explain away."""
    import sys

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(sys.modules["clipx.explain"], "explain", broken)  # clipx.explain is also the function
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["explain", str(image), "a cat", "--model", str(tiny_checkpoint[0]), "--out", str(tmp_path / "out")])


def _garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"garbage" * 10)


def _garbage_config(folder):
    (folder / "config.json").write_text("{not json")


def _no_weights(folder):
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize("spoil, says", [(_garbage_weights, "cannot read weights from"),
                                         (_garbage_config, "config.json is not valid JSON"),
                                         (_no_weights, "no weights in the folder")])
@pytest.mark.parametrize("command", ["score", "explain"])
def test_checkpoint_errors_exit_2(tiny_checkpoint, tmp_path, capsys, command, spoil, says):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint[0], folder)
    spoil(folder)
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    out = ["--out", str(tmp_path / "out")] if command == "explain" else []
    assert main([command, str(image), "a cat", "--model", str(folder), *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipx {command}: error: ") and says in err
    assert not (tmp_path / "out").exists()


def test_a_300_character_model_id_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    name = "org/" + "x" * 300
    assert main(["score", str(image), "a cat", "--model", name]) == 2
    assert capsys.readouterr().err.startswith("clipx score: error: ")


MEMORY_SCRIPT = """
import resource, sys
from clipx.assets import demo_image
from clipx.cli import main

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

small, image, model, out = sys.argv[1:]
assert main(["explain", small, "a cat", "--model", model, "--out", out + "/warm"]) == 0  # imports, model
base = peak_mb()
assert main(["explain", image, *[f"caption {k}" for k in range(5)], "--model", model, "--out", out + "/big"]) == 0
print(peak_mb() - base)
"""


def test_explain_of_a_big_photo_holds_one_full_size_map_at_a_time(tiny_checkpoint, tmp_path):
    """5 captions on a 3000x3000 photo: a float32 map at full size is 36 MB. All five maps at once, or
    float64 copies of the image in the overlay, raise the peak by 13 to 18 such maps; one at a time, 5 or 6."""
    import subprocess
    import sys

    import numpy as np

    side = 3000
    picture = np.zeros((side, side, 3), np.uint8)
    picture[side // 4:side // 2, side // 8:side * 3 // 4] = (200, 30, 30)
    Image.fromarray(picture).save(tmp_path / "big.png", compress_level=1)
    Image.fromarray(picture).resize((64, 64)).save(tmp_path / "small.png")
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *(str(tmp_path / f) for f in ("small.png", "big.png")),
                           str(tiny_checkpoint[0]), str(tmp_path)], capture_output=True, text=True, check=True)
    growth_mb = float(done.stdout.strip().splitlines()[-1])
    map_mb = side * side * 4 / 2**20
    assert growth_mb < 8 * map_mb, f"the peak grew by {growth_mb:.0f} MB, {growth_mb / map_mb:.1f} full-size maps"
    assert len(list((tmp_path / "big").glob("*.png"))) == 5


def test_explain_asks_for_one_captions_full_size_map_at_a_time(tiny_checkpoint, tmp_path, monkeypatch):
    """Every full-size map the CLI asks for holds one caption, and is let go before the next is made."""
    import weakref

    from clipx.explain import Explanation

    made, real = [], Explanation.pixel_maps

    def pixel_maps(self, *args, **kwargs):
        assert all(ref() is None for ref in made), "an earlier full-size map is still held"
        maps = real(self, *args, **kwargs)
        assert all(m.shape[0] == 1 for m in maps), "a full-size map of several captions at once"
        made.extend(weakref.ref(m) for m in maps)
        return maps
    monkeypatch.setattr(Explanation, "pixel_maps", pixel_maps)
    image = tmp_path / "img.png"
    Image.new("RGB", (300, 200), (90, 20, 20)).save(image)
    captions = [f"caption {k}" for k in range(4)]
    assert main(["explain", str(image), *captions, "--model", str(tiny_checkpoint[0]), "--out", str(tmp_path / "o")]) == 0
    assert len(made) == len(captions)


def test_explain_of_a_folder_is_a_resumable_run_of_shards(tiny_checkpoint, tmp_path, capsys):
    import clipx

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (40, 30), (60 * k, 20, 20)).save(folder / f"{k}.png")
    (folder / "broken.jpg").write_bytes(b"no jpeg")
    out = tmp_path / "run"
    command = ["explain", str(folder), "a red square", "a blue circle", "--model", str(tiny_checkpoint[0]),
               "--out", str(out), "--shard-size", "2", "--method", "rollout"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"3 of 4 images explained into {out} with rollout (2 shards" in printed
    assert "failed: " in printed and "broken.jpg" in printed
    run = clipx.RunResult(out)
    assert run.stack("image").shape[:2] == (3, 2) and run.config["method"] == "rollout"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(command) == 0  # finished: nothing to redo
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*command[:-2], "--method", "attention"]) == 2
    assert "holds another run" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(tmp_path / "empty"), "a cat", "--model", str(tiny_checkpoint[0]), "--out", str(tmp_path / "o")]) == 2
    assert "holds no image files" in capsys.readouterr().err


def test_explain_runs_over_webdataset_shards_and_a_saved_hf_dataset(tiny_checkpoint, tmp_path, capsys):
    import io

    import datasets
    import webdataset

    import clipx

    model = ["--model", str(tiny_checkpoint[0])]
    images = [Image.new("RGB", (40, 30), (60 * k, 20, 20)) for k in range(3)]
    captions = ["a red square", "a blue circle", "a dark room"]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "png")
        encoded.append(buffer.getvalue())
    for k in range(2):
        with webdataset.TarWriter(str(tmp_path / f"shards-{k}.tar")) as writer:
            for n in range(k, 3, 2):
                writer.write({"__key__": f"s{n}", "png": encoded[n], "txt": captions[n]})
    assert main(["explain", str(tmp_path / "shards-{0..1}.tar"), *model, "--out", str(tmp_path / "wds")]) == 0
    assert "3 of 3 images explained" in capsys.readouterr().out
    run = clipx.RunResult(tmp_path / "wds")
    assert [r["captions"] for _, r, _ in run.results()] == [[captions[0]], [captions[2]], [captions[1]]]

    features = datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"picture": images, "text": captions}, features=features)
    datasets.DatasetDict(train=dataset, test=dataset.select([0])).save_to_disk(tmp_path / "saved")
    command = ["explain", "--hf-dataset", str(tmp_path / "saved"), *model, "--image-column", "picture",
               "--out", str(tmp_path / "hf")]
    assert main([*command, "--caption-column", "text"]) == 2
    assert "saved holds the splits train, test: pick one with --split" in capsys.readouterr().err
    assert main([*command, "--caption-column", "text", "--split", "train"]) == 0
    assert "3 of 3 images explained" in capsys.readouterr().out
    run = clipx.RunResult(tmp_path / "hf")
    assert [r["captions"] for _, r, _ in run.results()] == [[c] for c in captions]
    assert run.config["source"]["fingerprint"] == datasets.load_from_disk(tmp_path / "saved")["train"]._fingerprint
    assert main(["explain", "--hf-dataset", str(tmp_path / "saved"), "a red square", *model, "--split", "test",
                 "--image-column", "picture", "--out", str(tmp_path / "hf-fixed")]) == 0
    assert clipx.RunResult(tmp_path / "hf-fixed").stack("image").shape[:2] == (1, 1)

    image = tmp_path / "img.png"
    images[0].save(image)
    for bad, says in [(["explain", str(image), *model], "give one or more captions"),
                      (["explain", str(image), "a cat", "--split", "train", *model], "--split picks a split"),
                      (["explain", str(image), "a cat", "--caption-column", "txt", *model], "not one image"),
                      (["explain", str(tmp_path), *model, "--out", str(tmp_path / "o")], "no captions given")]:
        assert main(bad) == 2
        assert says in capsys.readouterr().err


# --- zero-shot classification and image search ------------------------------------------------------------

def _scenes(folder, n=12):
    from clipx import shapes

    folder.mkdir()
    for k in range(n):
        shapes.scene(80_000 + k, n_objects=1).image.save(folder / f"{k:02d}.png")
    return folder


def test_classify_prints_each_images_top_classes(tmp_path, capsys):
    from clipx import shapes

    images = _scenes(tmp_path / "imgs", n=2)
    paths = sorted(str(p) for p in images.glob("*.png"))
    truth = [shapes.describe(shapes.scene(80_000 + k, n_objects=1).objects[0]) for k in range(2)]
    classes = ",".join(shapes.class_names())
    assert main(["classify", *paths, "--classes", classes, "--templates", "shapes", "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "class", "logit", "softmax"] and len(lines) == 1 + 2 * 3
    best = [lines[1], lines[4]]
    assert [line.split()[0] for line in best] == paths
    assert [" ".join(line.split()[1:-2]) for line in best] == truth  # the demo gets these two right


def test_classify_bad_input_exits_2(tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["classify", str(image), "--classes", "cat,dog,cat"]) == 2
    assert "repeated: 'cat'" in capsys.readouterr().err
    assert main(["classify", str(image), "--classes", "cat", "--templates", "nowhere"]) == 2
    assert "neither openai, default, shapes nor a file" in capsys.readouterr().err
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\nno braces here\n")
    assert main(["classify", str(image), "--classes", "cat", "--templates", str(templates)]) == 2
    assert "'no braces here' has no '{}'" in capsys.readouterr().err


def test_index_then_search_with_overlays(tmp_path, capsys):
    images = _scenes(tmp_path / "imgs")
    idx, overlays = tmp_path / "idx", tmp_path / "overlays"
    assert main(["index", str(images), "--out", str(idx)]) == 0
    assert "12 images, 0 skipped (built)" in capsys.readouterr().out
    assert main(["index", str(images), "--out", str(idx)]) == 0  # again: nothing to embed
    assert "updated: 0 added, 0 changed, 0 removed" in capsys.readouterr().out
    assert main(["search", str(idx), "a red circle", "--k", "3", "--explain", str(overlays)]) == 0
    method, *lines = capsys.readouterr().out.strip().splitlines()
    assert method.startswith("relevance: start_layer=0, ")  # the demo's default, as it ran
    assert lines[0].split() == ["rank", "logit", "path", "overlay"] and len(lines) == 4
    written = sorted(overlays.glob("*.png"))
    assert [line.split()[-1] for line in lines[1:]] == [str(p) for p in written]
    assert all(Image.open(p).width >= 64 and Image.open(p).height > 64 for p in written)  # the scene, labelled


def test_search_with_faiss_prints_the_torch_hits(tmp_path, capsys):
    images = _scenes(tmp_path / "imgs", n=6)
    assert main(["index", str(images), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    printed = {}
    for backend in ("torch", "faiss"):
        assert main(["search", str(tmp_path / "idx"), "a red circle", "--k", "4", "--backend", backend]) == 0
        printed[backend] = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert [row[2] for row in printed["faiss"]] == [row[2] for row in printed["torch"]]
    assert [float(r[1]) for r in printed["faiss"][1:]] == pytest.approx([float(r[1]) for r in printed["torch"][1:]],
                                                                         abs=2e-3)


def test_index_and_search_bad_input_exit_2(tmp_path, capsys):
    images = _scenes(tmp_path / "imgs", n=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", str(empty), "--out", str(tmp_path / "idx")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert main(["index", str(images), "--out", str(tmp_path / "idx")]) == 0
    assert main(["index", str(empty), "--out", str(tmp_path / "idx")]) == 2
    assert "holds an index of" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx"), "a red circle", "--model", "demo-siglip"]) == 2
    assert "built with model demo" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "nothing"), "a red circle"]) == 2
    assert main(["search", str(tmp_path / "idx"), "a red circle", "--explain", str(tmp_path / "o"),
                 "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_demo_images_are_named_from_any_folder(tmp_path, monkeypatch, capsys):
    """demo:NAME is a shipped image wherever the command runs; an unknown name lists the shipped ones."""
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "demo:shapes-scene", "a blue star", "--out", "maps"]) == 0
    by_name = tmp_path / "by-path"
    assert main(["explain", str(demo_image("shapes-scene")), "a blue star", "--out", str(by_name)]) == 0
    assert Image.open(tmp_path / "maps" / "00-a-blue-star.png").tobytes() == \
        Image.open(by_name / "00-a-blue-star.png").tobytes()
    capsys.readouterr()
    assert main(["score", "demo:no-such-scene", "a cat", "--model", "demo"]) == 2
    err = capsys.readouterr().err
    assert "no demo image 'demo:no-such-scene'" in err and "demo:shapes-scene" in err


def test_version_names_the_distribution(capsys):
    import tomllib

    import clipx

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"{pyproject['project']['name']} {clipx.__version__}"


def test_lab_passes_jupyterlabs_own_arguments_through(monkeypatch):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv: calls.append(argv) or 0)
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "--allow-root", "--port", "8890"])
    assert exit_.value.code == 0
    assert calls[0][1:3] == ["-m", "jupyterlab"]
    assert calls[0][-3:] == ["--allow-root", "--port", "8890"]
    # the checkout's tutorials, unless the user names a folder of their own
    assert calls[0][3].startswith("--notebook-dir=") and calls[0][3].endswith("notebooks")
    with pytest.raises(SystemExit):
        main(["lab", "--notebook-dir=/tmp"])
    assert calls[1][3:] == ["--notebook-dir=/tmp"]


def test_other_commands_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["methods", "--allow-root"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --allow-root" in capsys.readouterr().err
