"""exCLIP's integrated Jacobian in its rank-D form: for one tower, each input's matrix
U[k, s] = 1/N * sum over the N path points h of sum over the width w of d e_k / d h[s, w] * delta[s, w],
where e is the (unnormalised) embedding, h runs from the input's residual stream entering a block to a
reference's (right Riemann points, the reference excluded) and delta is the input minus the reference.
The interactions of a pair are U_text^T U_image (`interactions.py`), so the (tokens * width) x
(patches * width) product the authors build is never formed.

U is the Jacobian of the embedding with respect to one scalar per position that scales that position's
step (h + eps_s * delta_s at eps = 0): D vector-Jacobian products (one per embedding dimension) or S
Jacobian-vector products (one per position) give it; we take whichever count is smaller, and both run
vectorised (torch.func) over chunks of the path points sized under a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, jvp, vmap

Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def right_riemann_points(n_steps: int) -> torch.Tensor:
    """[n_steps] interpolation weights of the input: 1, 1 - 1/N, ..., 1/N (exCLIP's; the reference, 0, excluded)."""
    return (n_steps - torch.arange(n_steps, dtype=torch.float64)) / n_steps


def integrated_jacobian(embed: Embed, inputs: torch.Tensor, references: torch.Tensor, n_steps: int,
                        dim: int, row_bytes: int, budget_bytes: int, mode: str | None = None) -> torch.Tensor:
    """U [N, dim, S] in float32 for inputs [N, S, width] and their references [N or 1, S, width].
    `embed(residuals [rows, S, width], which [rows])` gives the embeddings [rows, dim] of residual streams
    standing in for inputs `which`; `row_bytes`: what one row keeps for a backward (to size the chunks);
    mode: "forward" (S Jacobian-vector products), "reverse" (D vector-Jacobian ones) or None (the fewer)."""
    n, positions = inputs.shape[:2]
    references = references.expand_as(inputs)
    delta = inputs - references
    alphas = right_riemann_points(n_steps).to(inputs.dtype).to(inputs.device)
    if mode not in (None, "forward", "reverse"):
        raise ValueError(f"mode must be 'forward', 'reverse' or None, got {mode!r}")
    forward_mode = positions < dim if mode is None else mode == "forward"
    products = positions if forward_mode else dim
    rows_total = n * n_steps
    # every product of a row in one call where the budget allows (each call runs the forward once), then rows
    rows = max(1, min(rows_total, budget_bytes // (row_bytes * products)))
    chunk = max(1, min(products, budget_bytes // (rows * row_bytes)))
    total = torch.zeros(n, dim, positions, dtype=torch.float32, device=inputs.device)
    for start in range(0, rows_total, rows):
        row = torch.arange(start, min(start + rows, rows_total), device=inputs.device)
        which, step = row // n_steps, row % n_steps
        point, step_delta = references[which] + alphas[step, None, None] * delta[which], delta[which]
        if forward_mode:  # one scale per position, shared by the rows: each row's output sees only its own
            def scaled(eps: torch.Tensor) -> torch.Tensor:
                return embed(point + eps[:, None] * step_delta, which)

            eye = torch.eye(positions, dtype=point.dtype, device=point.device)
            jac = vmap(lambda t: jvp(scaled, (eye[0] * 0,), (t,))[1], chunk_size=chunk)(eye)    # [S, rows, dim]
            jac = jac.permute(1, 2, 0)
        else:
            jac = jacrev(lambda eps: embed(point + eps[..., None] * step_delta, which).sum(0),
                         chunk_size=chunk)(point.new_zeros(len(row), positions)).transpose(0, 1)
        total.index_add_(0, which, jac.float())
    return total / n_steps
