"""Zero-shot and retrieval on the demo model, where every scene's contents are known, and search latency.

    python benchmarks/retrieval.py [--scenes 1000 --zero-shot 1000 --runs 5]

(a) Retrieval: fresh scenes of 1-3 objects (seeds 50,000 on, which training never draws: its scenes are
    seeded with a split tag) written as PNGs and indexed; each of the 36 colour x shape captions is a
    query, and a hit is correct when its scene holds that colour-shape pair. precision@5 counts only
    queries with at least 5 matching scenes.
(b) Zero-shot: held-out single-object scenes (`clipx.training.single_object_set`) among the 36 classes,
    with the shapes templates' ensemble and with each template alone.
(c) Search latency: exact top-10 over random unit 512-dim float32 embeddings, median of --runs, torch's
    chunked matrix-vector product against FAISS's exact IndexFlatIP (pip install clipx[faiss]), alternated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import clipx
from clipx import shapes, templates
from clipx.apps.index import Index, faiss_index, faiss_top_k, top_k
from clipx.demo.training import single_object_set
from common import cpu_name, time_alternately

SCENE_SEED = 50_000


def retrieval(model: clipx.CLIP, n_scenes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        contents = []
        for k in range(n_scenes):
            scene = shapes.scene(SCENE_SEED + k, n_objects=1 + k % 3)
            scene.image.save(Path(folder) / f"{k:05d}.png")
            contents.append({(o.color, o.shape) for o in scene.objects})
        start = time.perf_counter()
        index = Index.build(model, folder, model_name="demo", progress=False)
        print(f"(a) retrieval: {n_scenes} scenes of 1-3 objects indexed in {time.perf_counter() - start:.1f} s")
        rows = []
        for color in shapes.COLORS:
            for shape in shapes.SHAPES:
                matching = sum((color, shape) in c for c in contents)
                hits = index.search(shapes.name(color, shape), k=5)
                correct = sum((color, shape) in contents[int(Path(h.path).stem)] for h in hits)
                rows.append((shapes.name(color, shape), matching, correct / 5))
    counted = [p for _, matching, p in rows if matching >= 5]
    print(f"{'query':<22} {'matching scenes':>15} {'precision@5':>11}")
    for caption, matching, precision in rows:
        print(f"{caption:<22} {matching:>15} {precision:>11.1f}" + ("" if matching >= 5 else "  (not counted)"))
    perfect = sum(p == 1 for p in counted)
    print(f"mean precision@5 over {len(counted)} queries: {statistics.mean(counted):.3f} "
          f"({perfect} perfect, lowest {min(counted):.1f})")


def zero_shot(model: clipx.CLIP, n: int) -> None:
    pixels, labels = single_object_set(n, seed=SCENE_SEED, model=model)
    print(f"\n(b) zero-shot accuracy, {n} held-out single-object scenes, 36 classes")
    for name, chosen in [("ensemble of " + " | ".join(templates.SHAPES), templates.SHAPES),
                         *((f"single template {t!r}", [t]) for t in templates.SHAPES)]:
        result = clipx.zeroshot(model, pixels, shapes.class_names(), chosen)
        print(f"{name:<52} {(result.predictions == labels).float().mean().item():.3f}")


def latency(runs: int) -> None:
    print(f"\n(c) exact top-10 search, random unit 512-dim float32 embeddings, median of {runs} runs, "
          f"{torch.get_num_threads()} threads, {cpu_name()}: torch (clipx.index.top_k) vs FAISS IndexFlatIP "
          "(Index.search backend='faiss')")
    for n in (100_000, 1_000_000):
        backends(n, runs)


def backends(n: int, runs: int) -> None:
    """Both backends over the same n embeddings and query, alternated; they must agree on the rows."""
    embeddings = F.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    query = F.normalize(torch.randn(512, generator=torch.Generator().manual_seed(1)), dim=0)
    start = time.perf_counter()
    flat = faiss_index(embeddings)
    built = time.perf_counter() - start
    assert torch.equal(faiss_top_k(flat, query, 10)[1], top_k(embeddings, query, 10)[1])
    times = time_alternately({"torch": lambda: top_k(embeddings, query, 10),
                              "faiss": lambda: faiss_top_k(flat, query, 10)}, runs)
    print(f"{n:>9,} embeddings: torch {times['torch'] * 1000:.0f} ms, faiss {times['faiss'] * 1000:.0f} ms "
          f"(faiss / torch {times['faiss'] / times['torch']:.2f}x; its index built in {built:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--zero-shot", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    model = clipx.load("demo")
    retrieval(model, args.scenes)
    zero_shot(model, args.zero_shot)
    latency(args.runs)


if __name__ == "__main__":
    main()
