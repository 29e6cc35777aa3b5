"""clipx.interactions against the exCLIP authors' own `OpenAIExplainer.explain` (exclip 1.1, installed with
`pip install --no-deps exclip==1.1`) on the same random weights and inputs, in the same run, CPU.

    python benchmarks/interactions.py [--layers 4 --width 128 --image-size 64 --patch 8 --pairs 2]
    python benchmarks/interactions.py --layers 12 --width 768 --text-width 512 --embed-dim 512 --image-size 224 \
        --patch 16 --pairs 1 --blocks -1 --steps 2 --no-extras      # one ViT-B/16-shaped pair

A small OpenAI-layout CLIP (tests/openai_layout.py) and clipx loading the same weights: for each block (default
the last and block 1), seconds and peak memory per pair (exclip: one call per pair; clipx: one call for the
B x T pairs), each measured in a process of its own (a second run in one process reuses the first's freed
memory), and the relative max difference; then clipx's B x T scaling and the completeness gap for 1, 5, 10
and 50 steps. The default shapes are the issue's (4 layers, 64 px, width 128).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import clipx
from common import cpu_name
from explain import peak_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from floats import max_relative_error  # noqa: E402
from open_clip_weights import open_clip_state, write_release  # noqa: E402
from openai_layout import OpenAICLIP  # noqa: E402

BOS, EOS = 49406, 49407


def models(args):
    vision = {"image_size": args.image_size, "layers": args.layers, "width": args.width, "head_width": 64,
              "mlp_ratio": 4.0, "patch_size": args.patch}
    text_width = args.text_width or args.width
    text = {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": max(1, text_width // 64),
            "layers": args.layers}
    cfg = {"embed_dim": args.embed_dim or args.width, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True}
    state = open_clip_state(cfg)
    openai = OpenAICLIP(cfg)
    openai.load_state_dict(state)
    return clipx.load(write_release(Path(tempfile.mkdtemp()), state, cfg)), openai.eval()


def inputs(n_images, n_texts, image_size, words=8):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(n_images, 3, image_size, image_size, generator=g) * 0.5
    ids = torch.zeros(n_texts, 77, dtype=torch.long)
    for j in range(n_texts):
        ids[j, 0], ids[j, words + 1] = BOS, EOS
        ids[j, 1:words + 1] = torch.randint(1, BOS, (words,), generator=g)
    return pixels, ids


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread of this process): on a shared machine the CPU time is the
    steadier figure of the two."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def child(args) -> None:
    """One tool at one block in this process: its values [n, n, L, grid, grid] to args.child_out, and a JSON
    line with its seconds and peak memory (after a one-pair, one-step call of the same tool)."""
    from exclip.explanation import OpenAIExplainer

    torch.manual_seed(0)
    model, openai = models(args)
    n, block = args.pairs, args.child_block
    pixels, ids = inputs(n, n, args.image_size, args.words)
    explainer = OpenAIExplainer(openai, image_dim=args.image_size, text_seq_len=77, device=torch.device("cpu"))
    out = {}

    def run_clipx(n=n, steps=args.steps):
        r = clipx.interactions(model, pixels[:n], {"input_ids": ids[:n]}, text_layer=block, image_layer=block,
                               n_steps=steps, text_reference=explainer.txt_ref[0])
        out["values"] = r.values

    def run_exclip(n=n, steps=args.steps):
        values = torch.zeros(n, n, 77, args.image_size // args.patch, args.image_size // args.patch)
        for i in range(n):
            for j in range(n):
                try:
                    a = explainer.explain(ids[j:j + 1], pixels[i:i + 1], text_layer=block, image_layer=block, N=steps)
                finally:
                    explainer.reset_attribution()
                values[i, j, :a.shape[0]] = a
        out["values"] = values

    run = run_clipx if args.child == "clipx" else run_exclip
    run(1, 1)  # one-time costs (lazy imports, first allocations) out of the timing
    seconds = []
    memory = peak_memory(lambda: seconds.extend(cpu_timed(run)))
    torch.save(out["values"], args.child_out)
    print(json.dumps({"seconds": seconds[0], "cpu": seconds[1], "peak": memory}))


def measure(args, tool: str, block: int, folder: Path) -> tuple[float, float, int, torch.Tensor]:
    """(wall and CPU seconds per pair, peak bytes, values) of one tool at one block, in a fresh process."""
    out = folder / f"{tool}-{block}.pt"
    command = [sys.executable, __file__, *sys.argv[1:], "--child", tool, "--child-block", str(block),
               "--child-out", str(out)]
    # a fixed mmap threshold: glibc otherwise raises it as big blocks are freed and then keeps them, so the
    # measured call would reuse the warm-up's memory and read a smaller peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} at block {block} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    pairs = args.pairs ** 2
    return result["seconds"] / pairs, result["cpu"] / pairs, result["peak"], torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--text-width", type=int, help="default: --width")
    parser.add_argument("--embed-dim", type=int, help="default: --width")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2, help="images = captions = this")
    parser.add_argument("--words", type=int, default=8, help="words per caption (between BOS and EOS)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, nargs="+", default=[-1, 1], help="negative counts from the end")
    parser.add_argument("--no-extras", action="store_true", help="skip the B x T scaling and the gap")
    parser.add_argument("--threads", type=int, help="torch threads for both tools (1 on a shared machine: "
                        "waiting threads spin and bill CPU time)")
    parser.add_argument("--child", choices=["clipx", "exclip"], help=argparse.SUPPRESS)
    parser.add_argument("--child-block", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)

    n = args.pairs
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; {args.layers} layers, width {args.width} "
          f"(text {args.text_width or args.width}, embedding {args.embed_dim or args.width}), {args.image_size} px / "
          f"{args.patch}, {n} images x {n} captions of {args.words} words, n_steps {args.steps}; each tool in a "
          "process of its own")
    print("block | exclip s/pair (CPU s) | clipx s/pair (CPU s) | speed-up (CPU) | exclip peak MB | clipx peak MB "
          "| max rel diff")
    with tempfile.TemporaryDirectory() as folder:
        for block in dict.fromkeys(b % args.layers for b in args.blocks):
            t_ours, c_ours, m_ours, ours = measure(args, "clipx", block, Path(folder))
            t_theirs, c_theirs, m_theirs, theirs = measure(args, "exclip", block, Path(folder))
            length = args.words + 2  # exclip cuts the caption after its EOS
            diff = max_relative_error(ours[..., :length, :, :], theirs[..., :length, :, :])
            print(f"{block:5d} | {t_theirs:8.2f} ({c_theirs:7.2f}) | {t_ours:8.3f} ({c_ours:7.3f}) | "
                  f"{t_theirs / t_ours:5.1f}x ({c_theirs / c_ours:5.1f}x) | "
                  f"{m_theirs / 2**20:14.0f} | {m_ours / 2**20:13.0f} | {diff:.1e}", flush=True)
    if args.no_extras:
        return

    torch.manual_seed(0)
    model, openai = models(args)
    from exclip.explanation import OpenAIExplainer
    reference = OpenAIExplainer(openai, image_dim=args.image_size, text_seq_len=77, device=torch.device("cpu")).txt_ref[0]
    pixels, ids = inputs(n, n, args.image_size, args.words)
    print("B x T scaling, last block (clipx, one call):")
    for b, t in ((1, 1), (2, 2), (4, 4), (4, 1), (1, 4)):
        px, tid = inputs(b, t, args.image_size, args.words)
        _, seconds = timed(lambda: clipx.interactions(model, px, {"input_ids": tid}, n_steps=args.steps,
                                                      text_reference=reference))
        print(f"  {b} x {t}: {seconds:.2f} s, {seconds / b / t:.2f} s/pair")

    print("completeness gap (sum of values - the four-term identity), last block, max |gap| / max |identity|:")
    for steps in (1, 5, 10, 50):
        r = clipx.interactions(model, pixels, {"input_ids": ids}, n_steps=steps, text_reference=reference)
        print(f"  n_steps {steps:2d}: max |gap| {r.gap.abs().max():.4f}, max |identity| {r.expected.abs().max():.4f}")


if __name__ == "__main__":
    main()
