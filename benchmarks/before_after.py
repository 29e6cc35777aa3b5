"""A benchmark's clipx timings at an earlier commit and at this checkout, on one machine in one run.

    python benchmarks/before_after.py 137a4dd forward.py --column "clipx s/it" --key 3 -- --images 8 32 --texts 16 64
    python benchmarks/before_after.py 137a4dd explain.py --column "s / call" -- --images 4 --texts 4

The commit's tree is exported to a temporary folder and its own copy of the script runs there against its
own clipx; the two sides take turns (base, here, base, here, ...) so that a machine that slows down or
speeds up during the run weighs on both alike. For every table row both sides print, the median of the
`--column` seconds of each side and here / base (below 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def table_rows(output: str, column: str, key: int) -> dict[tuple[str, ...], float]:
    """{row key (its first `key` cells): seconds} from every markdown table that has `column`."""
    rows, index = {}, None
    for line in output.splitlines():
        if not line.startswith("|"):
            index = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if column in cells:
            index = cells.index(column)
        elif index is not None and not set(cells[0]) <= set("-:"):
            rows[tuple(cells[:key])] = float(cells[index])
    return rows


def run(tree: Path, script: str, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(tree / "benchmarks" / script), *args], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{script} in {tree} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the commit to compare with")
    ap.add_argument("script", help="a script in benchmarks/ that prints a markdown table of seconds")
    ap.add_argument("--column", required=True, help="the header of the seconds column to compare")
    ap.add_argument("--key", type=int, default=1, help="how many leading cells name a row")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    opts = ap.parse_args(argv[:cut])
    opts.args = argv[cut + 1:]  # the script's own arguments, after --
    times: dict[str, dict[tuple, list[float]]] = {"base": {}, "here": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": export(opts.base, Path(tmp)), "here": ROOT}
        for round_ in range(opts.rounds):
            for side, tree in trees.items():
                print(f"round {round_ + 1}: {side}", file=sys.stderr, flush=True)
                for key, seconds in table_rows(run(tree, opts.script, opts.args), opts.column, opts.key).items():
                    times[side].setdefault(key, []).append(seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"{opts.script} {' '.join(opts.args)}: median of {opts.rounds} alternating runs, {opts.column}\n")
    print(f"| row | {opts.base} s | {commit.strip()} s | here / base |\n|---|---:|---:|---:|")
    for key in times["base"]:
        if key in times["here"]:
            base, here = (statistics.median(times[side][key]) for side in ("base", "here"))
            print(f"| {' / '.join(key)} | {base:.3f} | {here:.3f} | {here / base:.2f} |")


if __name__ == "__main__":
    main()
