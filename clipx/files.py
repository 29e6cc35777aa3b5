"""Reading the files of a checkpoint folder: every way a file can fail to be read (missing permission,
bytes that are not UTF-8 or not JSON, JSON of the wrong shape) becomes a `CheckpointError` naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def unreadable(path: Path) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: permission denied (give your user read access to it)")


def is_file(path: Path) -> bool:
    """Path.is_file, except that a folder we may not look into is said so, not taken as 'no such file'."""
    try:
        return path.is_file()
    except PermissionError:
        raise unreadable(path) from None


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
