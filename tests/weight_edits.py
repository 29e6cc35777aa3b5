"""Models edited by hand on their weights: what clipx's interventions must equal."""

from __future__ import annotations

import copy

import torch


def without_heads(model, tower, heads):
    """A copy whose out_proj ignores the heads' outputs: what zero-ablation must equal."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            attn = getattr(edited, tower).blocks[layer].attn
            attn.out_proj.weight[:, head * attn.head_dim:(head + 1) * attn.head_dim] = 0
    return edited
