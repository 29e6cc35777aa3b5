"""The clipx command given what a hostile or careless user gives it: every refusal is exit 2 and one line,
`clipx CMD: error: ...`, naming the option at fault, before any model loads; nothing is a traceback."""

import sys

import pytest
from PIL import Image

import clipx.io.loading
from clipx.cli import main
from damage import read_only


@pytest.fixture()
def no_model(monkeypatch):
    """A refusal must come before the model loads: loading one fails the test."""
    def load(*args, **kwargs):
        raise AssertionError("the model loaded before the bad input was refused")
    monkeypatch.setattr(clipx.io.loading, "load", load)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"clipx {command}: error: ") and err.count("\n") == 1, err
    return err.strip()


def _images(folder, n=3):
    folder.mkdir()
    for k in range(n):
        Image.new("RGB", (40, 30), (60 * k, 20, 200 - 60 * k)).save(folder / f"{k}.png")
    return folder


def test_captions_and_images_may_follow_the_options(tiny_checkpoint, tmp_path, capsys):
    image = _images(tmp_path / "imgs", 2) / "0.png"
    out = tmp_path / "out"
    assert main(["explain", str(image), "--out", str(out), "--model", str(tiny_checkpoint[0]), "a blue star"]) == 0
    assert [p.name for p in out.glob("*.png")] == ["00-a-blue-star.png"]
    assert main(["classify", str(image), "--classes", "cat,dog", "--model", str(tiny_checkpoint[0]),
                 str(image.with_name("1.png"))]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[-4:]
    assert [r.split()[0] for r in rows] == [str(image)] * 2 + [str(image.with_name("1.png"))] * 2


@pytest.mark.parametrize("command, option", [
    (["explain", "demo:shapes-scene", "a cat"], "--batch-size"),
    (["explain", "demo:shapes-scene", "a cat"], "--shard-size"),
    (["classify", "demo:shapes-scene", "--classes", "cat,dog"], "--top"),
    (["index", ".", "--out", "idx"], "--batch-size"),
    (["search", "idx", "a cat"], "--k"),
])
@pytest.mark.parametrize("value, says", [("0", "must be at least 1, got 0"), ("-1", "must be at least 1, got -1"),
                                         ("2.5", "'2.5' is not a whole number")])
def test_counts_below_one_are_refused_naming_the_option(command, option, value, says, no_model, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, option, value])
    assert exit_.value.code == 2
    assert _one_line_error(capsys, command[0]) == f"clipx {command[0]}: error: argument {option}: {says}"


def test_a_missing_optional_package_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    images = _images(tmp_path / "imgs")
    assert main(["index", str(images), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "faiss", None)  # an import of it fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["search", str(tmp_path / "idx"), "a red square", "--backend", "faiss"]) == 2
    assert "needs the faiss package: pip install" in _one_line_error(capsys, "search")
    assert main(["explain", str(images), "a red square", "--hf-dataset", "--out", str(tmp_path / "run")]) == 2
    assert "--hf-dataset needs the datasets package: pip install" in _one_line_error(capsys, "explain")


def test_a_file_where_a_folder_goes_names_the_option_that_gave_it(tmp_path, no_model, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["index", str(tmp_path), "--out", str(a_file)]) == 2
    assert _one_line_error(capsys, "index").endswith(f"--out {a_file}: {a_file} is a file; --out names a "
                                                     "folder for the index")
    assert main(["search", str(tmp_path / "idx"), "a cat", "--explain", str(a_file)]) == 2
    assert _one_line_error(capsys, "search").endswith(f"--explain {a_file}: {a_file} is a file; --explain names "
                                                      "a folder for the overlays")


def test_unknown_arguments_are_one_line(no_model, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["methods", "--allow-root"])
    assert exit_.value.code == 2
    assert _one_line_error(capsys, "methods") == "clipx methods: error: unrecognized arguments: --allow-root"


def test_a_complete_run_on_read_only_media_reads_from_the_cli(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    images, out = _images(tmp_path / "imgs"), tmp_path / "run"
    command = ["explain", str(images), "a red square", "--model", str(tiny_checkpoint[0]), "--out", str(out),
               "--shard-size", "2"]
    assert main(command) == 0
    first = capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    read_only(monkeypatch, out)
    assert main(command) == 0
    assert capsys.readouterr().out == first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
