"""SigLIP's attention-pooling head written out by hand from transformers' weights, for the reference checks
that need its attention pattern inside the graph, and LeGrad's SigLIP path (WalBouss/LeGrad's
`compute_legrad_siglip`) written out on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooling_head_by_hand(hf, tokens, mask=None):
    """transformers' pooling head written out from its weights, the padding (`mask` [B, n] 0) masked out as
    keys: (pattern [B, heads, 1, n], embedding [B, d])."""
    head = hf.vision_model.head
    b, n, d = tokens.shape
    heads = hf.config.vision_config.num_attention_heads
    wq, wk, wv = head.attention.in_proj_weight.chunk(3)
    bq, bk, bv = head.attention.in_proj_bias.chunk(3)
    split = lambda x: x.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(head.probe.expand(b, -1, -1) @ wq.T + bq), split(tokens @ wk.T + bk), split(tokens @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None], -torch.inf)
    pattern = torch.softmax(scores, dim=-1)
    h = head.attention.out_proj((pattern @ v).transpose(1, 2).reshape(b, 1, d))
    return pattern, (h + head.mlp(head.layernorm(h)))[:, 0]


def min_max(maps):
    low, high = maps.amin(-1, keepdim=True), maps.amax(-1, keepdim=True)
    return (maps - low) / (high - low)


def legrad_authors(hf, px, tok, layers, neutral_tok=None, threshold=0.8, ln_post=False):
    """Their SigLIP path, one image and one caption at a time: for each layer, the pooling head on the block's
    output (no post_layernorm: their hook feeds `feat_post_mlp` to `attn_pool`), s = caption . unit pooled
    feature, relu(ds / d probe attention) averaged over heads, the probe's row; summed over layers. With a
    neutral prompt, the same map of s = pooled . neutral, min-max normalised, > threshold zeroes the caption's
    sum; then min-max."""
    maps = []
    for i in range(px.shape[0]):
        for j in range(len(tok.input_ids)):
            out = hf(pixel_values=px[i:i + 1], input_ids=tok.input_ids[j:j + 1],
                     attention_mask=tok.attention_mask[j:j + 1], output_hidden_states=True)
            neutral = None if neutral_tok is None else hf(
                pixel_values=px[i:i + 1], input_ids=neutral_tok.input_ids,
                attention_mask=neutral_tok.attention_mask).text_embeds.detach()  # unit, as transformers returns it
            own, empty = 0, 0
            for l in layers:
                tokens = out.vision_model_output.hidden_states[l + 1]
                if ln_post:
                    tokens = hf.vision_model.post_layernorm(tokens)
                pattern, pooled = pooling_head_by_hand(hf, tokens)
                pooled = F.normalize(pooled, dim=-1)
                grad = torch.autograd.grad((out.text_embeds @ pooled.T).sum(), pattern, retain_graph=True)[0]
                own += grad.clamp(min=0).mean(1)[0, 0]
                if neutral is not None:
                    grad = torch.autograd.grad((pooled @ neutral.T).sum(), pattern, retain_graph=True)[0]
                    empty += grad.clamp(min=0).mean(1)[0, 0]
            if neutral is not None:
                own = own.masked_fill(min_max(empty) > threshold, 0)
            maps.append(own.detach())
    return min_max(torch.stack(maps).view(px.shape[0], len(tok.input_ids), -1))
