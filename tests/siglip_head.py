"""SigLIP's attention-pooling head written out by hand from transformers' weights, for the reference checks
that need its attention pattern inside the graph."""

from __future__ import annotations

import torch


def pooling_head_by_hand(hf, tokens):
    """transformers' pooling head written out from its weights: (pattern [B, heads, 1, n], embedding [B, d])."""
    head = hf.vision_model.head
    b, n, d = tokens.shape
    heads = hf.config.vision_config.num_attention_heads
    wq, wk, wv = head.attention.in_proj_weight.chunk(3)
    bq, bk, bv = head.attention.in_proj_bias.chunk(3)
    split = lambda x: x.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(head.probe @ wq.T + bq), split(tokens @ wk.T + bk), split(tokens @ wv.T + bv)
    pattern = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    h = head.attention.out_proj((pattern @ v).transpose(1, 2).reshape(b, 1, d))
    return pattern, (h + head.mlp(head.layernorm(h)))[:, 0]
