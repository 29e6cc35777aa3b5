"""Random inputs for the tiny test models, the same for the same seed on every machine."""

from __future__ import annotations

import torch

CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "two birds"]


def pixels(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    """[n, 3, size, size] standard-normal pixel values, about the range of preprocessed images."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    """The explanation tests' batch: `pixels` of three images, one per caption of CAPTIONS."""
    return pixels(n, size, seed)


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
