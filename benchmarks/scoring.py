"""Shared by the benchmarks that score explanations against ground truth (shapes_eval, segmentation_eval):
the rows of their tables (each method once, some with an option), the maps that know nothing about the
model, and the markdown table."""

from __future__ import annotations

from typing import Any

import torch

from clipx import metrics

# (row name, options); the method is the name before " (": "relevance (all layers)" is relevance; "default"
# is the model's own (default_method in clipx.explain). Relevance's rows name their start layer, whose default
# changed. "legrad" is its default variant (the authors' CLIP path, on every model), "legrad (probe)" the
# authors' SigLIP path (an attention-pooling head re-run on each layer).
ROWS = [("default", {}), ("relevance (last layer)", {"start_layer": -1}), ("relevance (all layers)", {"start_layer": 0}),
        ("rollout", {}),
        ("attention", {}), ("gradcam", {}), ("legrad", {}), ("legrad (probe)", {"variant": "probe"}),
        ("similarity", {}),
        ("similarity (maskclip)", {"variant": "maskclip"}), ("similarity (sclip)", {"variant": "sclip"}),
        ("similarity (clearclip)", {"variant": "clearclip"}), ("similarity (naclip)", {"variant": "naclip"}),
        ("integrated_gradients", {"n_steps": 16}),
        ("occlusion", {}), ("rise", {})]
BASELINES = ("random map", "centre prior")


def method_of(row: str) -> str | None:
    """The method a row runs; None for "default", which `clipx.explain` takes as the model's own."""
    method = row.split(" (")[0]
    return None if method == "default" else method


def rows_named(names: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row, method, options) of the rows with these names, in the order given; a ValueError names one
    that is not a row."""
    known = dict(ROWS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; the rows are: {', '.join(known)}")
    return [(n, method_of(n), known[n]) for n in names]


def baseline_maps(grid: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """The floor every method should beat, on the methods' grid: a random map (seeded, so a resumed run
    draws the same) and a centre prior."""
    return {"random map": torch.rand(grid, generator=torch.Generator().manual_seed(seed)),
            "centre prior": metrics.centre_prior(grid)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Names left-aligned in the first column, figures right-aligned in the others."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
