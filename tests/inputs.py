"""Random inputs for the tiny test models, the same for the same seed on every machine."""

from __future__ import annotations

import torch


def texts_to_ids(n: int = 3, seed: int = 0, lengths=(5, 9, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random captions: BOS, words, EOS, then EOS padding (HF's convention)."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths[:n])
    ids = torch.full((n, L), 49407)
    mask = torch.zeros(n, L, dtype=torch.long)
    for i, length in enumerate(lengths[:n]):
        ids[i, 0] = 49406
        ids[i, 1:length - 1] = torch.randint(300, 40000, (length - 2,), generator=g)
        mask[i, :length] = 1
    return ids, mask
