"""Multi-head self-attention with three interchangeable backends over the same weights.

- `eager`: explicit softmax(q k^T * scale + mask) v, softmax in fp32. The only path whose
  scores and pattern exist as tensors, so the only one that feeds `hook_attn_scores` /
  `hook_pattern`. A layer whose scores or pattern are hooked runs eagerly whatever its backend.
- `sdpa`: torch's scaled_dot_product_attention (any kernel torch picks).
- `flash`: the `flash_attn` package on CUDA fp16/bf16 where installed, else SDPA restricted to
  its flash kernel. Neither takes an explicit mask, so masks must reduce to `is_causal`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint

BACKENDS = ("eager", "sdpa", "flash")

try:  # optional: only on CUDA machines that installed it
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


# Backends switched by `with model.attention(name)`, for the thread (context) that runs the block: a
# block in one thread never changes what another thread runs, and exits in any order restore right.
_SWITCHED: ContextVar[Mapping["Attention", str]] = ContextVar("clipx_switched_backends", default={})


@contextmanager
def switched(layers: Iterable["Attention"], name: str) -> Iterator[None]:
    token = _SWITCHED.set({**_SWITCHED.get(), **{layer: name for layer in layers}})
    try:
        yield
    finally:
        _SWITCHED.reset(token)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def flash_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `flash` cannot run for weights on this device and dtype, or None if it can."""
    if device.type != "cuda":
        return (f"FlashAttention needs a CUDA GPU, but the model is on {device.type}. "
                "Move it with model.to('cuda', torch.float16) or use attention='sdpa'.")
    if dtype not in (torch.float16, torch.bfloat16):
        return (f"FlashAttention needs float16 or bfloat16 weights, but the model is {dtype}. "
                "Use model.to(torch.float16) (or bfloat16), or attention='sdpa'.")
    if flash_attn_func is None and not torch.backends.cuda.is_flash_attention_available():
        return ("FlashAttention is not available: the flash_attn package is not installed "
                "(pip install flash-attn) and this torch build has no SDPA flash kernel.")
    if flash_attn_func is None and torch.cuda.get_device_capability(device) < (8, 0):
        return ("torch's SDPA flash kernel needs a GPU of compute capability 8.0 or newer; "
                "install flash_attn or use attention='sdpa'.")
    return None


class Attention(nn.Module):
    """`bias`: of q, k, v (and of the output projection unless `output_bias` says otherwise).
    `query_projection=False`: the queries are the input itself (AIMv2's pooling head, whose probe is
    the query), and `q_proj` is an identity."""

    def __init__(self, hidden_size: int, num_heads: int, bias: bool = True, query_projection: bool = True,
                 output_bias: bool | None = None) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.backend = "sdpa"
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias) if query_projection else nn.Identity()
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias if output_bias is None else output_bias)
        self.hook_q = HookPoint()        # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key], scaled and masked, pre-softmax
        self.hook_pattern = HookPoint()      # [batch, head, query, key]
        self.hook_z = HookPoint()            # [batch, pos, head, d_head], per-head mixed values
        self.hook_result = HookPoint()       # [batch, pos, head, d_model], each head's output, without the bias
        self.hook_out = HookPoint()          # [batch, pos, d_model]

    @property
    def backend_in_use(self) -> str:
        """`backend`, or the one a `model.attention(...)` block of this thread switched to."""
        return _SWITCHED.get().get(self, self.backend)

    def backend_for_call(self, force_eager: bool = False) -> str:
        """The one rule for which backend a call runs: eager where the call asks for patterns
        (`output_attentions`, `force_eager`) or a hook point needs them (`hook_attn_scores`, `hook_pattern`),
        else `backend_in_use` (the layer's own, or what a `model.attention(...)` block switched it to)."""
        if force_eager or self.hook_attn_scores.active or self.hook_pattern.active:
            return "eager"
        return self.backend_in_use

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, causal: bool = False,
                key_padding: torch.Tensor | None = None, right_padded: bool = False,
                force_eager: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries from `x`; keys and values from `context` (cross-attention, as in an attention-pooling
        head), or from `x` itself. `key_padding` is a [batch, key] bool tensor, True where a key must be ignored.

        With a causal mask and padding only on the right (`right_padded`), no real token ever
        sees a pad, so the fused backends drop the padding mask and run `is_causal` alone:
        outputs at real positions are unchanged, only those at pad positions differ.
        Returns the output and, when the eager path ran, the attention pattern.
        """
        b, n, _ = x.shape
        context = x if context is None else context
        m = context.shape[1]
        q = self.hook_q(self.q_proj(x).view(b, n, self.num_heads, self.head_dim))
        k = self.hook_k(self.k_proj(context).view(b, m, self.num_heads, self.head_dim))
        v = self.hook_v(self.v_proj(context).view(b, m, self.num_heads, self.head_dim))

        backend = self.backend_for_call(force_eager)
        if backend == "eager":
            z, pattern = self._eager(q, k, v, causal, key_padding)
        else:
            if causal and right_padded:
                key_padding = None
            z, pattern = self._fused(backend, q, k, v, causal, key_padding), None
        z = self.hook_z(z)
        if self.hook_result.active:
            # split out_proj by head only when asked: [pos, head, d_model] per token costs head x the memory
            out = self.hook_result(self.head_results(z)).sum(2)
            out = out if self.out_proj.bias is None else out + self.out_proj.bias
        else:
            out = self.out_proj(z.reshape(b, n, -1))
        return self.hook_out(out), pattern

    def head_results(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., head, d_head] -> each head's share of the output [..., head, d_model]: its z through its
        slice of out_proj's weight, without the bias (in z's dtype)."""
        w = self.out_proj.weight.view(-1, self.num_heads, self.head_dim).to(z.dtype)  # [d_model, head, d_head]
        return torch.einsum("...hk,dhk->...hd", z, w)

    def _eager(self, q, k, v, causal, key_padding):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        mask = _boolean_mask(causal, key_padding, q.shape[-2], q.device)
        if mask is not None:
            # finfo.min, not -inf, so a fully masked row stays finite (as in transformers)
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        return (pattern @ v).transpose(1, 2), pattern

    def _fused(self, backend, q, k, v, causal, key_padding):
        if backend == "flash":
            if key_padding is not None:
                raise ValueError("the flash backend takes no padding mask; pad text on the right "
                                 "(the tokenizer does) or use attention='sdpa'")
            reason = flash_unavailable_reason(q.device, q.dtype)
            if reason:
                raise RuntimeError(reason)
            if flash_attn_func is not None:
                return flash_attn_func(q, k, v, 0.0, self.scale, causal)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attn_mask = None
        if key_padding is not None:
            # additive finfo.min rather than a boolean mask: a fully masked row stays finite
            mask = _boolean_mask(causal, key_padding, q.shape[-2], q.device)
            attn_mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                mask, torch.finfo(q.dtype).min)
        kwargs = dict(attn_mask=attn_mask, is_causal=causal and attn_mask is None, scale=self.scale)
        if backend == "flash":
            with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2)


def _boolean_mask(causal: bool, key_padding: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    """True where attention is forbidden, broadcastable to [batch, head, query, key]."""
    mask = None
    if causal:
        mask = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    if key_padding is not None:
        pad = key_padding[:, None, None, :]
        mask = pad if mask is None else mask | pad
    return mask
