"""Finding a checkpoint's files: the shipped demo model, a local folder or file, or a hub id
(through huggingface_hub and its cache; `HF_HUB_OFFLINE=1` and `local_files_only` honoured).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .assets import DEMO_MODEL_DIR
from .errors import CheckpointError, CheckpointNotFoundError

# Everything but the weights that a CLIP folder may hold.
SIDE_FILES = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "open_clip_config.json"]
# Weight files in order of preference: safetensors first, pickles only as a fallback.
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class CheckpointFiles:
    folder: Path          # where config, tokenizer and processor files are looked for
    weights: list[Path]   # one file, or the shards of one checkpoint


def find_weights(folder: Path) -> list[Path] | None:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{path} is not a valid shard index: {e}") from e
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{path} names shards that are not in {folder}: {', '.join(missing)}")
            return [folder / s for s in shards]
        return [path]
    return None


def resolve(name_or_path: str | Path, revision: str | None = None,
            local_files_only: bool | None = None) -> CheckpointFiles:
    if str(name_or_path) == "demo":
        if not DEMO_MODEL_DIR.is_dir():
            raise CheckpointNotFoundError(f"the demo model is missing from {DEMO_MODEL_DIR}")
        name_or_path = DEMO_MODEL_DIR
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{path} is not a weights file (expected {', '.join(STATE_DICT_SUFFIXES)})")
        return CheckpointFiles(path.parent, [path])
    if path.is_dir():
        weights = find_weights(path)
        if weights is None:
            raise CheckpointNotFoundError(f"no weights in the folder {path}: looked for {', '.join(WEIGHT_FILES)}")
        return CheckpointFiles(path, weights)
    if isinstance(name_or_path, Path) or str(name_or_path).startswith((".", "/", "~")) \
            or str(name_or_path).count("/") > 1:
        raise CheckpointNotFoundError(f"no such file or folder: {path}")
    return _download(str(name_or_path), revision, local_files_only)


def _download(repo_id: str, revision: str | None, local_files_only: bool | None) -> CheckpointFiles:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if local_files_only is None:
        # the environment too: a notebook may set HF_HUB_OFFLINE after huggingface_hub was imported
        env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        local_files_only = constants.HF_HUB_OFFLINE or env
    offline = local_files_only
    # Only the weight format we will read is fetched: safetensors, else the pickled .bin; an
    # open_clip-only repository (no transformers weights) by its own file names, in the same order.
    for weight_patterns in (["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
                            ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"],
                            ["open_clip_model.safetensors"], ["open_clip_pytorch_model.bin"]):
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                            allow_patterns=SIDE_FILES + weight_patterns))
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise CheckpointNotFoundError(f"{repo_id!r} (revision {revision or 'main'}) is not on the hub "
                                          f"and is not a local folder: {e}") from None
        except (LocalEntryNotFoundError, EntryNotFoundError) as e:
            why = "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only)" if offline \
                else "the hub could not be reached"
            raise CheckpointNotFoundError(f"{repo_id!r} is not a local folder and is not in the hub cache, "
                                          f"and {why}; download it once on a connected machine "
                                          f"or pass a local folder: {e}") from None
        except HfHubHTTPError as e:
            raise CheckpointNotFoundError(f"could not fetch {repo_id!r} from the hub: {e}") from None
        weights = find_weights(folder)
        if weights is not None:
            return CheckpointFiles(folder, weights)
    raise CheckpointNotFoundError(f"the hub repository {repo_id!r} has no CLIP weights "
                                  f"({', '.join(WEIGHT_FILES)})")
