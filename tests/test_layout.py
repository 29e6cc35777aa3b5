"""The package layout: import-linter's contracts (pyproject.toml) hold, they catch an upward import even in a
function, every module sits in a layer, and the flat layout's import paths and public names still work."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

import clipx
from clipx import moved
from paths import ROOT

LINT = shutil.which("lint-imports") or pytest.fail("import-linter is a test dependency: pip install -e '.[test]'")

# clipx.__all__ of the flat layout (0.1.0): the redesign keeps every public name
PUBLIC_NAMES = [
    "CLIP", "CLIPConfig", "CLIPOutput", "Cache", "CheckpointError", "CheckpointNotFoundError", "Decomposition",
    "DirectLogits", "Explanation", "HeadDescription", "HeadTable", "HighNormTokens", "Hit", "Hits", "HookPoint",
    "Index", "RunResult", "SAEConfig", "SparseAutoencoder", "TextConfig", "TowerOutput", "VisionConfig", "ZeroShot",
    "ablate", "ablate_heads", "attach_sae", "decompose", "decompose_text", "describe_heads", "explain",
    "explain_dataset", "high_norm_tokens", "load", "logit_lens", "methods", "metrics", "patch", "patching_effect",
    "segmentation", "splice_effect", "sweep_heads", "templates", "train_sae", "views", "zeroshot",
    "zeroshot_classifier"]
# names added since, each by the issue that asked for it (none of 0.1.0's is ever removed)
ADDED_NAMES = ["Interactions", "interactions"]  # issue 28: second-order token x patch interactions


def lint(package_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_root)}  # the copy's clipx before the installed one
    return subprocess.run([LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=package_root,
                          env=env, capture_output=True, text=True)


def test_the_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, broken", [
    # upward, in a function (and so a circle between the top-level packages too)
    ("model/config.py", "def _late():\n    from clipx.views import render\n", "Each layer imports only the layers below it"),
    # sideways inside a package, making a circle
    ("preprocess/text.py", "def _late():\n    from clipx.preprocess import bpe\n", "No import circle inside any package"),
])
def test_the_contracts_catch_an_import_planted_in_a_function(tmp_path, module, planted, broken):
    shutil.copytree(ROOT / "clipx", tmp_path / "clipx", ignore=shutil.ignore_patterns("data", "__pycache__"))
    path = tmp_path / "clipx" / module
    path.write_text(path.read_text() + "\n\n" + planted)
    result = lint(tmp_path)
    assert result.returncode != 0 and f"{broken} BROKEN" in result.stdout, result.stdout


def test_every_module_sits_in_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layered = {name.strip() for layer in config["layers"] for name in layer.replace(":", "|").split("|")}
    children = {p.stem if p.is_file() else p.name for p in (ROOT / "clipx").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert children == layered


def test_the_public_names_are_those_of_the_flat_layout_and_the_added_ones():
    assert sorted(clipx.__all__) == sorted(PUBLIC_NAMES + ADDED_NAMES)
    for name in PUBLIC_NAMES + ADDED_NAMES:
        assert getattr(clipx, name) is not None, name


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_an_old_module_path_is_the_new_module_itself(old):
    new = importlib.import_module(f"clipx.{moved.MOVED[old]}")
    sys.modules.pop(f"clipx.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aliased = importlib.import_module(f"clipx.{old}")
    assert aliased is new
    assert new.__spec__.name == new.__name__ == f"clipx.{moved.MOVED[old]}"  # the alias left the module as it was
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning) and "moved to" in str(w.message)]
    if old in moved.PUBLIC:
        assert not deprecations
    else:
        assert len(deprecations) == 1 and f"clipx.{moved.MOVED[old]}" in str(deprecations[0].message)


@pytest.mark.parametrize("old, names", [
    ("checkpoint", ["read_weights", "load_into", "openai_to_hf", "OpenAIShapes", "hf_key", "Layout", "save_folder"]),
    ("text_embeddings", ["embed_texts", "embed_images", "scores", "explain_embedding"]),
    ("tokenizer", ["Tokenizer", "Encoding", "check_texts", "load_tokenizer", "SIGLIP_CONTEXT_LENGTH"]),
])
def test_a_split_module_path_finds_each_name_where_it_went(old, names):
    sys.modules.pop(f"clipx.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"clipx.{old} moved to"):
        aliased = importlib.import_module(f"clipx.{old}")
    parts = [importlib.import_module(f"clipx.{m}") for m in moved.SPLIT[old]]
    for name in names:
        assert any(getattr(part, name, None) is getattr(aliased, name) for part in parts), name
    with pytest.raises(AttributeError, match="no_such_name"):
        aliased.no_such_name


def test_old_paths_that_share_a_public_functions_name_leave_the_function():
    from clipx.decompose import decompose_text  # the module of the flat layout
    import clipx.zeroshot

    assert sorted(moved.SEEDED) == ["decompose", "zeroshot"] and not set(moved.SEEDED) & set(moved.MOVED)
    assert decompose_text is clipx.decompose_text
    assert callable(clipx.decompose) and callable(clipx.zeroshot) and callable(clipx.explain)
    assert clipx.decompose is importlib.import_module("clipx.mech.decompose").decompose


def test_an_old_name_of_a_module_that_was_never_there_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("clipx.no_such_module")
