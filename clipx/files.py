"""Files on disk, handled as a careful user expects.

Reading a checkpoint folder: every way a file can fail to be read (missing permission, bytes that
are not UTF-8 or not JSON, JSON of the wrong shape) becomes a `CheckpointError` naming the file.
Writing .safetensors: whole or not at all, with the permissions the user's umask gives (safetensors
alone writes 0600 through a private temp file, which makes a shared model folder unreadable to
colleagues).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import CheckpointError


def unreadable(path: Path) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: permission denied (give your user read access to it)")


def is_file(path: Path) -> bool:
    """Whether a file is there to read: False where nothing has that name. Where something has it but is no
    file to read, a CheckpointError naming it, never 'absent' (which would load defaults in its place): a
    folder we may not look into, a symbolic link whose target is missing (a hub cache without its blob) or
    loops, a folder."""
    try:
        if path.is_file():
            return True
        if not os.path.lexists(path):
            return False
        if path.is_symlink():
            raise CheckpointError(f"{path} is a symbolic link to {os.readlink(path)}, which is missing or loops "
                                  "(in a hub cache: a blob not downloaded); fix the link or remove it")
        kind = "a folder" if path.is_dir() else "not a regular file"
    except PermissionError:
        raise unreadable(path) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    raise CheckpointError(f"{path} is {kind}, not a file clipx can read")


def check_readable(path: Path) -> None:
    """Open `path` before a reader that reports a permission problem as 'No such file' does (safetensors)."""
    try:
        path.open("rb").close()
    except PermissionError:
        raise unreadable(path) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (every JSON file of a checkpoint folder does)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise unreadable(path) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object {{...}}, but holds a {type(data).__name__}")
    return data


def write_json(data: Any, path: str | Path, indent: int | None = None) -> None:
    """`data` as JSON at `path`, appearing under its name only once complete (temp file + os.replace), so a
    crash mid-write never leaves a truncated file that a reader would take for the whole."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=indent), encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, then the mode a plain `open(path, "w")` gives: a new file's
    (0o666 & ~umask), or the mode of the file it overwrites; the file appears under its name only once
    complete (temp file + os.replace)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # same folder: os.replace stays a rename
    # The kernel applies the umask to this file as to any new one: its mode is the one to give the result,
    # read without os.umask(), which would change the umask of every thread for a moment.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE((path if path.exists() else temp).stat().st_mode)
        save_file(tensors, temp, metadata=metadata)  # safetensors replaces `temp` with its own 0600 file
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
