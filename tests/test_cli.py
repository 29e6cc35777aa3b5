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


def test_explain_writes_one_overlay_per_caption(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.open("assets/images/circle-and-square.png").save(image)
    out = tmp_path / "out"
    assert main(["explain", str(image), "a red circle", "a blue square", "--model", str(tiny_checkpoint[0]),
                 "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["00-a-red-circle.png", "01-a-blue-square.png"]
    first, second = (Image.open(p) for p in pngs)
    assert first.size == second.size == (224, 224)  # on the original image
    assert first.tobytes() != second.tobytes()
    printed = capsys.readouterr().out
    assert "a red circle" in printed and str(pngs[0]) in printed


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


def test_methods_lists_every_method(capsys):
    import clipx

    assert main(["methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == clipx.methods()


def test_explain_on_a_demo_scene_tells_its_objects_apart(tmp_path):
    """The README's main job: two captions naming the two objects give different overlays."""
    out = tmp_path / "out"
    assert main(["explain", "assets/images/shapes-scene.png", "a blue star", "a yellow circle",
                 "--out", str(out)]) == 0
    star, circle = (Image.open(p).convert("RGB") for p in sorted(out.glob("*.png")))
    assert star.size == circle.size == (224, 224)
    assert star.tobytes() != circle.tobytes()
