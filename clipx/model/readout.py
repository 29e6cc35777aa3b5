"""A tower's readout linearised: from its last residual stream to the joint space with the final norm's scale
fixed at one residual's (TextSpan's recipe), so that each additive part of that residual (the embedding,
each head, each MLP) has a contribution of its own, and the parts sum to the embedding up to rounding.
The norm's and the projection's biases are parts of their own."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerNorm, RMSNorm


class LinearReadout:
    """norm (LayerNorm: centred and divided by the std; RMSNorm: divided by the root mean square; or none),
    then the tower's projection, with the division fixed at `residual`'s [items, d]."""

    def __init__(self, norm: LayerNorm | RMSNorm | None, proj: nn.Linear | None, residual: torch.Tensor,
                 names: tuple[str, str]) -> None:
        self.norm, self.proj = norm, proj
        self.centred = isinstance(norm, LayerNorm)
        if norm is None:
            self.scale = torch.ones(residual.shape[0], device=residual.device)
        elif self.centred:
            self.scale = (residual.var(-1, unbiased=False) + norm.eps).sqrt()  # [items], as the norm computes it
        else:
            self.scale = (residual.pow(2).mean(-1) + norm.eps).sqrt()
        norm_name, proj_name = names
        self.bias_labels = [f"{norm_name}.bias" for b in [self._norm_bias()] if b is not None]
        self.bias_labels += [f"{proj_name}.bias" for b in [self._proj_bias()] if b is not None]

    def __call__(self, parts: torch.Tensor) -> torch.Tensor:
        """[items, ..., d] residual parts -> [items, ..., dim] in the joint space."""
        scale = self.scale.view(-1, *[1] * (parts.dim() - 1))
        return self.directions(parts) / scale

    def directions(self, d: torch.Tensor) -> torch.Tensor:
        """Residual directions [..., d] through the readout without the norm's division (which scales every
        direction of one residual alike): centred where the norm centres, times its gain, projected."""
        if self.centred:
            d = d - d.mean(-1, keepdim=True)
        if self.norm is not None:
            d = d * self.norm.weight.float()
        return d if self.proj is None else d @ self.proj.weight.float().T

    def bias_parts(self, n_items: int) -> list[torch.Tensor]:
        biases = []
        if (b := self._norm_bias()) is not None:
            biases.append(b if self.proj is None else b @ self.proj.weight.float().T)
        if (b := self._proj_bias()) is not None:
            biases.append(b)
        return [b.expand(n_items, 1, -1) for b in biases]

    def _norm_bias(self) -> torch.Tensor | None:
        bias = getattr(self.norm, "bias", None)
        return None if bias is None else bias.float()

    def _proj_bias(self) -> torch.Tensor | None:
        return None if self.proj is None or self.proj.bias is None else self.proj.bias.float()
