"""Writing .safetensors files the way any other file is written: whole or not at all, with the
permissions the user's umask gives (safetensors alone writes 0600 through a private temp file,
which makes a shared model folder unreadable to colleagues)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import torch
from safetensors.torch import save_file


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
