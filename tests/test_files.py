"""clipx.files, the one way clipx writes a file: whole or not at all (temp file + rename), flushed to the disk
with its folder entry, the mode a plain open() gives, and every OSError one line naming the file asked for;
and the digest that .safetensors files carry."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipx.files as files
from clipx.assets import demo_image
from clipx.cli import main
from clipx.files import read_safetensors, save_safetensors, tensor_digest, write_bytes, write_json
from damage import fill_disk

WRITERS = {
    "bytes": lambda path: write_bytes(b"\x89PNG...", path),
    "json": lambda path: write_json({"a": [1, 2]}, path, indent=1),
    "safetensors": lambda path: save_safetensors({"x": torch.arange(4.0)}, path, metadata={"k": "v"}),
}


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS)
def test_a_new_file_gets_the_umask_mode_and_an_old_one_keeps_its_own(tmp_path, write):
    old = os.umask(0o027)
    try:
        write(tmp_path / "f")
        assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640
        (tmp_path / "f").chmod(0o604)
        write(tmp_path / "f")
        assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o604
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS)
def test_the_file_is_on_the_disk_before_its_name_and_its_name_before_the_call_returns(tmp_path, write, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("rename", str(b))) or real_replace(a, b))
    write(tmp_path / "f")
    assert [what for what, _ in events] == ["fsync", "rename", "fsync"]
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/\.f\.[0-9a-f]{8}\.tmp", events[0][1])
    assert events[1:] == [("rename", str(tmp_path / "f")), ("fsync", str(tmp_path))]


@pytest.mark.parametrize("write", WRITERS.values(), ids=WRITERS)
def test_a_full_disk_mid_write_leaves_the_old_file_and_names_the_new(tmp_path, write, monkeypatch):
    write(tmp_path / "f")
    before = (tmp_path / "f").read_bytes()
    tried = fill_disk(monkeypatch, after=3)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: '{re.escape(str(tmp_path / 'f'))}'$"):
        write(tmp_path / "f")
    assert len(tried) == 1 and os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_bytes() == before


@pytest.mark.parametrize("make, error", [
    (lambda path: path.mkdir(), IsADirectoryError),
    (lambda path: None, PermissionError),
    (lambda path: path.parent.rmdir(), FileNotFoundError),
], ids=["a-folder-there", "folder-not-writable", "no-folder"])
def test_every_oserror_is_one_line_of_its_own_kind_naming_the_file(tmp_path, monkeypatch, make, error):
    path = tmp_path / "sub" / "f.json"
    path.parent.mkdir()
    make(path)
    if error is PermissionError:  # as root may write anywhere, the kernel's refusal is made here
        real = os.open

        def refused(name, *args):
            if Path(name).parent == path.parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(name))
            return real(name, *args)
        monkeypatch.setattr(os, "open", refused)
    with pytest.raises(error, match=f"^\\[Errno \\d+\\] [^:]+: '{re.escape(str(path))}'$"):
        write_json({}, path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_digest_binds_names_dtypes_shapes_bytes_and_metadata():
    t = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    digest = tensor_digest(t, {"k": "v"})
    assert tensor_digest(dict(reversed(t.items())), {"k": "v", files.DIGEST: "ignored"}) == digest
    for other in ({"a": t["b"].reshape(4), "b": t["a"].reshape(2, 2)}, {"a": t["a"].view(torch.int32), "b": t["b"]},
                  {"a": t["a"].reshape(2, 2), "b": t["b"]}, {"A": t["a"], "b": t["b"]}):
        assert tensor_digest(other, {"k": "v"}) != digest
    assert tensor_digest(t, {"k": "w"}) != digest and tensor_digest(t) != digest


def test_equal_contents_give_equal_bytes(tmp_path):
    """safetensors writes its metadata in a random order; clipx sorts it, so two saves are one file."""
    metadata = {f"key{k}": str(k) for k in range(12)}
    for name in ("a", "b"):
        save_safetensors({"x": torch.arange(3.0)}, tmp_path / name, metadata=metadata)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    tensors, read = read_safetensors(tmp_path / "a")
    assert read == {**metadata, files.DIGEST: tensor_digest({"x": torch.arange(3.0)}, metadata)}


def test_a_cli_overlay_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """Case 12 of issue 29: a full disk left a 0-byte PNG in place of the earlier overlay."""
    out = tmp_path / "out"
    assert main(["explain", "demo:shapes-scene", "a red circle", "--out", str(out)]) == 0
    png = out / "00-a-red-circle.png"
    before = png.read_bytes()
    (width, height), (image_width, image_height) = Image.open(png).size, Image.open(demo_image("demo:shapes-scene")).size
    assert width >= image_width and height > image_height  # a card: the overlay, its title and colour bar
    fill_disk(monkeypatch)
    assert main(["explain", "demo:shapes-scene", "a red circle", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"clipx explain: error: [Errno 28] No space left on device: '{png}'\n"
    assert os.listdir(out) == [png.name] and png.read_bytes() == before
