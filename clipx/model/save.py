"""A model writes itself in Hugging Face's layout: model.safetensors under the family's key names, its
config.json, and the tokenizer and processor it holds, so transformers loads the folder too.

The folder is one unit. Every file is first written whole into a staging folder inside it; then
`clipx_manifest.json` (MANIFEST: each file's size and XXH3-128 digest, clipx.files); then each file is
renamed into place.
A save stopped at any moment (a kill, a full disk) leaves the old folder as it was, or files that disagree
with the manifest, which `check_saved` (clipx.load calls it) refuses naming the missing or mismatched
file. The manifest goes first, not last: a folder saved for the first time and stopped between two
renames then still has one, where a manifest written last would leave a folder that looks like a foreign
one (loaded without checks, the default processor standing in for a missing preprocessor_config.json).
transformers ignores the extra file; folders without one (from the hub, from clipx before) load as ever.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..files import (file_digest, is_file, os_error_in, put_in_place, read_json, save_safetensors, sync,
                     write_error, write_json)
from .layout import JOINT_PARAMETERS, TOWER_PREFIX

MANIFEST = "clipx_manifest.json"
FORMAT = 1
STAGING = ".clipx-save-"  # the staging folder's name starts so; one left by a killed save is removed by the next


def save_folder(model: nn.Module, folder: str | Path) -> None:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(STAGING + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=folder))
    except OSError as e:
        raise write_error(e, folder) from None
    try:
        _write_files(model, staging)
        # the weights first: a folder saved for the first time and stopped after that has weights, and so
        # reaches check_saved's word on what is missing, not clipx.load's "no weights in the folder"
        names = sorted((p.name for p in staging.iterdir()), key=lambda n: (n != "model.safetensors", n))
        for name in names:
            sync(staging / name)
        write_json({"format": FORMAT, "files": {name: {"size": (staging / name).stat().st_size,
                                                        "xxh3_128": file_digest(staging / name)} for name in names}},
                   folder / MANIFEST, indent=1)
        for name in names:
            put_in_place(staging / name, folder / name, durable=False)  # the old file's mode, if there is one
        sync(folder)
    except OSError as e:  # a staged file's error names the file it stands for
        where = Path(e.filename) if e.filename else folder
        raise write_error(e, folder / where.name if where.parent == staging else where) from None
    except Exception as e:  # tokenizers' own error on a full disk: "... (os error 28)"
        error = os_error_in(e, folder)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_files(model: nn.Module, folder: Path) -> None:
    layout = model.config.layout()
    state = layout.to_hf({layout.hf_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    if model.vision is None or model.text is None:
        tower = "vision" if model.vision is not None else "text"
        if not layout.tower_prefixed(getattr(model, tower)):
            state = {k.removeprefix(TOWER_PREFIX[tower] + "."): v for k, v in state.items()}
        for key in JOINT_PARAMETERS:
            state.pop(key, None)
    # the manifest's digest covers the file: no digest of its own (transformers reads this file's metadata too)
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"}, digest=False, durable=False)
    model.config.save(folder)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    if model.processor is not None:
        model.processor.save_pretrained(folder)


def check_saved(folder: Path) -> None:
    """A CheckpointError naming the file, where `folder` holds a MANIFEST and a file it lists is missing, or
    has another size or digest (a save stopped half way, a file damaged or replaced since)."""
    path = folder / MANIFEST
    if not is_file(path):
        return
    files = read_json(path).get("files")
    if not (isinstance(files, dict) and all(isinstance(n, str) and n and Path(n).name == n and isinstance(f, dict)
                                            and type(f.get("size")) is int and isinstance(f.get("xxh3_128"), str)
                                            for n, f in files.items())):
        raise CheckpointError(f"{path} is not a clipx save manifest: it needs \"files\", an object of file name -> "
                              "{\"size\": int, \"xxh3_128\": str}")
    advice = (f"the save was stopped half way, or the file changed since: save the model again (if you changed it "
              f"on purpose, delete {MANIFEST})")
    for name, expected in files.items():
        file = folder / name
        if not is_file(file):
            raise CheckpointError(f"{folder} is an incomplete save: {name}, which {MANIFEST} lists, is missing; {advice}")
        size = file.stat().st_size
        if size != expected["size"] or file_digest(file) != expected["xxh3_128"]:  # the size first: no read
            why = f"{size} bytes, not {expected['size']}" if size != expected["size"] else "another digest"
            raise CheckpointError(f"{file} is not the file {MANIFEST} lists ({why}): {advice}")
