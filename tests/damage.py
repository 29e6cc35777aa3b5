"""Files damaged as a disk, a kill or a hand would damage them, and a disk that fills up mid-write: what
every file clipx writes must survive or refuse, naming itself."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

from safetensors import SafetensorError

import clipx.files
import clipx.runs.runner


def header(path: Path) -> tuple[dict, int]:
    """A .safetensors file's header (JSON) and where its tensor data starts."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), 8 + n


def _rewrite_header(path: Path, entries: dict) -> None:
    """The header replaced by `entries`, padded with spaces to its old length (as safetensors pads), so
    that every offset into the data stays where it was."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    text = json.dumps(entries, separators=(",", ":")).encode()
    assert len(text) <= n, "the edited header must not grow"
    path.write_bytes(data[:8] + text.ljust(n) + data[8 + n:])


def flip_bit(path: Path, tensor: str | None = None, bit: int = 0) -> None:
    """One bit of a tensor's bytes flipped (the first tensor in the file's order, or `tensor`)."""
    entries, start = header(path)
    name = tensor or min((k for k in entries if k != "__metadata__"), key=lambda k: entries[k]["data_offsets"][0])
    position = start + entries[name]["data_offsets"][0] + bit // 8
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def retype(path: Path, tensor: str, dtype: str = "I32") -> None:
    """A tensor's dtype changed in the header to another of the same size (F32 -> I32): the bytes are read
    as other numbers."""
    entries, _ = header(path)
    entries[tensor]["dtype"] = dtype
    _rewrite_header(path, entries)


def swap(path: Path, a: str, b: str) -> None:
    """Two tensors of one shape and dtype given each other's bytes (their offsets swapped in the header)."""
    entries, _ = header(path)
    entries[a]["data_offsets"], entries[b]["data_offsets"] = entries[b]["data_offsets"], entries[a]["data_offsets"]
    _rewrite_header(path, entries)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def fill_disk(monkeypatch, after: int = 0) -> list[Path]:
    """clipx's writers made to hit a full disk: each writes `after` bytes of its file, then fails with
    ENOSPC as the kernel would (safetensors' writer with its own error, which names the os error).
    Returns the list of files each failed write was writing to (temp names)."""
    tried: list[Path] = []

    def write(path, data):
        tried.append(Path(path))
        Path(path).write_bytes(bytes(data)[:after])
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_file(tensors, filename, metadata=None):
        tried.append(Path(filename))
        Path(filename).write_bytes(b"\0" * after)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(clipx.files, "_write", write)
    monkeypatch.setattr(clipx.files, "save_file", save_file)
    return tried


def read_only(monkeypatch, folder: Path) -> None:
    """`folder` as on read-only media: creating or writing a file in it fails with EROFS."""
    real_open, real_os_open = open, os.open

    def refused(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def open_(path, mode="r", *args, **kwargs):
        if Path(path).is_relative_to(folder) and set(mode) & set("wax+"):
            refused(path)
        return real_open(path, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if Path(path).is_relative_to(folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refused(path)
        return real_os_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(clipx.runs.runner, "open", open_, raising=False)
    monkeypatch.setattr(os, "open", os_open)
