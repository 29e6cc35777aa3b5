"""Runs over many items that stream their results to disk in shards, resume after any crash with exactly
one result per item, and split across processes under torchrun (torch.distributed).

A run folder holds `manifest.json` (what the run computes, over which items, in shards of what size) and
one `shard-NNNNN.safetensors` per shard of consecutive items. A shard appears under its name only once
written whole and flushed to the disk (temp file + rename), so a run killed at any point (`kill -9`
included) leaves complete shards and at most some temp files. Each shard carries the digest of its
contents: started again, a run redoes the shards that have no file and those that do not match their
digest (a flipped bit, a truncated or foreign file), saying which. Which items a shard holds depends only
on the manifest, never on how many processes ran it, so one process and several give the same shards.
Under torchrun each rank takes the shards `index % world_size == rank`.

While a run writes into a folder it holds the folder's lock (`.clipx-run.lock`, fcntl.flock): a second run
into the same folder, from any process, is refused at once. A complete run needs no writing, so it reads
(and "resumes") on read-only media too.

An item's result is a dict of tensors and JSON values (kept in the shard's metadata, e.g. its captions);
an item whose processing raised is kept as its error message, and the run goes on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import traceback
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..files import DIGEST, make_folder, read_json, read_safetensors, save_safetensors, write_error, write_json

VERSION = 2  # 2: every shard carries its digest. Runs of version 1 (shards without) still read and resume.
LOCK = ".clipx-run.lock"
MANIFEST = "manifest.json"
Result = dict[str, Any]  # tensors, and JSON values
# a batch of items -> one result or one exception per item, in order
Process = Callable[[list[Any]], list["Result | BaseException"]]


def _digest(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


@dataclass
class Manifest:
    """What a run folder computes: `config` (any JSON the caller uses to tell runs apart, e.g. the model and
    method), the items (JSON values: paths, seeds) and the shard size."""

    config: dict[str, Any]
    items: list[Any]
    shard_size: int
    version: int = VERSION

    @property
    def n_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, index: int) -> list[Any]:
        return self.items[index * self.shard_size:(index + 1) * self.shard_size]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "config": self.config, "shard_size": self.shard_size,
                "n_items": len(self.items), "items_sha256": _digest(self.items), "items": self.items}

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        data = read_json(path)
        missing = {"version", "config", "shard_size", "items", "items_sha256"} - set(data)
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}: not a clipx run manifest")
        if type(data["version"]) is not int or not 1 <= data["version"] <= VERSION:
            raise CheckpointError(f"{path} is version {data['version']!r}; this clipx reads versions 1 to {VERSION}")
        if not isinstance(data["items"], list) or _digest(data["items"]) != data["items_sha256"]:
            raise CheckpointError(f"{path}: its item list does not match its checksum (edited or truncated)")
        if not isinstance(data["shard_size"], int) or data["shard_size"] < 1:
            raise CheckpointError(f"{path}: shard_size must be a positive int, got {data['shard_size']!r}")
        return cls(data["config"], data["items"], data["shard_size"], data["version"])


def run(folder: str | Path, items: Sequence[Any], process: Process, config: dict[str, Any],
        shard_size: int = 256, batch_size: int = 16, progress: bool = True) -> RunResult:
    """Process every item in batches, writing a shard per `shard_size` items into `folder`, skipping the
    shards already there whole (a resumed run; a damaged one is redone, with a warning naming it). `config`
    must equal the folder's if it holds a run: a folder is one run, and one run at a time writes into it. Under torchrun, with torch.distributed initialised by the caller's entry point
    (`init_distributed()`), each rank runs its share and waits for the others at the end."""
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be at least 1, got {shard_size} and {batch_size}")
    items = list(items)
    try:
        json.dumps(items)
        json.dumps(config)
    except TypeError as e:
        raise TypeError(f"items and config must be JSON values (paths as str, seeds as int): {e}") from None
    if not items:
        raise ValueError("no items to run over")
    folder = Path(folder)
    rank, world = _distributed()
    manifest = Manifest(config, items, shard_size)
    lock, error = None, None
    if rank == 0:
        try:
            lock = _start(folder, manifest)
        except (OSError, ValueError) as e:
            error = e
    _raise_everywhere(error, world)
    try:
        if rank != 0:
            _check_same(folder, manifest)
        todo = _todo(RunResult(folder), range(rank, manifest.n_shards, world))
        total = sum(len(manifest.shard_items(i)) for i in todo)
        with tqdm(total=total, desc=f"rank {rank}" if world > 1 else "items", disable=not progress,
                  position=rank) as bar:
            for index in todo:
                shard = manifest.shard_items(index)
                results = []
                for start in range(0, len(shard), batch_size):
                    batch = shard[start:start + batch_size]
                    results += _process(process, batch)
                    bar.update(len(batch))
                _write_shard(folder / _shard_name(index), index, shard, results)
        _barrier(world)
        if rank == 0 and lock is not None:
            for temp in folder.glob(".shard-*.tmp"):  # left by a killed run; every shard is whole by now
                temp.unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.close()  # releases the flock
    return RunResult(folder)


def _todo(result: RunResult, indices: range) -> list[int]:
    """The shards among `indices` to (re)do: those without a file, and those whose file is damaged, which
    one warning names with what is wrong."""
    todo, damaged = [], []
    for index in indices:
        if not (result.folder / _shard_name(index)).is_file():
            todo.append(index)
            continue
        try:
            result._shard_rows(index, tensors=())
        except CheckpointError as e:
            todo.append(index)
            damaged.append(str(e))
    if damaged:
        warnings.warn(f"redoing {len(damaged)} damaged shard{'s' * (len(damaged) > 1)}:\n  " + "\n  ".join(damaged),
                      UserWarning, stacklevel=3)
    return todo


def _process(process: Process, batch: list[Any]) -> list[Result | BaseException]:
    """The batch's results; where the batch as a whole fails, each item alone, so one bad item costs itself."""
    try:
        results = process(batch)
    except Exception as e:
        if len(batch) == 1:
            return [e]
        return [r for item in batch for r in _process(process, [item])]
    if len(results) != len(batch):
        raise RuntimeError(f"process returned {len(results)} results for a batch of {len(batch)} items")
    return results


def _write_shard(path: Path, index: int, items: list[Any], results: list[Result | BaseException]) -> None:
    tensors, values, errors = {}, {}, {}
    for position, result in enumerate(results):
        if isinstance(result, BaseException):
            errors[position] = "".join(traceback.format_exception_only(type(result), result)).strip()
            continue
        for name, value in result.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{position}/{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(position, {})[name] = value
    try:
        shard = json.dumps({"index": index, "items_sha256": _digest(items), "n_items": len(items),
                            "errors": errors, "values": values})
    except TypeError as e:
        raise TypeError(f"a result holds a value that is neither a tensor nor JSON: {e}") from None
    metadata = {"clipx_run_shard": shard}
    save_safetensors(tensors, path, metadata=metadata)


def _start(folder: Path, manifest: Manifest) -> IO[str] | None:
    """Take the folder's lock, then write the manifest of a new run or check that the folder's run is this
    one. Returns the lock, None where the folder cannot be written (then only a complete run succeeds)."""
    there = (folder / MANIFEST).is_file()
    if not there and folder.is_dir() and any(not _ours(p.name) for p in folder.iterdir()):
        raise ValueError(f"{folder} is not empty and holds no run manifest: pick an empty or new folder")
    make_folder(folder)
    lock = _lock(folder)
    try:
        if there:
            _check_same(folder, manifest)
        else:
            write_json(manifest.to_json(), folder / MANIFEST)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    return lock


def _ours(name: str) -> bool:
    """Files a run leaves in a folder before its manifest: a killed start's temp file, the lock."""
    return name.endswith(".tmp") or name == LOCK


def _lock(folder: Path) -> IO[str] | None:
    """The folder's lock, held (fcntl.flock) until the returned file is closed, or None where the folder is
    read-only. Another run holding it is a BlockingIOError naming the folder. The lock file is never
    written to: a run that finds nothing to do changes nothing in the folder."""
    import fcntl  # POSIX; here, so that reading runs needs no fcntl

    path = folder / LOCK
    try:
        f = open(path, "a", encoding="utf-8")
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return None
        raise write_error(e, path) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BlockingIOError(f"{folder} is being written by another run, which holds {path}: wait for it to "
                              "end, or run into another folder") from None
    return f


def _check_same(folder: Path, manifest: Manifest) -> None:
    there = Manifest.read(folder)
    for field, ours, theirs in (("config", manifest.config, there.config),
                                ("shard_size", manifest.shard_size, there.shard_size)):
        if ours != theirs:
            field, theirs, ours = _difference(field, theirs, ours)
            raise ValueError(f"{folder} holds another run: its {field} is {theirs!r}, this run's {ours!r}; "
                             "resume with the same settings or use another folder")
    if there.items != manifest.items:
        raise ValueError(f"{folder} holds a run over other items ({len(there.items)} items there, "
                         f"{len(manifest.items)} here): resume with the same items or use another folder")


def _difference(where: str, there: Any, here: Any) -> tuple[str, Any, Any]:
    """Where two unequal JSON values first differ, and their values there: a config names the dataset's
    fingerprint or each shard file's state, and the one that changed is what the user needs to see."""
    if isinstance(there, dict) and isinstance(here, dict) and there.keys() == here.keys():
        key = next(k for k in there if there[k] != here[k])
        return _difference(where + (f".{key}" if key.isidentifier() else f"[{key!r}]"), there[key], here[key])
    if isinstance(there, list) and isinstance(here, list) and len(there) == len(here):
        i = next(i for i, (a, b) in enumerate(zip(there, here)) if a != b)
        return _difference(f"{where}[{i}]", there[i], here[i])
    return where, there, here


def init_distributed() -> tuple[int, int]:
    """For a script's entry point (the CLI's is one): initialise torch.distributed from the environment
    torchrun sets (gloo on CPU, NCCL where CUDA is), unless a group is up already or the run is one
    process. Returns (rank, world size). Library calls never initialise it: that is the caller's choice."""
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and _torchrun_world_size() > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _distributed()


def _torchrun_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1). Under torchrun without a group
    every process would run every shard, so that is refused, naming the fix."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = _torchrun_world_size()
    if world > 1:
        raise RuntimeError(f"this process is one of {world} that torchrun started (WORLD_SIZE={world}), but "
                           "torch.distributed is not initialised, so each would run every shard: call "
                           "clipx.runs.init_distributed() (or torch.distributed.init_process_group()) in the "
                           "script's entry point first")
    return 0, 1


def _raise_everywhere(error: Exception | None, world: int) -> None:
    """Rank 0's failure to start the run, raised on every rank: the others would wait for it for ever."""
    if world > 1:
        import torch.distributed as dist

        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            raise RuntimeError(f"rank 0 could not start the run: {message[0]}")
    if error is not None:
        raise error


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class RunResult:
    """A run folder read back: `results()` yields (item, result dict or None, error or None) in item
    order, a shard at a time (memory stays flat); `errors` lists the items that failed; `complete` says
    whether every shard is there."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config

    def __len__(self) -> int:
        return len(self.manifest.items)

    def missing_shards(self) -> list[int]:
        return [i for i in range(self.manifest.n_shards) if not (self.folder / _shard_name(i)).is_file()]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    def results(self, tensors: Container[str] | None = None) -> Iterator[tuple[Any, Result | None, str | None]]:
        """Every item's (item, result, error); `tensors` names the tensors to read (None: all of them)."""
        missing = self.missing_shards()
        if missing:
            raise ValueError(f"{self.folder}: the run is incomplete, shards {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''} of {self.manifest.n_shards} are missing; "
                             "run it again to finish")
        for index in range(self.manifest.n_shards):
            yield from self._read_shard(index, tensors)

    def __repr__(self) -> str:
        missing, n_shards = self.missing_shards(), self.manifest.n_shards
        done = "complete" if not missing else f"{n_shards - len(missing)} of {n_shards} shards done"
        try:  # counted from the shards' headers: a repr reads no tensor (`errors` checks the shards whole)
            failed = f"{sum(self._failed_in(index) for index in range(n_shards) if index not in missing)} failed"
        except (SafetensorError, OSError, ValueError, AttributeError):
            failed = "a shard unreadable (.results() says which)"
        return f"RunResult({str(self.folder)!r}: {len(self)} items in {n_shards} shards, {done}, {failed})"

    def _failed_in(self, index: int) -> int:
        with safe_open(str(self.folder / _shard_name(index)), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("clipx_run_shard", "null") or "null")
        return len(meta["errors"]) if isinstance(meta, dict) and isinstance(meta.get("errors"), dict) else 0

    @property
    def errors(self) -> list[tuple[Any, str]]:
        # the errors are in the shards' metadata: no tensor is kept
        return [(item, error) for item, _, error in self.results(tensors=()) if error is not None]

    def stack(self, name: str) -> torch.Tensor:
        """Every successful item's `name` stacked, in item order (items that failed are left out: `errors`)."""
        return torch.stack([result[name] for _, result, _ in self.results(tensors=(name,)) if result is not None])

    def _read_shard(self, index: int, tensors: Container[str] | None) -> list[tuple[Any, Result | None, str | None]]:
        try:
            return self._shard_rows(index, tensors)
        except CheckpointError as e:
            raise CheckpointError(f"{e}: run it again to redo the shard") from None

    def _shard_rows(self, index: int, tensors: Container[str] | None) -> list[tuple[Any, Result | None, str | None]]:
        """Shard `index`'s (item, result, error) rows, the whole file checked against its digest first (a
        CheckpointError naming the shard where it does not match, or is not this run's shard `index`)."""
        path, items = self.folder / _shard_name(index), self.manifest.shard_items(index)
        try:
            results, errors = self._shard_contents(path, index, items, tensors)
        except CheckpointError:
            raise
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{path} is not a readable shard of this run ({type(e).__name__}: {e})") from None
        return [(item, None if position in errors else results[position], errors.get(position))
                for position, item in enumerate(items)]

    def _shard_contents(self, path: Path, index: int, items: list[Any],
                        tensors: Container[str] | None) -> tuple[list[Result], dict[int, str]]:
        stored, metadata = read_safetensors(path)
        if DIGEST not in metadata and self.manifest.version >= 2:
            raise CheckpointError(f"{path} carries no digest, which every shard of this run has (a file from "
                                  "elsewhere, or its header edited)")
        meta = json.loads(metadata.get("clipx_run_shard", "null") or "null")
        if not isinstance(meta, dict) or meta.get("index") != index or meta.get("items_sha256") != _digest(items):
            raise CheckpointError(f"{path} does not hold shard {index} of this run's items (moved from "
                                  "another run, or tampered with)")
        results: list[Result] = [{} for _ in items]
        for key, tensor in stored.items():
            position, name = key.split("/", 1)
            if tensors is None or name in tensors:
                results[int(position)][name] = tensor
        errors = {int(k): v for k, v in meta.get("errors", {}).items()}
        for position, named in meta.get("values", {}).items():
            results[int(position)].update(named)
        return results, errors
