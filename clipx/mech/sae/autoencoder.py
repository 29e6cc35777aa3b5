"""A sparse autoencoder (SAE) over one hook point's activations, and its files.

An activation x (width d_in) is scaled by a constant (`input_scale`, chosen at training so that the
mean squared norm is d_in: one learning rate and L1 coefficient then suit any model), the decoder
bias is subtracted (the pre-encoder bias: features describe the deviation from a typical token), and
it is encoded into d_sae features, sparse by TopK (keep the k largest, Gao et al. 2024) or by a ReLU
trained under an L1 penalty (Bricken et al. 2023). The reconstruction is features @ W_dec + b_dec,
scaled back. Decoder rows are kept at unit norm, so a feature's activation is its size along its
direction and an L1 penalty cannot be dodged by shrinking features and growing rows.

`save(folder)` writes `sae.safetensors`, which carries the digest of its tensors, then `config.json`, which
names that digest (`weights_xxh3_128`): each whole or not at all, with the umask's mode. `SparseAutoencoder.load`
checks the weights against their digest and the two files against each other, so an edited, damaged or
truncated file, or a save interrupted between its two files, fails loudly rather than loading wrong.
Folders saved before digests (no `weights_xxh3_128`) load as before.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...assets import DEMO_SAES
from ...files import DIGEST, make_folder, read_json, read_safetensors, save_safetensors, write_json
from ...model.clip import CLIP

ACTIVATIONS = ("topk", "relu")
POSITIONS = ("patches", "all")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "sae.safetensors"
BINDING = "weights_xxh3_128"  # the entry of config.json naming the digest of the weights saved with it


@dataclass
class SAEConfig:
    """What an SAE was trained on and how it encodes. `k` is set for activation="topk", `l1` for "relu";
    `positions` are the token positions it saw ("patches" or "all"); `input_scale` multiplies an
    activation before encoding (1.0: none)."""

    hook_name: str
    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int | None = None
    l1: float | None = None
    tied: bool = False
    positions: str = "patches"
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not isinstance(self.hook_name, str) or not isinstance(self.tied, bool):
            raise ValueError(f"hook_name must be a str and tied a bool, got {self.hook_name!r} and {self.tied!r}")
        for field in ("d_in", "d_sae"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive int, got {getattr(self, field)!r}")
        if self.activation == "topk" and not (_is_int(self.k) and 1 <= self.k <= self.d_sae):
            raise ValueError(f"activation='topk' needs an int k in 1..d_sae={self.d_sae}, got k={self.k!r}")
        if self.activation == "relu" and not (_is_number(self.l1) and self.l1 >= 0):
            raise ValueError(f"activation='relu' needs an L1 coefficient l1 >= 0, got l1={self.l1!r}")
        check_positions(self.positions)
        if not (_is_number(self.input_scale) and self.input_scale > 0):
            raise ValueError(f"input_scale must be a finite number > 0, got {self.input_scale!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no k


def _is_number(value: object) -> bool:
    """A finite int or float: not a string of one ("1.0"), not a bool, not JSON's Infinity or NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positions(positions: str) -> str:
    """The token positions an SAE reads, "patches" or "all", or a ValueError."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be 'patches' or 'all', got {positions!r}")
    return positions


def skipped_tokens(model: CLIP, positions: str) -> int:
    """How many leading tokens of a vision hook's activations `positions` leaves out: the prefix (CLIP's
    class token) for "patches", none for "all"."""
    return model.vision.prefix_tokens if check_positions(positions) == "patches" else 0


class SparseAutoencoder(nn.Module):
    """Untied: W_enc [d_in, d_sae] and W_dec [d_sae, d_in] are separate parameters. Tied: the encoder is
    W_dec transposed, one parameter."""

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        d_in, d_sae = config.d_in, config.d_sae
        self.W_dec = nn.Parameter(nn.functional.normalize(torch.randn(d_sae, d_in), dim=1))
        # the encoder starts as the decoder's transpose (Gao et al.): each feature first reads its own direction
        self.W_enc = None if config.tied else nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W_dec.T if self.W_enc is None else self.W_enc

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., d_sae] before the sparsifying step."""
        self._check_width(x)
        return (x * self.config.input_scale - self.b_dec) @ self.encoder_weight + self.b_enc

    def sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        if self.config.activation == "relu":
            return torch.relu(pre)
        top = pre.topk(self.config.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations [..., d_in] -> features [..., d_sae] (at most k nonzero per token under TopK)."""
        return self.sparsify(self.pre_activations(x))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Features [..., d_sae] -> reconstructed activations [..., d_in], in the activations' own units."""
        return (features @ self.W_dec + self.b_dec) / self.config.input_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, features)."""
        features = self.encode(x)
        return self.decode(features), features

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))

    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(f"this SAE reads {self.config.d_in}-wide activations ({self.config.hook_name}), "
                             f"got shape {tuple(x.shape)}")

    # --- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        make_folder(folder)
        tensors = {name: p.detach().contiguous() for name, p in self.named_parameters()}
        digest = save_safetensors(tensors, folder / WEIGHTS_FILE)
        # last: a save that stops before it leaves the old config.json, which names the old weights' digest
        write_json({**dataclasses.asdict(self.config), BINDING: digest}, folder / CONFIG_FILE, indent=2)
        return folder

    @classmethod
    def load(cls, name_or_folder: str | Path) -> "SparseAutoencoder":
        """A folder written by `save`, or a shipped SAE's name ("demo-sae", trained on the "demo" model)."""
        folder = Path(DEMO_SAES.get(str(name_or_folder), name_or_folder))
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"no {path.name} in {folder}: an SAE folder holds {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE} (SparseAutoencoder.save writes them)")
        config, bound = _read_config(config_path)
        sae = cls(config)
        tensors, metadata = read_safetensors(weights_path)  # a ValueError naming it where damaged
        if bound is not None and metadata.get(DIGEST) != bound:
            raise ValueError(f"{weights_path} is not the file {config_path} was saved with (a save interrupted "
                             "between its two files, or one copied from another SAE): save the SAE again")
        expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        for name in sorted(set(tensors) | set(expected)):
            if name not in tensors:
                raise ValueError(f"{weights_path} lacks tensor {name!r} that {CONFIG_FILE} implies")
            if name not in expected:
                raise ValueError(f"{weights_path} holds tensor {name!r}, which this config has no place for "
                                 f"(tied={sae.config.tied})")
            if tuple(tensors[name].shape) != expected[name]:
                raise ValueError(f"{weights_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but "
                                 f"{CONFIG_FILE} (d_in={sae.config.d_in}, d_sae={sae.config.d_sae}) implies "
                                 f"{expected[name]}")
        sae.load_state_dict(tensors)
        return sae.eval()


def _read_config(path: Path) -> tuple[SAEConfig, str | None]:
    """The config, and the digest of the weights saved with it (None in folders saved before digests)."""
    fields = read_json(path)  # a CheckpointError (a ValueError) naming it where it is no JSON object
    bound = fields.pop(BINDING, None)
    if bound is not None and not isinstance(bound, str):
        raise ValueError(f"{path}: {BINDING} must be the weights' digest, a string; got {bound!r}")
    known = {f.name for f in dataclasses.fields(SAEConfig)}
    unknown = sorted(set(fields) - known)
    missing = sorted(known - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    if missing:
        raise ValueError(f"{path}: missing config field(s) {', '.join(missing)}")
    try:
        return SAEConfig(**fields), bound
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
