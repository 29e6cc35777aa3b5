"""clipx as a user installs it: a wheel built from the sdist, installed non-editable into a fresh virtual
environment, used from a folder outside the checkout. Everything the package needs at run time (the demo
models and SAE, the CLIP BPE, the demo images) must be inside it.

Slow (about two minutes: the venv installs clipx's dependencies from the package index).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipx
from clipx.assets import demo_image
from clipx.cli import main
from clipx.preprocess.image import open_image
from clipx.version import DISTRIBUTION
from floats import assert_float32_close
from open_clip_weights import open_clip_state
from paths import ROOT

pytestmark = pytest.mark.slow

# OpenAI's layout with CLIP's own vocabulary and context, so that loading it needs the shipped BPE
OPENAI_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                              "mlp_ratio": 2.0, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
CAPTIONS = ["a blue star", "a yellow circle"]

# run by the venv's python in a folder outside the checkout; prints what it computed as JSON
IN_VENV = """
import json, sys, warnings
import torch
import clipx
from clipx import SparseAutoencoder
from clipx.assets import demo_image
from clipx.preprocess.image import open_image

siglip = clipx.load("demo-siglip")
scene = open_image(demo_image("shapes-scene"))
sae = SparseAutoencoder.load("demo-sae")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the architecture guess for a bare state dict: said and tested elsewhere
    openai = clipx.load(sys.argv[1])
captions = json.loads(sys.argv[2])
tok = openai.tokenize(captions)
with torch.no_grad():
    siglip_logits = siglip(pixel_values=siglip.preprocess([scene]), **siglip.tokenize(captions)).logits_per_image
    openai_logits = openai(pixel_values=torch.ones(1, 3, 32, 32), input_ids=tok.input_ids,
                           attention_mask=tok.attention_mask).logits_per_image
print(json.dumps({"clipx": clipx.__file__, "siglip": siglip_logits.tolist(), "sae": sae.config.d_sae,
                  "openai_ids": tok.input_ids.tolist(), "openai": openai_logits.tolist()}))
"""


def run(*argv, cwd=None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_tree(into: Path) -> Path:
    """The checkout's files as git sees them (tracked, or new and not ignored): what a clean clone builds."""
    listed = run("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes((ROOT / name).read_bytes())
    return into


def members(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from the sdist, checked against the wheel built straight from the tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_tree(tmp / "src")
    run(sys.executable, "-m", "build", "--outdir", tmp / "from-sdist", src)  # sdist, then the wheel from it
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "from-tree", src)
    (from_sdist,), (from_tree,) = (tmp / "from-sdist").glob("*.whl"), (tmp / "from-tree").glob("*.whl")
    assert members(from_sdist) == members(from_tree), "the sdist does not build the wheel the tree builds"
    print(f"\n{from_sdist.name}: {from_sdist.stat().st_size / 2**20:.1f} MiB")
    return from_sdist


def test_wheel_holds_the_package_and_its_data_and_nothing_else(wheel):
    tracked = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clipx").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    names = set(members(wheel))
    package = {n for n in names if ".dist-info/" not in n}
    assert package == tracked
    assert {"clipx/data/shapes-clip/model.safetensors", "clipx/data/clip-bpe/vocab.json",
            "clipx/data/shapes-clip-sae/sae.safetensors", "clipx/data/images/shapes-scene.png"} <= package
    dist_name = DISTRIBUTION.replace("-", "_")
    assert wheel.name.startswith(f"{dist_name}-{clipx.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"{dist_name}-{clipx.__version__}.dist-info/METADATA").decode()
    assert f"Name: {DISTRIBUTION}\n" in metadata


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run(*pip, f"torch=={torch.__version__.split('+')[0]}")  # the CPU build this suite runs on
    run(*pip, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    assert run(venv / "bin" / "clipx", "--version", cwd=elsewhere).strip() == f"{DISTRIBUTION} {clipx.__version__}"

    # the README's first command, on a shipped image; its maps (bare: the labels' glyphs may differ between
    # Pillow builds) against the same command run from the checkout
    run(venv / "bin" / "clipx", "explain", "demo:shapes-scene", *CAPTIONS, "--out", "labelled", cwd=elsewhere)
    run(venv / "bin" / "clipx", "explain", "demo:shapes-scene", *CAPTIONS, "--out", "maps", "--bare", cwd=elsewhere)
    assert main(["explain", str(demo_image("shapes-scene")), *CAPTIONS, "--out", str(tmp_path / "here"), "--bare"]) == 0
    for j, caption in enumerate(CAPTIONS):
        name = f"{j:02d}-{caption.replace(' ', '-')}.png"
        assert (elsewhere / "labelled" / name).is_file(), name
        there = np.asarray(Image.open(elsewhere / "maps" / name), dtype=np.int16)
        here = np.asarray(Image.open(tmp_path / "here" / name), dtype=np.int16)
        assert np.abs(there - here).max() <= 1, name

    state = tmp_path / "openai-layout.pt"
    torch.save(open_clip_state(OPENAI_CFG), state)
    got = json.loads(run(python, "-c", IN_VENV, state, json.dumps(CAPTIONS), cwd=elsewhere))
    assert Path(got["clipx"]).is_relative_to(venv), f"the venv imported clipx from {got['clipx']}"

    siglip = clipx.load("demo-siglip")
    with torch.no_grad():
        scene = open_image(demo_image("shapes-scene"))
        siglip_logits = siglip(pixel_values=siglip.preprocess([scene]), **siglip.tokenize(CAPTIONS)).logits_per_image
    assert_float32_close(torch.tensor(got["siglip"]), siglip_logits)
    assert got["sae"] == clipx.SparseAutoencoder.load("demo-sae").config.d_sae
    with pytest.warns(UserWarning, match="guessed from the weights' shapes"):
        openai = clipx.load(state)
    tok = openai.tokenize(CAPTIONS)
    assert got["openai_ids"] == tok.input_ids.tolist()
    assert tok.input_ids[0, 0] == 49406  # CLIP's start token: the shipped BPE, not a stand-in
    with torch.no_grad():
        openai_logits = openai(pixel_values=torch.ones(1, 3, 32, 32), input_ids=tok.input_ids,
                               attention_mask=tok.attention_mask).logits_per_image
    assert_float32_close(torch.tensor(got["openai"]), openai_logits)
