"""The layers a tower is built of, each chosen by its config: the norm (LayerNorm or RMSNorm), the MLP
(plain or SwiGLU), the block (pre- or post-norm), and the attention-pooling heads. A family describes its
blocks with config fields (`norm_type`, `norm_position`, `mlp_type`, the biases); nothing here knows a
family by name.

Module and hook names follow TransformerLens (`ln1`, `attn`, `mlp`, `hook_resid_mid`, `hook_post`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .config import TowerConfig
from .hooks import HookPoint
from ..preprocess.naflex import patchify


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """quick_gelu into x's own memory, the same operations in the same order (the same bits)."""
    return x.mul_(torch.mul(x, 1.702).sigmoid_())


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported hidden_act {name!r}; clipx knows {sorted(ACTIVATIONS)}") from None


class LinearPatchEmbedding(nn.Linear):
    """A linear map of each flattened patch (NaFlex's patch embedding). On images [B, C, H, W] it returns the
    [B, d, grid_h, grid_w] map a convolution returns, so that what takes the patch embedding's output as a
    grid (Captum's layer methods) sees one layout for both kinds; `flat` embeds patches already cut
    [B, L, p * p * C] (each image on its own grid, padded)."""

    def __init__(self, patch_size: int, channels: int, width: int, bias: bool) -> None:
        super().__init__(patch_size * patch_size * channels, width, bias=bias)
        self.patch_size = patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        p = self.patch_size
        grid_h, grid_w = h // p, w // p  # pixels past the last whole patch are dropped, as a convolution does
        tokens = self.flat(patchify(pixel_values[..., :grid_h * p, :grid_w * p], p))
        return tokens.transpose(1, 2).reshape(b, -1, grid_h, grid_w)

    def flat(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__(width, eps=eps)
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(super().forward(x))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, no mean and no bias, computed in float32 (as transformers' AIMv2 and Llama)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.hook_normalized(self.weight * h.to(x.dtype))


def norm(config: TowerConfig, width: int | None = None) -> LayerNorm | RMSNorm:
    """The tower's kind of norm (`config.norm_type`) over `width` features (the hidden size by default)."""
    cls = RMSNorm if config.norm_type == "rmsnorm" else LayerNorm
    return cls(width or config.hidden_size, config.layer_norm_eps)


class MLP(nn.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = activation(config.hidden_act)
        self.hook_pre = HookPoint()   # [batch, pos, d_mlp], before the activation
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], after it

    def forward(self, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        h = self.hook_pre(self.fc1(x))
        if overwrite and self.act is quick_gelu and not self.hook_pre.active:
            h = quick_gelu_(h)
        else:
            h = self.act(h)
        return self.fc2(self.hook_post(h))


class SwiGLU(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)), as AIMv2 and Llama have it."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        d, d_mlp, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, d_mlp, bias=bias)
        self.up_proj = nn.Linear(d, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d, bias=bias)
        self.act = activation(config.hidden_act)
        self.hook_pre = HookPoint()   # [batch, pos, d_mlp], the gate before the activation
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], what down_proj reads: act(gate) * up

    def forward(self, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        return self.down_proj(self.hook_post(self.act(self.hook_pre(self.gate_proj(x))) * self.up_proj(x)))


def mlp(config: TowerConfig) -> MLP | SwiGLU:
    return SwiGLU(config) if config.mlp_type == "swiglu" else MLP(config)


class Block(nn.Module):
    """Attention then MLP, each added to the residual stream: pre-norm (`x + f(norm(x))`, CLIP, SigLIP,
    AIMv2) or post-norm (`norm(x + f(x))`, BERT), as `config.norm_position` says. `hook_resid_mid` is
    the stream between the two sublayers: after ln1, post-norm."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.ln1 = norm(config)
        self.attn = Attention(config.hidden_size, config.num_attention_heads, bias=config.attention_bias)
        self.ln2 = norm(config)
        self.mlp = mlp(config)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, overwrite: bool = False,
                **attn_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`overwrite`: the sublayers' fresh outputs may take the residual sums in place (see
        `Tower.fast_path`), where no hook point holds them."""
        x = self.hook_resid_pre(x)
        attn_out, pattern = self.attn(x if self.post_norm else self.ln1(x), **attn_kwargs)
        attn_out = self.hook_attn_out(attn_out)
        x = _add(attn_out, x, overwrite and not (self.hook_attn_out.active or self.attn.hook_out.active))
        x = self.hook_resid_mid(self.ln1(x) if self.post_norm else x)
        mlp_out = self.hook_mlp_out(self.mlp(x if self.post_norm else self.ln2(x), overwrite))
        x = _add(mlp_out, x, overwrite and not self.hook_mlp_out.active)
        return self.hook_resid_post(self.ln2(x) if self.post_norm else x), pattern


def _add(out: torch.Tensor, x: torch.Tensor, in_place: bool) -> torch.Tensor:
    """x + out; in place into `out` where nothing holds it (bit for bit the same: addition commutes)."""
    return out.add_(x) if in_place else x + out


class AttentionPool(nn.Module):
    """An attention-pooling head: a learned probe attends over the tokens. `config.pooling` "attention"
    (SigLIP's MAP head): the probe goes through q_proj, and a pre-norm MLP with its residual follows;
    "probe" (AIMv2's): the probe is the query itself and the output projection ends the head. Its
    attention has hook points like any other (`vision.head.attn.hook_pattern`: [batch, heads, 1, tokens])."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        with_mlp = config.pooling == "attention"
        self.attn = Attention(config.hidden_size, config.num_attention_heads, bias=config.attention_bias,
                              query_projection=with_mlp, output_bias=True)
        self.ln = norm(config) if with_mlp else None
        self.mlp = mlp(config) if with_mlp else None
        self.hook_attn_out = HookPoint()  # [batch, 1, d_model]
        self.hook_mlp_out = HookPoint()

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, tokens, d] -> [batch, d]; `key_padding` [batch, tokens]: True for tokens to ignore."""
        attn_out, _ = self.attn(self.probe.expand(x.shape[0], -1, -1), context=x, key_padding=key_padding)
        return self._after_attention(self.hook_attn_out(attn_out))[:, 0]

    def each(self, x: torch.Tensor) -> torch.Tensor:
        """Every token's own pooled feature, [batch, tokens, d]: the head as if the probe attended to that
        token alone (softmax over one key is 1), so each patch lands in the joint space by itself."""
        return self._after_attention(self.attn.out_proj(self.attn.v_proj(x)), hooked=False)

    def _after_attention(self, h: torch.Tensor, hooked: bool = True) -> torch.Tensor:
        if self.mlp is None:
            return h
        out = self.mlp(self.ln(h))
        return h + (self.hook_mlp_out(out) if hooked else out)
