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

SAEs trained elsewhere load too (`layouts.py` reads their files): SAELens' folders, saev's files and
ViT-Prisma's checkpoints, each run with its source's forward. That needs four choices clipx's own SAEs
leave at their defaults: a JumpReLU (Rajamanoharan et al. 2024: a feature passes only above its learned
`threshold`), whether b_dec is subtracted before encoding (`subtract_b_dec`; SAELens' apply_b_dec_to_input,
off in saev since July 2025), whether TopK rectifies the kept values (`topk_relu`; saev's does not), and a
per-token normalisation of the input undone on the reconstruction (`input_norm`, SAELens' and Prisma's
"layer_norm" or "constant_norm_rescale"). `save(folder, format="saelens")` writes SAELens' layout.
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
from . import layouts

ACTIVATIONS = ("topk", "relu", "jumprelu")
INPUT_NORMS = ("none", "layer_norm", "constant_norm_rescale")
LAYER_NORM_EPS = 1e-5  # SAELens' and Prisma's: added to the standard deviation, not under a square root
POSITIONS = ("patches", "all")
FORMATS = ("clipx", "saelens")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "sae.safetensors"
BINDING = "weights_xxh3_128"  # the entry of config.json naming the digest of the weights saved with it
LATER_FIELDS = {"subtract_b_dec", "topk_relu", "input_norm"}  # config.json files written before them lack them


@dataclass
class SAEConfig:
    """What an SAE was trained on and how it encodes. `k` is set for activation="topk"; `l1` is the L1
    coefficient a "relu" SAE trains with (None for one trained elsewhere that did not say); "jumprelu" has a
    `threshold` per feature. `positions` are the token positions it saw ("patches" or "all");
    `input_scale` multiplies an activation before encoding (1.0: none); `subtract_b_dec`, `topk_relu` and
    `input_norm` are as the module docstring says (their defaults: clipx's own SAEs)."""

    hook_name: str
    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int | None = None
    l1: float | None = None
    tied: bool = False
    positions: str = "patches"
    input_scale: float = 1.0
    subtract_b_dec: bool = True
    topk_relu: bool = True
    input_norm: str = "none"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not isinstance(self.hook_name, str) or not isinstance(self.tied, bool):
            raise ValueError(f"hook_name must be a str and tied a bool, got {self.hook_name!r} and {self.tied!r}")
        for field in ("subtract_b_dec", "topk_relu"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be a bool, got {getattr(self, field)!r}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        for field in ("d_in", "d_sae"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive int, got {getattr(self, field)!r}")
        if self.activation == "topk" and not (_is_int(self.k) and 1 <= self.k <= self.d_sae):
            raise ValueError(f"activation='topk' needs an int k in 1..d_sae={self.d_sae}, got k={self.k!r}")
        if self.l1 is not None and not (_is_number(self.l1) and self.l1 >= 0):
            raise ValueError(f"the L1 coefficient l1 must be a number >= 0 (or None), got l1={self.l1!r}")
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
        self.threshold = nn.Parameter(torch.zeros(d_sae)) if config.activation == "jumprelu" else None

    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W_dec.T if self.W_enc is None else self.W_enc

    def normalize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The activation as the encoder reads it, and (scale, shift) that undo `input_norm` on the
        reconstruction (None where there is none)."""
        norm = self.config.input_norm
        if norm == "layer_norm":
            mean = x.mean(-1, keepdim=True)
            std = (x - mean).std(-1, keepdim=True)  # unbiased, as SAELens and Prisma take it
            return (x - mean) / (std + LAYER_NORM_EPS), (std, mean)
        if norm == "constant_norm_rescale":  # every token brought to norm sqrt(d_in)
            coefficient = self.config.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            return x * coefficient, (1 / coefficient, torch.zeros_like(coefficient))
        return x, None

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., d_sae] before the sparsifying step."""
        self._check_width(x)
        x = self.normalize_input(x)[0] * self.config.input_scale
        if self.config.subtract_b_dec:
            x = x - self.b_dec
        return x @ self.encoder_weight + self.b_enc

    def sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        if self.config.activation == "relu":
            return torch.relu(pre)
        if self.config.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        top = pre.topk(self.config.k, dim=-1)
        values = torch.relu(top.values) if self.config.topk_relu else top.values
        return torch.zeros_like(pre).scatter(-1, top.indices, values)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations [..., d_in] -> features [..., d_sae] (at most k nonzero per token under TopK)."""
        return self.sparsify(self.pre_activations(x))

    def decode(self, features: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Features [..., d_sae] -> reconstructed activations [..., d_in], in the activations' own units.
        An SAE with an `input_norm` needs the activations it encoded (`inputs`) to undo it."""
        reconstruction = (features @ self.W_dec + self.b_dec) / self.config.input_scale
        if self.config.input_norm == "none":
            return reconstruction
        if inputs is None:
            raise ValueError(f"this SAE normalises each token ({self.config.input_norm}): decode(features, "
                             "inputs=activations) undoes it with the encoded activations' statistics")
        scale, shift = self.normalize_input(inputs)[1]
        return reconstruction * scale + shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, features)."""
        features = self.encode(x)
        return self.decode(features, x), features

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))

    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(f"this SAE reads {self.config.d_in}-wide activations ({self.config.hook_name}), "
                             f"got shape {tuple(x.shape)}")

    # --- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path, format: str = "clipx") -> Path:
        """Write the SAE to `folder`: clipx's layout (`config.json`, `sae.safetensors`), or with
        format="saelens" SAELens' (`cfg.json`, `sae_weights.safetensors`, which SAELens' `SAE.load_from_disk`
        reads: input_scale and a tied decoder are folded into the weights it writes)."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        folder = Path(folder)
        make_folder(folder)
        tensors = {name: p.detach().contiguous() for name, p in self.named_parameters()}
        if format == "saelens":
            layouts.write_saelens(folder, dataclasses.asdict(self.config), {**tensors, "W_enc": self.encoder_weight})
            return folder
        digest = save_safetensors(tensors, folder / WEIGHTS_FILE)
        # last: a save that stops before it leaves the old config.json, which names the old weights' digest
        write_json({**dataclasses.asdict(self.config), BINDING: digest}, folder / CONFIG_FILE, indent=2)
        return folder

    @classmethod
    def load(cls, name_or_path: str | Path, **options) -> "SparseAutoencoder":
        """A folder written by `save`, a shipped SAE's name ("demo-sae", trained on the "demo" model), or an
        SAE another toolkit wrote, recognised by its files: SAELens' folder, saev's file, ViT-Prisma's
        checkpoint; `options` go to `from_saelens`, `from_saev` or `from_prisma`."""
        path = Path(DEMO_SAES.get(str(name_or_path), name_or_path))
        layout = layouts.layout_of(path)
        if layout != "clipx":
            return getattr(cls, f"from_{layout}")(path, **options)
        if options:
            raise TypeError(f"a folder SparseAutoencoder.save wrote takes no options, got {sorted(options)}")
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for file in (config_path, weights_path):
            if not file.is_file():
                raise FileNotFoundError(f"no {file.name} in {path}: an SAE folder holds {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE} (SparseAutoencoder.save writes them); "
                                        f"{layouts.OTHER_LAYOUTS}")
        config, bound = _read_config(config_path)
        tensors, metadata = read_safetensors(weights_path)  # a ValueError naming it where damaged
        if bound is not None and metadata.get(DIGEST) != bound:
            raise ValueError(f"{weights_path} is not the file {config_path} was saved with (a save interrupted "
                             "between its two files, or one copied from another SAE): save the SAE again")
        return cls._with_tensors(config, tensors, weights_path, CONFIG_FILE)

    @classmethod
    def from_saelens(cls, folder: str | Path, tower: str | None = None) -> "SparseAutoencoder":
        """A folder SAELens wrote (`cfg.json`, `sae_weights.safetensors`; standard, topk and jumprelu SAEs).
        Its hook name ("blocks.9.hook_resid_post") names no tower: `tower` ("vision" or "text") says which."""
        return cls._imported(layouts.read_saelens(Path(folder), tower))

    @classmethod
    def from_saev(cls, path: str | Path, hook_name: str, positions: str = "patches",
                  subtract_b_dec: bool | None = None) -> "SparseAutoencoder":
        """A file saev wrote (`saev.nn.dump`: a JSON header line, then a torch state dict). It names no hook:
        `hook_name` is the clipx hook it read (saev records a block's output: "vision.blocks.{i}.hook_resid_post").
        `subtract_b_dec` defaults to what the saev that wrote the file did (see `layouts.read_saev`)."""
        return cls._imported(layouts.read_saev(Path(path), hook_name, check_positions(positions), subtract_b_dec))

    @classmethod
    def from_prisma(cls, path: str | Path) -> "SparseAutoencoder":
        """A ViT-Prisma checkpoint: its `.pt` file (the state dict, with its config pickled beside it or in
        `config.json` next to it), or the folder holding both. Prisma's hooks are the vision tower's."""
        return cls._imported(layouts.read_prisma(Path(path)))

    @classmethod
    def _imported(cls, imported: layouts.Imported) -> "SparseAutoencoder":
        try:
            config = SAEConfig(**imported.fields)
        except ValueError as e:
            raise ValueError(f"{imported.source}: {e}") from None
        return cls._with_tensors(config, imported.tensors, imported.source, "its config")

    @classmethod
    def _with_tensors(cls, config: SAEConfig, tensors: dict[str, torch.Tensor], source: str | Path,
                      config_name: str) -> "SparseAutoencoder":
        """The SAE `config` describes, holding `tensors` (read from `source`) once their names and shapes
        are those it has a place for."""
        sae = cls(config)
        expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        for name in sorted(set(tensors) | set(expected)):
            if name not in tensors:
                raise ValueError(f"{source} lacks tensor {name!r} that {config_name} implies")
            if name not in expected:
                raise ValueError(f"{source} holds tensor {name!r}, which this config has no place for "
                                 f"(tied={sae.config.tied}, activation={sae.config.activation!r})")
            if tuple(tensors[name].shape) != expected[name]:
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but "
                                 f"{config_name} (d_in={sae.config.d_in}, d_sae={sae.config.d_sae}) implies "
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
    missing = sorted(known - set(fields) - LATER_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    if missing:
        raise ValueError(f"{path}: missing config field(s) {', '.join(missing)}")
    try:
        return SAEConfig(**fields), bound
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
