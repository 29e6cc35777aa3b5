"""The last vision block as the training-free dense-map papers rewire it, computed from its weights for one
call (the model itself never changes), each as its authors' code does it on OpenAI's CLIP:

- `sclip` (Wang, Dai & Zheng, "SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference", ECCV
  2024; wangf3014/SCLIP, `custom_attn(csa=True)`): correlative self-attention, softmax(q q^T s) +
  softmax(k k^T s) (each row sums to 2, as there), in the block as it stands: residual and MLP kept.
- `clearclip` (Lan et al., "ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language
  Inference", ECCV 2024; mc-lan/ClearCLIP, `model_type='ClearCLIP'`, `ignore_residual=True`):
  self-self attention softmax(q q^T s), and the attention's output alone: no residual, no MLP.
- `naclip` (Hajimiri, Ben Ayed & Dolz, "Pay Attention to Your Neighbours: Training-Free Open-Vocabulary
  Semantic Segmentation", WACV 2025; sinahmr/NACLIP, `arch='reduced'`, `attn_strategy='naclip'`):
  softmax(k k^T s + omega), omega a Gaussian over the patch grid (std 5 patches, 1 at the patch itself, 0
  for a class token's row and column), and the attention's output alone: no residual, no MLP.

s is the heads' scale, d_head^-1/2; the values, out_proj and ln1 are the block's own. The papers assume
OpenAI's CLIP (a class token, read at ln_post); without a class token (SigLIP) the attention runs over the
patches alone, each formula unchanged, and similarity reads the patches as it reads MaskCLIP's.
NACLIP's PAMR refinement and the papers' sliding windows are post-processing of the map, left out.
"""

from __future__ import annotations

import torch

from ...model.towers import VisionTower

VARIANTS = ("sclip", "clearclip", "naclip")
NACLIP_STD = 5.0  # NACLIP's default `gaussian_std`, in patches


def neighbourhood(grid: tuple[int, int], prefix: int, std: float = NACLIP_STD,
                  device: torch.device | None = None) -> torch.Tensor:
    """NACLIP's omega [n, n] over prefix + grid tokens: exp(-|p - p'|^2 / (2 std^2)) between patches p, p'
    at their (row, column) on the grid; 0 wherever a prefix token is query or key."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    at = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
    omega = torch.exp(-torch.cdist(at, at).square() / (2 * std ** 2))
    return torch.nn.functional.pad(omega, (prefix, 0, prefix, 0))


def rewired_last_block(vision: VisionTower, tokens: torch.Tensor, variant: str, grid: tuple[int, int],
                       prefix: int) -> torch.Tensor:
    """Tokens entering the last block [B, prefix + grid_h * grid_w, d] -> its output [B, n, d] under
    `variant`. The caller refuses a post-norm block (`cannot_value_path`): the papers read q, k and v off
    ln1(x) of a pre-norm one."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown last-block variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    last = vision.blocks[-1]
    attn = last.attn
    b, n, _ = tokens.shape
    h = last.ln1(tokens)
    q, k, v = (proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))

    def softmax(scores: torch.Tensor) -> torch.Tensor:  # in float32, as the eager backend's
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)

    if variant == "sclip":
        weights = softmax(q @ q.transpose(-1, -2) * attn.scale) + softmax(k @ k.transpose(-1, -2) * attn.scale)
    elif variant == "clearclip":
        weights = softmax(q @ q.transpose(-1, -2) * attn.scale)
    else:  # naclip
        omega = neighbourhood(grid, prefix, device=tokens.device).to(k.dtype)
        weights = softmax(k @ k.transpose(-1, -2) * attn.scale + omega)
    out = attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, -1))
    if variant != "sclip":
        return out
    x = tokens + out
    return x + last.mlp(last.ln2(x))
