"""Dataset runs (clipx.runs, clipx.explain_run): shards in item order, errors kept per item, a run killed
with SIGKILL mid-shard resumes to exactly the uninterrupted run's results, a folder is one run, tampered
files are refused; and (slow) torchrun with 2 processes gives the single process's shards."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import clipx
from clipx.runs import runner as runs_module
from clipx import shapes
from clipx.errors import CheckpointError
from clipx.runs.explain_dataset import explain_dataset
from clipx.runs.runner import RunResult, run
from paths import TESTS

WORKER = TESTS / "runs_worker.py"


def squares(batch):
    return [ValueError(f"item {item} is odd") if item % 5 == 3 else {"x": torch.arange(3.0) * item, "label": f"#{item}"}
            for item in batch]


def test_a_run_writes_shards_in_item_order_and_keeps_errors_per_item(tmp_path):
    result = run(tmp_path / "run", list(range(11)), squares, {"task": "squares"}, shard_size=4, batch_size=3,
                 progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    rows = list(result.results())
    assert [item for item, _, _ in rows] == list(range(11))
    assert result.errors == [(3, "ValueError: item 3 is odd"), (8, "ValueError: item 8 is odd")]
    assert torch.equal(result.stack("x"), torch.stack([torch.arange(3.0) * i for i in range(11) if i % 5 != 3]))
    assert rows[4][1]["label"] == "#4" and rows[3][1] is None
    assert result.complete and len(result) == 11
    folder = str(tmp_path / "run")
    assert repr(result) == f"RunResult({folder!r}: 11 items in 3 shards, complete, 2 failed)"
    (tmp_path / "run" / "shard-00000.safetensors").unlink()  # a run half done: what is there so far
    assert repr(RunResult(folder)) == f"RunResult({folder!r}: 11 items in 3 shards, 2 of 3 shards done, 1 failed)"
    (tmp_path / "run" / "shard-00001.safetensors").write_bytes(b"not a shard")
    assert "a shard unreadable" in repr(RunResult(folder))


def test_errors_read_no_tensor_and_stack_reads_only_its_own(tmp_path, monkeypatch):
    def two(batch):
        return [{**r, "y": torch.zeros(5)} if isinstance(r, dict) else r for r in squares(batch)]
    result = run(tmp_path, list(range(9)), two, {}, shard_size=4, progress=False)
    read = []

    class Counting:  # safe_open, noting every tensor read
        def __init__(self, *args):
            self.file = safe_open(*args)

        def __enter__(self):
            self.f = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, key):
            read.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(runs_module, "safe_open", Counting)
    assert result.errors == [(3, "ValueError: item 3 is odd"), (8, "ValueError: item 8 is odd")] and read == []
    assert torch.equal(result.stack("x"), torch.stack([torch.arange(3.0) * i for i in range(9) if i % 5 != 3]))
    assert sorted(read) == sorted(f"{i % 4}/x" for i in range(9) if i % 5 != 3)
    read.clear()
    assert all(sorted(r) == ["label", "x", "y"] for _, r, _ in result.results() if r is not None) and len(read) == 14


def test_a_batch_that_raises_is_retried_item_by_item(tmp_path):
    def fussy(batch):
        if 6 in batch:
            raise RuntimeError("item 6 spoils its batch")
        return squares(batch)
    result = run(tmp_path, list(range(9)), fussy, {}, shard_size=9, batch_size=4, progress=False)
    assert [item for item, _ in result.errors] == [3, 6, 8]
    assert "item 6 spoils its batch" in dict(result.errors)[6]
    assert len(result.stack("x")) == 6


def test_a_folder_is_one_run(tmp_path):
    run(tmp_path / "a", [1, 2], squares, {"method": "relevance"}, progress=False)
    with pytest.raises(ValueError, match="its config.method is 'relevance', this run's 'rollout'"):
        run(tmp_path / "a", [1, 2], squares, {"method": "rollout"}, progress=False)
    with pytest.raises(ValueError, match="over other items \\(2 items there, 3 here\\)"):
        run(tmp_path / "a", [1, 2, 4], squares, {"method": "relevance"}, progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no run manifest"):
        run(tmp_path / "b", [1], squares, {}, progress=False)
    with pytest.raises(ValueError, match="no items"):
        run(tmp_path / "c", [], squares, {}, progress=False)
    with pytest.raises(TypeError, match="JSON values"):
        run(tmp_path / "c", [Path("x.png")], squares, {}, progress=False)


def test_tampered_runs_are_refused(tmp_path):
    result = run(tmp_path, list(range(8)), squares, {}, shard_size=4, progress=False)
    shard0, shard1 = tmp_path / "shard-00000.safetensors", tmp_path / "shard-00001.safetensors"
    shutil.copy(shard0, shard1)
    with pytest.raises(CheckpointError, match="does not hold shard 1 of this run's items"):
        list(result.results())
    shard1.write_bytes(shard0.read_bytes()[:-20])  # cut short: safetensors' own error, named as the run's
    with pytest.raises(CheckpointError, match=r"shard-00001.safetensors is not a readable shard of this run"):
        list(result.results())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["items"][0] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        RunResult(tmp_path)


def scenes(folder: Path, n: int) -> Path:
    folder.mkdir()
    for k in range(n):
        shapes.scene(seed=60_000 + k, n_objects=1).image.save(folder / f"scene-{k:02d}{'x' * (k % 3)}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    shapes.scene(seed=60_100).image.save(folder / "no-caption.png")
    return folder


def worker(*args, env=None, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    return subprocess.run([*launcher, str(WORKER), *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def same_results(a: RunResult, b: RunResult) -> None:
    rows_a, rows_b = list(a.results()), list(b.results())
    assert [item for item, _, _ in rows_a] == [item for item, _, _ in rows_b]
    assert len({item for item, _, _ in rows_a}) == len(rows_a)  # one result per item
    for (_, ra, ea), (_, rb, eb) in zip(rows_a, rows_b):
        assert ea == eb
        if ra is not None:
            assert ra.keys() == rb.keys() and all(
                torch.equal(ra[k], rb[k]) if isinstance(ra[k], torch.Tensor) else ra[k] == rb[k] for k in ra)


def test_a_run_killed_mid_shard_resumes_to_the_uninterrupted_result(tmp_path):
    images = scenes(tmp_path / "images", 13)
    whole = worker(images, tmp_path / "whole", "function")
    assert whole.returncode == 0, whole.stderr
    killed = worker(images, tmp_path / "resumed", "function", env={"CRASH_AFTER": "7"})
    assert killed.returncode == -9
    interrupted = RunResult(tmp_path / "resumed")
    assert 0 < len(interrupted.missing_shards()) < interrupted.manifest.n_shards  # shard 0 whole, the rest not
    (tmp_path / "resumed" / ".shard-00002.safetensors.0bad.tmp").write_bytes(b"half a shard")
    resumed = worker(images, tmp_path / "resumed", "function")
    assert resumed.returncode == 0, resumed.stderr
    result = RunResult(tmp_path / "resumed")
    same_results(result, RunResult(tmp_path / "whole"))
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
    errors = {Path(item).name: error for item, error in result.errors}
    assert errors.keys() == {"broken.png", "no-caption.png"}
    assert "no caption for no-caption.png" in errors["no-caption.png"]


def test_explain_dataset_equals_explain_per_image_and_refuses_an_empty_folder(tmp_path):
    images = scenes(tmp_path / "images", 4)
    demo = clipx.load("demo")
    captions = ["a red circle", "a blue square"]
    result = explain_dataset(demo, images, tmp_path / "run", captions, method="rollout", batch_size=2, progress=False)
    rows = [(item, r) for item, r, _ in result.results() if r is not None]
    assert len(rows) == 5 and [Path(i).name for i, _ in result.errors] == ["broken.png"]
    for item, r in rows:
        exp = clipx.explain(demo, [Image.open(item)], captions, method="rollout")
        torch.testing.assert_close(r["image"], exp.image[0].float(), rtol=1e-5, atol=1e-6)
        assert r["captions"] == captions
    assert result.config["method"] == "rollout" and result.config["captions"] == captions
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        explain_dataset(demo, tmp_path / "empty", tmp_path / "run2", captions)


@pytest.mark.slow
def test_torchrun_with_two_processes_gives_the_single_process_shards(tmp_path):
    images = scenes(tmp_path / "images", 14)
    single = worker(images, tmp_path / "single")
    assert single.returncode == 0, single.stderr
    double = worker(images, tmp_path / "double", torchrun=True)
    assert double.returncode == 0, double.stderr + double.stdout
    same_results(RunResult(tmp_path / "double"), RunResult(tmp_path / "single"))


def test_a_library_call_never_initialises_torch_distributed(tmp_path, monkeypatch):
    """Under torchrun without a process group, run() refuses (each process would run every shard) and
    leaves torch.distributed as it found it; init_distributed() is the entry point's explicit step."""
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2.*clipx\.runs\.init_distributed\(\)"):
        run(tmp_path / "run", [1, 2, 3], lambda batch: [{"x": torch.zeros(1)} for _ in batch], {}, progress=False)
    assert not dist.is_initialized() and not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert runs_module.init_distributed() == (0, 1) and not dist.is_initialized()
