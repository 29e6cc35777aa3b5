"""Files on disk, handled as a careful user expects.

Reading a checkpoint folder: every way a file can fail to be read (missing permission, a folder or a dead
link where a file should be, bytes that are not UTF-8 or not JSON, JSON of the wrong shape) becomes a
`CheckpointError` naming the file.

Writing: every file clipx writes goes through `replacing`: written under a temp name beside its own, flushed
to the disk, given the mode a plain `open(path, "w")` gives (0o666 & ~umask for a new file, the old file's
mode for one it overwrites: safetensors alone writes 0600, which makes a shared folder unreadable to
colleagues), then renamed over `path`, and the folder's entry flushed too. A crash, a kill or a full disk at
any moment leaves the old file or the new one, whole, never a mix, and once the call returns a power cut
loses nothing. An OSError names the file asked for (not a temp name), as the same kind of OSError.

Digests: a .safetensors file clipx writes carries in its metadata (`DIGEST`) the XXH3-128 digest of its
tensors (name, dtype, shape and bytes of each) and of the rest of its metadata; `read_safetensors`
recomputes it, so a flipped bit, a dtype retyped in the header or two tensors' swapped offsets are refused,
naming the file. XXH3 (xxhash), not SHA-256: these digests catch damage, not forgery (whoever can edit a
file can rewrite a digest stored beside it, whatever its kind), and XXH3 reads 12 GB/s where SHA-256 reads
0.9 on a 2-core EPYC: checking the 605 MB of a saved ViT-B/32 folder on every `clipx.load` costs 0.1 s
(SHA-256: 0.5 to 0.75 s) next to a load of 0.9 to 1.2 s.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

DIGEST = "clipx_xxh3_128"  # the metadata entry of a .safetensors file clipx wrote that holds its digest
_CHUNK = 1 << 24         # bytes hashed at a time when hashing a file


# --- reading -------------------------------------------------------------------------------------

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
    """Open `path` before a reader that reports a permission problem as 'No such file' does (safetensors),
    or a folder as 'No such device'. No file there (or a dead link) is a FileNotFoundError naming it."""
    try:
        path.open("rb").close()
    except PermissionError:
        raise unreadable(path) from None
    except FileNotFoundError:
        raise
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


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a .safetensors file, read into memory, and its metadata, its digest checked where it
    has one (files clipx wrote before digests have none: `DIGEST in metadata` tells them apart). A
    CheckpointError names the file where it cannot be read, is not safetensors (truncated, garbage) or does
    not match its digest."""
    path = Path(path)
    check_readable(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated, or another format): "
                              f"{e}") from None
    stored = metadata.get(DIGEST)
    if stored is not None and stored != tensor_digest(tensors, metadata):
        raise CheckpointError(f"{path} is damaged: its contents do not match the digest it was saved with "
                              "(a flipped bit, an edited header, or tensors swapped)")
    return tensors, metadata


def tensor_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """XXH3-128 of the metadata but `DIGEST` (as sorted JSON), then of each tensor by name: [name, dtype,
    shape] as JSON and its bytes. Independent of where safetensors lays the tensors out in the file."""
    h = xxhash.xxh3_128(json.dumps({k: v for k, v in (metadata or {}).items() if k != DIGEST},
                                   sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def file_digest(path: str | Path, h: Any = None) -> str:
    """The digest of a file's bytes: XXH3-128, or that of the hashlib / xxhash object `h` given."""
    h = xxhash.xxh3_128() if h is None else h
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- writing -------------------------------------------------------------------------------------

def make_folder(folder: Path) -> None:
    """`folder` and its parents made where missing; an OSError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, folder) from None


def write_error(e: OSError, path: str | Path) -> OSError:
    """`e` as the same kind of OSError (PermissionError, IsADirectoryError, ...), one line naming `path`."""
    if e.errno is None:
        return OSError(f"cannot write {path}: {e}")
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))


def os_error_in(e: Exception, path: str | Path) -> OSError | None:
    """The OSError behind a Rust library's error (safetensors, tokenizers say "... (os error 28)"), naming
    `path`; None where the error is not the file system's."""
    found = re.search(r"os error (\d+)", str(e))
    return None if found is None else write_error(OSError(int(found[1]), os.strerror(int(found[1]))), path)


@contextmanager
def replacing(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """A temp file beside `path` for the body to write; once the body returns, `put_in_place` renames it over
    `path` (durable: flushed to the disk first). On any failure the temp file is removed and `path` is as
    it was. OSErrors name `path`."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # same folder: os.replace stays a rename
    try:
        # The kernel applies the umask to this file as to any new one: its mode is the one a new file gets,
        # read without os.umask(), which would change the umask of every thread for a moment.
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise write_error(e, path) from None
    try:
        mode = stat.S_IMODE((path if path.exists() else temp).stat().st_mode)
        yield temp
        put_in_place(temp, path, mode, durable)
    except OSError as e:
        raise write_error(e, path) from None
    finally:
        temp.unlink(missing_ok=True)  # gone already after a success


def put_in_place(source: Path, path: Path, mode: int | None = None, durable: bool = True) -> None:
    """Rename the finished file `source` over `path` in the same folder, with `mode` (None: `path`'s if it
    exists, else `source`'s own); durable: the file's bytes are on the disk before its new name is, and
    the name is on the disk when this returns."""
    if mode is None and path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    if mode is not None:
        os.chmod(source, mode)
    if durable:
        sync(source)
    os.replace(source, path)
    if durable:
        sync(path.parent)


def sync(path: Path) -> None:
    """fsync a file or a folder (a folder's entries: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if not (e.errno == errno.EINVAL and path.is_dir()):  # a file system that keeps folder entries in sync itself
            raise
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_bytes(data: bytes, path: str | Path, durable: bool = True) -> None:
    """`data` at `path`, whole or not at all (see `replacing`): a PNG, a text file."""
    with replacing(path, durable) as temp:
        _write(temp, data)


def write_text(text: str, path: str | Path, durable: bool = True) -> None:
    write_bytes(text.encode("utf-8"), path, durable)


def write_json(data: Any, path: str | Path, indent: int | None = None, durable: bool = True) -> None:
    """`data` as JSON at `path`, whole or not at all, so that a reader never takes a truncated file for
    the whole."""
    write_text(json.dumps(data, indent=indent) + ("\n" if indent is not None else ""), path, durable)


def library_write(write: Callable[[], Any], path: str | Path) -> None:
    """Run a library's own writer (tokenizers', in Rust, which reports a full disk as "... (os error 28)"),
    its file system's errors raised as OSErrors naming `path`."""
    try:
        write()
    except OSError:
        raise
    except Exception as e:
        error = os_error_in(e, path)
        if error is None:
            raise
        raise error from None


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None,
                     digest: bool = True, durable: bool = True) -> str | None:
    """`safetensors.torch.save_file` through `replacing`; with `digest`, the file carries its digest in its
    metadata (`DIGEST`), which is returned."""
    metadata = dict(metadata or {})
    if digest:
        metadata[DIGEST] = tensor_digest(tensors, metadata)
    with replacing(path, durable) as temp:
        try:
            save_file(tensors, temp, metadata=metadata)  # safetensors replaces `temp` with its own 0600 file
        except SafetensorError as e:
            raise os_error_in(e, path) or e from None
        if len(metadata) > 1:
            _sort_metadata(temp)
    return metadata.get(DIGEST)


def _sort_metadata(path: Path) -> None:
    """safetensors writes the metadata in a random order (a Rust HashMap): sorted here, so that the same
    contents give the same bytes (a resumed run's shards equal an uninterrupted run's). The header keeps
    its length (serde_json and json.dumps write the same JSON, padded with spaces as safetensors pads)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:
            f.seek(8)
            f.write(text.ljust(n))
