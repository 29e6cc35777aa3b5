"""The clipx command."""

from PIL import Image

from clipx.cli import main


def test_score_prints_every_caption_sorted(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    assert main(["score", str(image), "a red square", "a blue circle", "--model", str(tiny_checkpoint[0])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["caption", "logit", "prob"]
    rows = [line.rsplit(None, 2) for line in lines[1:]]
    assert sorted(r[0].strip() for r in rows) == ["a blue circle", "a red square"]
    logits = [float(r[1]) for r in rows]
    assert logits == sorted(logits, reverse=True)
    assert abs(sum(float(r[2]) for r in rows) - 1) < 2e-3


def test_bad_input_exits_2_with_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing.png"), "a cat", "--model", str(tiny_checkpoint[0])]) == 2
    assert "missing.png" in capsys.readouterr().err
    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["score", str(image), "a cat", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
