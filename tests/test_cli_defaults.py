"""The clipx command's defaults and options: the demo everywhere, defaults in --help, every method option
through --opt, the model's own method by default, one PNG per image and caption for a folder, and warnings
that speak of the user's input."""

import subprocess
import sys

import pytest
from PIL import Image

import clipx
from clipx.cli import _item_name, main, parser

# what each command's --help must show (flattened: argparse wraps lines wherever it likes)
HELP_DEFAULTS = {
    "score": ["--model MODEL", "(default: demo)", "(default: sdpa)"],
    "explain": ["(default: demo)", "(default: 256)", "(default: 8)", "(default clipx-out)", "(default clipx-run)",
                "default: the model's own"],
    "classify": ["(default: demo)", "(default: 5)"],
    "index": ["(default: demo)", "(default: 64)"],
    "search": ["(default: 10)", "(default: auto)", "demo unless the index was built with another"],
    "methods": ["(default: demo)"],
}


def _no_model_load(monkeypatch):
    import clipx.io.loading

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(clipx.io.loading, "load", load)


@pytest.mark.parametrize("command", list(HELP_DEFAULTS))
def test_help_shows_the_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for default in HELP_DEFAULTS[command]:
        assert default in shown, default
    assert "(default: None)" not in shown and "(default: False)" not in shown and "(default: [])" not in shown


def test_every_command_that_loads_a_model_defaults_to_the_demo():
    commands = parser()._subparsers._group_actions[0].choices
    assert {name: commands[name].get_default("model") for name in ("score", "explain", "classify", "index", "methods")} \
        == dict.fromkeys(("score", "explain", "classify", "index", "methods"), "demo")
    assert commands["search"].get_default("model") is None  # the model the index names


# --- the method and its options ---------------------------------------------------------------------------

def _printed_explanation(capsys) -> tuple[str, list[str]]:
    lines = capsys.readouterr().out.strip().splitlines()
    return lines[0], lines[1:]


def test_explain_runs_the_models_own_method_by_default(tmp_path, capsys):
    """relevance through all layers on the CLIP demo, integrated gradients on SigLIP's: the first line says
    which, with every option it ran with, as the Explanation recorded them."""
    scene = "demo:yellow-diamond-orange-triangle-blue-star"
    assert main(["explain", scene, "a yellow diamond", "--out", str(tmp_path / "clip")]) == 0
    method, rows = _printed_explanation(capsys)
    assert method == "relevance: start_layer=0, start_layer_text=-1, exclude_high_norm=None"
    assert rows[0].split() == ["caption", "logit", "overlay"] and rows[1].startswith("a yellow diamond")
    assert main(["explain", scene, "a yellow diamond", "--model", "demo-siglip", "--out", str(tmp_path / "siglip")]) == 0
    method, _ = _printed_explanation(capsys)
    assert method.startswith("integrated_gradients: n_steps=32, ")


def test_explain_takes_every_method_option(tmp_path, capsys):
    """--opt NAME=VALUE, repeatable, values as Python literals (a bare word a string): the overlay is the one
    those options give, and the printed options are the ones that ran (bare overlays: a card's title names
    the options, so it differs wherever they do)."""
    scene = "demo:yellow-diamond-orange-triangle-blue-star"
    overlays = {}
    for name, extra in {"default": [], "last": ["--opt", "start_layer=-1"],
                        "both": ["--opt", "start_layer=-1", "--opt", "start_layer_text = 0"]}.items():
        assert main(["explain", scene, "a yellow diamond", *extra, "--bare", "--out", str(tmp_path / name)]) == 0
        overlays[name] = Image.open(tmp_path / name / "00-a-yellow-diamond.png").tobytes()
        method, _ = _printed_explanation(capsys)
        overlays[name + " options"] = method
    assert overlays["last options"] == "relevance: start_layer=-1, start_layer_text=-1, exclude_high_norm=None"
    assert overlays["both options"] == "relevance: start_layer=-1, start_layer_text=0, exclude_high_norm=None"
    assert overlays["last"] != overlays["default"]
    assert overlays["both"] == overlays["last"]  # the text side's option leaves the image map alone

    assert main(["explain", scene, "a blue star", "--method", "similarity", "--opt", "variant=maskclip",
                 "--out", str(tmp_path / "maskclip")]) == 0
    assert _printed_explanation(capsys)[0] == "similarity: variant='maskclip'"
    assert main(["explain", scene, "a blue star", "--method", "occlusion", "--opt", "window=(2, 2)",
                 "--opt", "baseline='blur'", "--out", str(tmp_path / "occlusion")]) == 0
    assert _printed_explanation(capsys)[0].startswith("occlusion: window=(2, 2), stride=1, baseline='blur', ")


@pytest.mark.parametrize("opts, says", [
    (["start_laye=1"], "--opt start_laye=1: relevance has no option 'start_laye'; relevance's options are: "
                       "start_layer=0, start_layer_text=-1, exclude_high_norm=None"),
    (["start_layer"], "--opt start_layer: write an option as NAME=VALUE"),
    (["start_layer=[0"], "--opt start_layer=[0: '[0' is not a Python literal"),
    (["start_layer=0", "start_layer=1"], "--opt start_layer=1: start_layer is given twice"),
])
def test_a_bad_option_fails_before_the_model_loads(opts, says, tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    command = ["explain", "demo:shapes-scene", "a blue star", "--method", "relevance", "--out", str(tmp_path / "o")]
    assert main([*command, *(arg for opt in opts for arg in ("--opt", opt))]) == 2
    assert capsys.readouterr().err.startswith(f"clipx explain: error: {says}")
    assert not (tmp_path / "o").exists()


def test_an_option_of_the_wrong_type_or_for_the_default_method_exits_2(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert main(["explain", "demo:shapes-scene", "a blue star", "--opt", "start_layer='0'", *out]) == 2
    assert "start_layer must be an int, got '0'" in capsys.readouterr().err
    assert main(["explain", "demo:shapes-scene", "a blue star", "--model", "demo-siglip", "--opt", "start_layer=0",
                 *out]) == 2  # SigLIP's default is integrated gradients, which has no start layer
    assert "--opt start_layer=0: integrated_gradients has no option 'start_layer'" in capsys.readouterr().err


def test_search_overlays_take_the_method_and_its_options(tmp_path, capsys):
    from clipx import shapes

    images = tmp_path / "imgs"
    images.mkdir()
    for k in range(3):
        shapes.scene(80_000 + k, n_objects=1).image.save(images / f"{k}.png")
    assert main(["index", str(images), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    search = ["search", str(tmp_path / "idx"), "a red circle", "--k", "2"]
    assert main([*search, "--explain", str(tmp_path / "o"), "--opt", "start_layer=-1"]) == 0
    assert capsys.readouterr().out.startswith("relevance: start_layer=-1, ")
    assert len(list((tmp_path / "o").glob("*.png"))) == 2
    assert main([*search, "--opt", "start_layer=-1"]) == 2
    assert "give --explain DIR" in capsys.readouterr().err


# --- a folder: one PNG per image and caption, or a run of shards -----------------------------------------

def test_explain_folder_with_png_writes_one_overlay_per_image_and_caption(tiny_checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    sizes = {"a.png": (40, 30), "a.jpg": (30, 40), "sub/b.png": (50, 20)}
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 30)).save(folder / name)
    (folder / "broken.png").write_bytes(b"no png")
    captions = ["a red square", "a blue circle"]
    assert main(["explain", "images", *captions, "--png", "--bare", "--model", str(tiny_checkpoint[0])]) == 0
    out = tmp_path / "clipx-out"  # the overlays' default folder, not a run's
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == sorted(f"{name.replace('.', '_')}/{j:02d}-{slug}.png" for name in sizes
                             for j, slug in enumerate(["a-red-square", "a-blue-circle"]))
    for name, size in sizes.items():  # over the original images: a.png and a.jpg each keep their own
        assert Image.open(out / name.replace(".", "_") / "00-a-red-square.png").size == size
    printed = capsys.readouterr().out
    assert "3 of 4 images explained: 6 PNGs in clipx-out" in printed
    assert "failed: broken_png: " in printed and "cannot read an image" in printed

    assert main(["explain", "images", *captions, "--model", str(tiny_checkpoint[0])]) == 0
    assert clipx.RunResult(tmp_path / "clipx-run").stack("image").shape[:2] == (3, 2)  # without --png: a run
    assert "explained into clipx-run with relevance" in capsys.readouterr().out

    assert main(["explain", "images/a.png", "a cat", "--png"]) == 2
    assert "--png is for a folder, shards or a dataset" in capsys.readouterr().err


def test_explain_shards_with_png_names_overlays_by_key(tiny_checkpoint, tmp_path, capsys):
    import io

    import webdataset

    with webdataset.TarWriter(str(tmp_path / "shards-0.tar")) as writer:
        for key, caption in [("one", "a red square"), ("two", "a dark room")]:
            buffer = io.BytesIO()
            Image.new("RGB", (40, 30)).save(buffer, "png")
            writer.write({"__key__": key, "png": buffer.getvalue(), "txt": caption})
    out = tmp_path / "o"
    assert main(["explain", str(tmp_path / "shards-0.tar"), "--png", "--model", str(tiny_checkpoint[0]),
                 "--out", str(out)]) == 0  # each sample against its own caption
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["one/00-a-red-square.png",
                                                                          "two/00-a-dark-room.png"]


def test_overlay_names_stay_inside_out():
    assert _item_name(["s.tar", "../../etc/x"], None) == "_/_/etc/x"
    assert _item_name(["s.tar", "/abs/x"], None) == "_/abs/x"
    assert _item_name(7, None) == "row-000007"


# --- warnings speak of the input ---------------------------------------------------------------------------

def test_a_warning_names_the_users_words_not_clipx_internals(capsys):
    """The demo's tokenizer holds only the words of its captions: others are spelled out letter by letter and
    still scored. The warning names them, once, with no file, line or warning class of clipx's."""
    assert main(["score", "demo:shapes-scene", "a blue star", "a photo of a dog"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("clipx score: warning: the tokenizer's vocabulary (590 tokens) does not hold 'photo', "
                          "'dog' (in 'a photo of a dog')")
    assert len(err.splitlines()) == 1 and "UserWarning" not in err and ".py" not in err


def test_the_installed_command_prints_warnings_without_its_own_source():
    """As a person runs it, in a process of its own (the issue saw `.../bin/clipx:8: UserWarning: ...`)."""
    done = subprocess.run([sys.executable, "-m", "clipx.cli", "score", "demo:shapes-scene", "a photo of a star"],
                          capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == [
        "clipx score: warning: the tokenizer's vocabulary (590 tokens) does not hold 'photo' (in 'a photo of a star'): "
        "the model has likely never seen them (spelled out in pieces of a character or two, or unknown)"]
    assert done.stdout.splitlines()[0].split() == ["caption", "logit", "softmax"]
