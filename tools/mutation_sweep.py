"""Mutation sweep: does the fast test suite notice when an explanation formula is broken?

For each mutation: copy the checkout (tracked files, plus untracked ones git does not ignore, so new
tests count before they are committed) to a temporary folder, make one exact text replacement there,
run `pytest -x` on that copy, and report whether any test failed. Exits 1 if a mutation survives.

    python tools/mutation_sweep.py                       # every mutation, the whole fast suite
    python tools/mutation_sweep.py --only gradcam-relu   # one mutation
    python tools/mutation_sweep.py -- -k formulas        # extra pytest arguments after --
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (file, exact text, replacement); each text must occur exactly once in its file
MUTATIONS = {
    "gradcam-relu": ("clipx/explain/method/gradcam.py",
                     "((activations * weights[:, None]).sum(-1)).clamp(min=0) * keep",
                     "((activations * weights[:, None]).sum(-1)) * keep"),
    "maskclip-ln1": ("clipx/model/towers.py",
                     "last.attn.v_proj(last.ln1(tokens))", "last.attn.v_proj(tokens)"),
    "sclip-kk": ("clipx/explain/method/last_block.py",
                 "softmax(q @ q.transpose(-1, -2) * attn.scale) + softmax(k @ k.transpose(-1, -2) * attn.scale)",
                 "softmax(q @ q.transpose(-1, -2) * attn.scale)"),
    "sclip-mlp": ("clipx/explain/method/last_block.py", "return x + last.mlp(last.ln2(x))", "return x"),
    "clearclip-qq": ("clipx/explain/method/last_block.py",
                     "weights = softmax(q @ q.transpose(-1, -2) * attn.scale)\n    else:",
                     "weights = softmax(q @ k.transpose(-1, -2) * attn.scale)\n    else:"),
    "naclip-grid": ("clipx/explain/method/last_block.py", "neighbourhood(grid, prefix,",
                    "neighbourhood(grid[::-1], prefix,"),
    "legrad-relu": ("clipx/explain/method/legrad.py", "grads[0].clamp(min=0).mean(1)", "grads[0].mean(1)"),
    "rollout-identity": ("clipx/explain/method/rollout.py", "pattern.mean(1) + torch.eye(",
                         "pattern.mean(1) + 0 * torch.eye("),
    "relevance-relu": ("clipx/explain/method/relevance.py", "(grad * pattern).clamp(min=0)", "(grad * pattern)"),
    "relevance-grad-sign": ("clipx/explain/method/relevance.py", "(grad * pattern).clamp(min=0)",
                            "(-grad * pattern).clamp(min=0)"),
    # the one place that turns embeddings into a score (forward, `inputs.scores`, the perturbation methods),
    # and the decomposition, which gives the bias as a part of its own
    "bias-logits": ("clipx/model/clip.py", "return logits + self.logit_bias.to(image_embeds.dtype)",
                    "return logits"),
    "bias-decompose": ("clipx/mech/decompose.py", "            if model.logit_bias is not None:", "            if False:"),
}


def checkout_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]  # a deleted tracked file is skipped


def check_mutation(name: str) -> None:
    path, old, _ = MUTATIONS[name]
    count = (ROOT / path).read_text().count(old)
    if count != 1:
        sys.exit(f"mutation {name}: the text to replace occurs {count} times in {path}, not once:\n{old}")


def copy_with(name: str | None, dest: Path) -> None:
    for f in checkout_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    if name is not None:
        path, old, new = MUTATIONS[name]
        (dest / path).write_text((dest / path).read_text().replace(old, new))


def run_suite(name: str | None, pytest_args: list[str]) -> tuple[bool, str, float]:
    """(whether some test failed, the first failing test or the tail of the output, seconds)."""
    with tempfile.TemporaryDirectory(prefix="clipx-mutant-") as tmp:
        copy_with(name, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        where = subprocess.run([sys.executable, "-c", "import clipx; print(clipx.__file__)"], cwd=tmp, env=env,
                               check=True, capture_output=True, text=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(Path(tmp).resolve()):  # else the mutant is not under test
            sys.exit(f"import clipx resolves to {where}, not to the copy in {tmp}")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests",
                               *pytest_args], cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    if proc.returncode == 0:
        return False, "", seconds
    # exit 1: tests failed; 5: none collected (a -k that matched nothing); others: pytest itself broke
    detail = failed.group(1) if failed else f"pytest exit {proc.returncode}: " + output.strip()[-300:]
    return proc.returncode == 1, detail, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(MUTATIONS), help="run this mutation (repeatable)")
    parser.add_argument("--baseline", action="store_true", help="first check the unmutated copy passes")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    names = args.only or list(MUTATIONS)
    for name in names:  # all checked before the slow part
        check_mutation(name)
    if args.baseline:
        failed, detail, seconds = run_suite(None, args.pytest_args)
        if failed or detail:
            sys.exit(f"the unmutated suite does not pass ({seconds:.0f} s): {detail}")
        print(f"baseline passes ({seconds:.0f} s)", file=sys.stderr)
    rows, survivors = [], 0
    for name in names:
        caught, detail, seconds = run_suite(name, args.pytest_args)
        if not caught and detail:
            sys.exit(f"mutation {name}: {detail}")
        survivors += not caught
        rows.append(f"| {name} | {'yes' if caught else '**NO**'} | {detail or '-'} |")
        print(f"{name}: {'caught' if caught else 'SURVIVED'} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print("| mutation | caught? | first failing test |\n|---|---|---|\n" + "\n".join(rows))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
