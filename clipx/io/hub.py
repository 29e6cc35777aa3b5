"""Finding a checkpoint's files: the shipped demo model, a local folder or file, or a hub id
(through huggingface_hub and its cache; `HF_HUB_OFFLINE=1` and `local_files_only` honoured).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..assets import DEMOS
from ..errors import CheckpointError, CheckpointNotFoundError
from ..files import is_file, read_json, unreadable

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
        if not is_file(path):
            continue
        return _read_shard_index(path) if name.endswith(".index.json") else [path]
    return None


def _read_shard_index(index: Path) -> list[Path]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map \
            or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} is not a valid shard index: it needs a non-empty object 'weight_map' "
                              "of tensor name -> shard file name")
    names = sorted(set(weight_map.values()))
    for name in names:
        _check_shard_name(index, name)
    missing = [name for name in names if not is_file(index.parent / name)]
    if missing:
        raise CheckpointError(f"{index} names shards that are not in {index.parent}: {', '.join(missing)}")
    return [index.parent / name for name in names]


def _check_shard_name(index: Path, name: str) -> None:
    """A downloaded index must not make clipx read files outside its own folder. The name is checked, not
    where it leads: the hub cache's files are themselves symlinks into blobs/, outside the snapshot folder."""
    outside = any(flavour(name).is_absolute() or flavour(name).drive or ".." in flavour(name).parts
                  for flavour in (PurePosixPath, PureWindowsPath))
    if outside or not name or "\0" in name:
        raise CheckpointError(f"{index} names the shard {name!r}, which is not a file inside {index.parent}; "
                              "clipx reads shards by plain relative names only")
    # a safetensors index must not smuggle in a pickle (whose reader is the riskier one), nor any other file
    suffix = ".safetensors" if index.name.endswith(".safetensors.index.json") else ".bin"
    if not name.endswith(suffix):
        raise CheckpointError(f"{index} names the shard {name!r}, which is not a {suffix} file")


def resolve(name_or_path: str | Path, revision: str | None = None,
            local_files_only: bool | None = None) -> CheckpointFiles:
    if str(name_or_path) in DEMOS:
        folder = DEMOS[str(name_or_path)]
        if not folder.is_dir():
            raise CheckpointNotFoundError(f"the {name_or_path} model is missing from {folder}")
        name_or_path = folder
    path = _expand(Path(name_or_path))
    kind = _local_kind(path)
    if kind == "file":
        if path.suffix not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{path} is not a weights file (expected {', '.join(STATE_DICT_SUFFIXES)})")
        return CheckpointFiles(path.parent, [path])
    if kind == "folder":
        weights = find_weights(path)
        if weights is None:
            raise CheckpointNotFoundError(f"no weights in the folder {path}: looked for {', '.join(WEIGHT_FILES)}")
        return CheckpointFiles(path, weights)
    if isinstance(name_or_path, Path) or str(name_or_path).startswith((".", "/", "~")) \
            or str(name_or_path).count("/") > 1:
        raise CheckpointNotFoundError(f"no such file or folder: {path}")
    return _download(str(name_or_path), revision, local_files_only)


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # "~someone" with no such user: not a home folder, so take the name as it is
        return path


def _local_kind(path: Path) -> str | None:
    """"file", "folder" or None (nothing there, or a name no file system takes, e.g. too long: maybe a hub id)."""
    try:
        return "file" if path.is_file() else "folder" if path.is_dir() else None
    except PermissionError:
        raise unreadable(path) from None
    except (OSError, ValueError):  # ENAMETOOLONG; a NUL byte in the name
        return None


def _download(repo_id: str, revision: str | None, local_files_only: bool | None) -> CheckpointFiles:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    if local_files_only is None:
        # the environment too: a notebook may set HF_HUB_OFFLINE after huggingface_hub was imported
        env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        local_files_only = constants.HF_HUB_OFFLINE or env
    offline = local_files_only
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        shown = repo_id if len(repo_id) <= 80 else repo_id[:77] + "..."
        raise CheckpointNotFoundError(
            f"{shown!r} ({len(repo_id)} characters) is neither a local file or folder nor a valid hub id: hub ids "
            "are 'owner/name' of at most 96 letters, digits, '-', '_' and '.'") from None
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
