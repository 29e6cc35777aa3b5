"""Throughput of explanations over a folder: a plain per-image `clipx.explain` loop, `explain_dataset` in one
process, and `explain_dataset` under torchrun with 2 processes (gloo), in images per second, same run.

    python benchmarks/dataset_runs.py [--images 480 --method relevance --model demo]

Each image is explained against the same 4 captions. Every process runs one thread (torchrun's default
OMP_NUM_THREADS=1; the loop and the single process are set to match), so two processes use two cores.
Each run's time is measured inside it, around the work alone (no imports, no model loading).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import clipx
from clipx import shapes
from clipx.runs.explain_dataset import explain_dataset
from clipx.runs.runner import init_distributed

CAPTIONS = ["a red circle", "a blue square", "a green star", "a yellow cross"]


def worker(args) -> None:
    init_distributed()
    model = clipx.load(args.model)
    start = time.perf_counter()
    explain_dataset(model, args.folder, args.out, CAPTIONS, method=args.method, shard_size=args.shard_size,
                    batch_size=args.batch_size, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:  # explain_dataset ends at a barrier: rank 0's time covers all
        print(f"SECONDS {time.perf_counter() - start}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--method", default="relevance")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k in range(args.images):
            shapes.scene(seed=70_000 + k, n_objects=2).image.save(folder / f"{k:05d}.png")
        paths = sorted(folder.iterdir())
        model = clipx.load(args.model)

        def loop() -> float:
            torch.set_num_threads(1)
            start = time.perf_counter()
            for path in paths:
                with Image.open(path) as image:
                    clipx.explain(model, [image.convert("RGB")], CAPTIONS, method=args.method)
            return time.perf_counter() - start

        def launch(out: str, torchrun: bool) -> float:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] \
                if torchrun else [sys.executable]
            command = [*launcher, __file__, "--worker", "--folder", str(folder), "--out", str(Path(tmp) / out),
                       "--model", args.model, "--method", args.method, "--shard-size", str(args.shard_size),
                       "--batch-size", str(args.batch_size)]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
            output = subprocess.run(command, check=True, env=env, capture_output=True, text=True).stdout
            return float(next(line.split()[1] for line in output.splitlines() if line.startswith("SECONDS")))

        launch("warm", torchrun=False)  # file caches warm for all three
        rows = [("per-image clipx.explain loop", loop()),
                ("explain_dataset, 1 process", launch("one", torchrun=False)),
                ("explain_dataset, torchrun 2 processes", launch("two", torchrun=True))]

    # benchmarks/common.py imports transformers: here, not at the top, which the timed workers import too
    from common import cpu_name

    print(f"\n{args.images} two-object scenes x {len(CAPTIONS)} captions, method {args.method}, model {args.model}; "
          f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, one thread per process\n")
    print("| how | images / s | vs the loop |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {args.images / seconds:.1f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
