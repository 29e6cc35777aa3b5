"""Dataset runs (clipx.runs, clipx.explain_run): shards in item order, errors kept per item, a run killed
with SIGKILL mid-shard resumes to exactly the uninterrupted run's results, a folder is one run, tampered
files are refused and damaged shards redone on resume, a second run into a folder is refused, a full or
read-only disk is an error naming the file; and (slow) torchrun with 2 processes gives the single process's
shards, and a run killed many times the uninterrupted run's bytes."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import clipx
from clipx.runs import runner as runs_module
from clipx import shapes
from clipx.errors import CheckpointError
from clipx.files import DIGEST, read_safetensors
from clipx.runs.explain_dataset import explain_dataset
from clipx.cli import main
from clipx.runs.runner import RunResult, run
from damage import fill_disk, flip_bit, read_only, retype, swap, truncate
from paths import TESTS

WORKER = TESTS / "runs_worker.py"


def squares(batch):
    return [ValueError(f"item {item} is odd") if item % 5 == 3 else {"x": torch.arange(3.0) * item, "label": f"#{item}"}
            for item in batch]


def test_a_run_writes_shards_in_item_order_and_keeps_errors_per_item(tmp_path):
    result = run(tmp_path / "run", list(range(11)), squares, {"task": "squares"}, shard_size=4, batch_size=3,
                 progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".clipx-run.lock", "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
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


def test_results_keep_only_the_tensors_asked_for(tmp_path):
    def two(batch):
        return [{**r, "y": torch.zeros(5)} if isinstance(r, dict) else r for r in squares(batch)]
    result = run(tmp_path, list(range(9)), two, {}, shard_size=4, progress=False)
    assert result.errors == [(3, "ValueError: item 3 is odd"), (8, "ValueError: item 8 is odd")]
    assert all(sorted(r) == ["label"] for _, r, _ in result.results(tensors=()) if r is not None)
    assert all(sorted(r) == ["label", "x"] for _, r, _ in result.results(tensors=("x",)) if r is not None)
    assert all(sorted(r) == ["label", "x", "y"] for _, r, _ in result.results() if r is not None)
    assert torch.equal(result.stack("x"), torch.stack([torch.arange(3.0) * i for i in range(9) if i % 5 != 3]))


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
    with pytest.raises(CheckpointError, match=r"shard-00001.safetensors is not a readable .safetensors file "
                                              r"\(truncated, or another format\).*: run it again to redo the shard"):
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


def same_bytes(a: Path, b: Path) -> bool:
    """The two run folders hold the same shard files, byte for byte (and the same manifest)."""
    names = sorted(p.name for p in a.glob("shard-*.safetensors"))
    return names == sorted(p.name for p in b.glob("shard-*.safetensors")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in [*names, "manifest.json"])


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
    assert same_bytes(tmp_path / "resumed", tmp_path / "whole")
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


DAMAGES = {
    "bit flipped": (lambda p: flip_bit(p, "1/x", bit=30), "is damaged: its contents do not match the digest"),
    "retyped F32 -> I32": (lambda p: retype(p, "1/x", "I32"), "is damaged: its contents do not match the digest"),
    "offsets swapped": (lambda p: swap(p, "0/x", "1/x"), "is damaged: its contents do not match the digest"),
    "truncated": (truncate, r"is not a readable .safetensors file \(truncated, or another format\)"),
    "garbage": (lambda p: p.write_bytes(b"\x07" * 100), r"is not a readable .safetensors file"),
    "empty": (lambda p: p.write_bytes(b""), r"is not a readable .safetensors file"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_shard_is_refused_naming_it(tmp_path, damage):
    change, message = DAMAGES[damage]
    result = run(tmp_path, list(range(8)), squares, {}, shard_size=4, progress=False)
    change(tmp_path / "shard-00001.safetensors")
    with pytest.raises(CheckpointError, match=f"shard-00001.safetensors {message}.*run it again to redo the shard"):
        result.stack("x")
    with pytest.raises(CheckpointError, match="shard-00001.safetensors"):
        result.errors


def test_resume_redoes_the_damaged_shards_saying_which(tmp_path):
    whole = run(tmp_path / "whole", list(range(14)), squares, {}, shard_size=4, progress=False)
    run(tmp_path / "resumed", list(range(14)), squares, {}, shard_size=4, progress=False)
    flip_bit(tmp_path / "resumed" / "shard-00001.safetensors", "2/x", bit=7)
    truncate(tmp_path / "resumed" / "shard-00003.safetensors")
    asked = []

    def counted(batch):
        asked.extend(batch)
        return squares(batch)
    with pytest.warns(UserWarning, match=r"redoing 2 damaged shards:\n  .*shard-00001.safetensors is damaged: its "
                                         r"contents do not match the digest.*\n  .*shard-00003.safetensors is not a "
                                         "readable .safetensors file"):
        resumed = run(tmp_path / "resumed", list(range(14)), counted, {}, shard_size=4, progress=False)
    assert asked == [4, 5, 6, 7, 12, 13]  # shards 1 and 3, nothing else
    assert same_bytes(tmp_path / "resumed", tmp_path / "whole")
    same_results(resumed, whole)


def test_a_shard_without_a_digest_is_refused_in_a_run_that_writes_them_and_read_in_an_older_run(tmp_path):
    """Version 1 runs (clipx before digests) wrote shards without one: they still read and resume."""
    result = run(tmp_path, list(range(8)), squares, {}, shard_size=4, progress=False)
    expected = list(result.results())
    for shard in tmp_path.glob("shard-*.safetensors"):
        tensors, metadata = read_safetensors(shard)
        save_file(tensors, shard, metadata={k: v for k, v in metadata.items() if k != DIGEST})
    with pytest.raises(CheckpointError, match="shard-00000.safetensors carries no digest, which every shard of this "
                                              "run has"):
        list(result.results())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    old = run(tmp_path, list(range(8)), squares, {}, shard_size=4, progress=False)  # resumes: nothing to redo
    assert old.manifest.version == 1
    assert [(i, e) for i, _, e in old.results()] == [(i, e) for i, _, e in expected]
    assert torch.equal(old.stack("x"), torch.stack([r["x"] for _, r, _ in expected if r is not None]))


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow(batch):
        started.set()
        assert release.wait(30)
        return squares(batch)
    first = threading.Thread(target=run, args=(tmp_path / "run", [1, 2, 4], slow, {}), kwargs={"progress": False})
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(BlockingIOError, match=f"{tmp_path / 'run'} is being written by another run, which holds "
                                                  f"{tmp_path / 'run' / '.clipx-run.lock'}: wait for it to end, or run "
                                                  "into another folder"):
            run(tmp_path / "run", [1, 2, 4], squares, {}, progress=False)
    finally:
        release.set()
        first.join()
    assert RunResult(tmp_path / "run").complete
    run(tmp_path / "run", [1, 2, 4], squares, {}, progress=False)  # the first has ended: its lock with it


def test_the_cli_refuses_a_second_run_into_a_folder_in_one_line(tmp_path, capsys):
    images = scenes(tmp_path / "images", 2)
    (tmp_path / "out").mkdir()
    lock = runs_module._lock(tmp_path / "out")  # as another `clipx explain FOLDER --out out` holds it
    try:
        assert main(["explain", str(images), "a red circle", "--out", str(tmp_path / "out")]) == 2
    finally:
        lock.close()
    err = capsys.readouterr().err
    assert err == (f"clipx explain: error: {tmp_path / 'out'} is being written by another run, which holds "
                   f"{tmp_path / 'out' / '.clipx-run.lock'}: wait for it to end, or run into another folder\n")


def test_a_full_disk_is_an_error_naming_the_file_and_the_resume_completes_the_run(tmp_path, monkeypatch):
    whole = run(tmp_path / "whole", list(range(8)), squares, {}, shard_size=4, progress=False)
    with monkeypatch.context() as m:
        tried = fill_disk(m, after=100)
        with pytest.raises(OSError, match=f"No space left on device: '{tmp_path / 'run' / 'manifest.json'}'") as e:
            run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)
    assert e.value.errno == errno.ENOSPC and tried and not any(p.exists() for p in tried)
    assert os.listdir(tmp_path / "run") == [".clipx-run.lock"]
    real_save = runs_module.save_safetensors
    calls = []

    def full_on_the_second_shard(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            fill_disk(monkeypatch, after=100)
        return real_save(tensors, path, metadata=metadata)
    monkeypatch.setattr(runs_module, "save_safetensors", full_on_the_second_shard)
    shard1 = tmp_path / "run" / "shard-00001.safetensors"
    with pytest.raises(OSError, match=f"\\[Errno 28\\] No space left on device: '{shard1}'$"):
        run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)
    assert sorted(os.listdir(tmp_path / "run")) == [".clipx-run.lock", "manifest.json", "shard-00000.safetensors"]
    monkeypatch.undo()
    run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)
    assert same_bytes(tmp_path / "run", tmp_path / "whole")
    same_results(RunResult(tmp_path / "run"), whole)


def test_the_cli_says_a_full_disk_in_one_line_naming_the_shard(tmp_path, monkeypatch, capsys):
    images = scenes(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert main(["explain", str(images), "a red circle", "--out", str(out), "--shard-size", "2"]) == 0
    (out / "shard-00001.safetensors").unlink()
    capsys.readouterr()
    fill_disk(monkeypatch, after=10)
    assert main(["explain", str(images), "a red circle", "--out", str(out), "--shard-size", "2"]) == 2
    err = capsys.readouterr().err  # after the progress bar
    assert err.endswith(f"\nclipx explain: error: [Errno 28] No space left on device: "
                        f"'{out / 'shard-00001.safetensors'}'\n") and "Traceback" not in err


def test_a_complete_run_reads_and_resumes_on_read_only_media(tmp_path, monkeypatch):
    whole = run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)
    expected = [(i, e) for i, _, e in whole.results()]
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    read_only(monkeypatch, tmp_path / "run")
    again = run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)
    assert [(i, e) for i, _, e in again.results()] == expected
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    monkeypatch.undo()
    (tmp_path / "run" / "shard-00001.safetensors").unlink()
    read_only(monkeypatch, tmp_path / "run")
    shard1 = tmp_path / "run" / "shard-00001.safetensors"
    with pytest.raises(OSError, match=f"\\[Errno 30\\] Read-only file system: '{shard1}'$"):
        run(tmp_path / "run", list(range(8)), squares, {}, shard_size=4, progress=False)


@pytest.mark.slow
def test_a_run_killed_many_times_equals_the_uninterrupted_run_byte_for_byte(tmp_path):
    """Killed 10 times, mid-shard and between a shard's write and its rename, with a damaged shard between
    two starts: every start resumes, and the last leaves the uninterrupted run's bytes."""
    images = scenes(tmp_path / "images", 43)  # 45 items, 12 shards of 4: a kill costs the run at most a shard
    whole = worker(images, tmp_path / "whole", "function")
    assert whole.returncode == 0, whole.stderr
    kills = 0
    for k, crash in enumerate([{"CRASH_AFTER": "6"}, {"CRASH_AT_WRITE": "2"}] * 5):
        killed = worker(images, tmp_path / "resumed", "function", env=crash)
        kills += killed.returncode == -9
        if k == 4:
            flip_bit(next((tmp_path / "resumed").glob("shard-*.safetensors")), bit=3)
    assert kills == 10 and not RunResult(tmp_path / "resumed").complete
    resumed = worker(images, tmp_path / "resumed", "function")
    assert resumed.returncode == 0, resumed.stderr
    assert same_bytes(tmp_path / "resumed", tmp_path / "whole")
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
