"""Reading a checkpoint's weights: safetensors or a weights-only pickle (never code), checked against the
config before any tensor is allocated, and loaded strictly: every key, every shape, floating-point values
where the model has them (a header that retypes F32 as I32 would load a LayerNorm bias as -1.15e9), and
none NaN or infinite (which would give NaN maps and normal-looking zero-shot results)."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..model.config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from ..files import check_readable, is_file
from ..model.layout import JOINT_PARAMETERS, PROJECTION, TOWER_PREFIX, StateDict
from ..model.clip import CLIP

# Buffers some checkpoints carry that hold no weights.
_IGNORED = re.compile(r"(^|\.)(position_ids|attn_mask)$|^(input_resolution|context_length|vocab_size)$")


def read_weights(files: list[Path]) -> StateDict:
    """All tensors of one checkpoint (one file or the shards of one), on the CPU."""
    state: StateDict = {}
    for path in files:
        check_readable(path)
        try:
            part = load_file(path) if path.suffix == ".safetensors" else _read_pickle(path)
        except CheckpointError:
            raise
        except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as e:
            raise CheckpointError(f"cannot read weights from {path}: {e}") from e
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in part.items()):
            raise CheckpointError(f"{path} does not hold a state dict of tensors")
        state.update(part)
    return {k.removeprefix("module."): v for k, v in state.items() if not _IGNORED.search(k)}

def _read_pickle(path: Path) -> object:
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (as OpenAI's original ViT-*.pt downloads are); clipx "
            "reads state dicts only: load it with OpenAI's clip package (jit=False) and save "
            "torch.save(model.state_dict(), 'state.pt'), or use the hub's Hugging Face checkpoint")
    try:
        # weights_only: a pickle from the hub must not run code on load. (torch may first remark on the
        # pickle protocol; silencing that would take global warning filters, which threads share.)
        part = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is mostly advice to drop weights_only; keep the unpickler's own reason
        reason = str(e)
        for marker in ("trusted source.", "WeightsUnpickler error:"):
            reason = reason.rpartition(marker)[2] or reason
        reason = " ".join(reason.partition("Check the documentation")[0].split())
        raise CheckpointError(
            f"cannot read weights from {path}: it is not a pickled state dict of tensors (it holds other objects, "
            f"which could run code when loaded and are refused, or is not a pickle at all): {reason}") from None
    except Exception as e:  # noqa: BLE001
        # bytes that are no pickle fail the unpickler in any number of ways; none means a bug of ours
        raise CheckpointError(f"cannot read weights from {path}: not a PyTorch file "
                              f"({type(e).__name__}: {e})") from None
    return part.get("state_dict", part) if isinstance(part, dict) else part

def _is_torchscript(path: Path) -> bool:
    """torch.save writes a zip with data.pkl; torch.jit.save adds constants.pkl and the code."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False  # torch.load will say what is wrong with it

def _sized_by(tower: VisionConfig | TextConfig, name: str, hf: Callable[[str], str]) -> list[tuple[str, int, str, int]]:
    """(what config.json says, the size it implies, HF weight, dimension) for every size the tower allocates;
    `hf` names the tower's weights (`name`: "vision" or "text") as the family's checkpoints do."""
    def field(name: str) -> tuple[str, int]:
        return f"{name}={getattr(tower, name)}", getattr(tower, name)

    positions = hf(f"{name}.position_embedding.weight")
    if isinstance(tower, VisionConfig):
        patches = hf(f"{name}.patch_embedding.weight")
        n = tower.grid_size ** 2 + tower.prefix_tokens
        if tower.patch_embedding == "linear":  # [d, p * p * C]
            flat = tower.patch_size ** 2 * tower.num_channels
            shape = [(f"patch_size={tower.patch_size} with num_channels={tower.num_channels}, which take "
                      f"{flat} inputs", flat, patches, 1)]
        else:  # a convolution's [d, C, p, p]
            shape = [(*field("num_channels"), patches, 1), (*field("patch_size"), patches, 2)]
        sizes = [(*field("hidden_size"), patches, 0), *shape,
                 (f"image_size={tower.image_size} with patch_size={tower.patch_size}, which needs {n} positions",
                  n, positions, 0)]
    else:
        tokens = hf(f"{name}.token_embedding.weight")
        sizes = [(*field("hidden_size"), tokens, 1), (*field("vocab_size"), tokens, 0),
                 (*field("max_position_embeddings"), positions, 0)]
    mlp_in = "gate_proj" if tower.mlp_type == "swiglu" else "fc1"
    sizes.append((*field("intermediate_size"), hf(f"{name}.blocks.0.mlp.{mlp_in}.weight"), 0))
    if tower.projection_dim is not None:
        sizes.append((*field("projection_dim"), hf(f"{name}.proj.weight"), 0))
    return sizes


def _block_prefix(hf: Callable[[str], str], name: str) -> str:
    """What the checkpoint's key of every block of a tower starts with, up to the block's index."""
    first, other = hf(f"{name}.blocks.0.attn.k_proj.weight"), hf(f"{name}.blocks.9.attn.k_proj.weight")
    return first[:next(i for i, (a, b) in enumerate(zip(first, other)) if a != b)]


def check_config_against_weights(config: CLIPConfig, hf_state: StateDict, source: str) -> None:
    """Every size the model would allocate, compared with the weights' shapes before the model is built:
    a config.json that disagrees with its weights (or asks for absurd sizes) fails here at once, naming
    the field, rather than in torch's allocator or after minutes of building a million layers."""
    joint = config.vision_config is not None and config.text_config is not None
    hf = config.layout().hf_key
    wrong = []
    for key, name in (("vision_config", "vision"), ("text_config", "text")):
        tower = getattr(config, key)
        if tower is None:
            continue
        where = f"{key}." if joint else ""
        for says, size, weight, dim in _sized_by(tower, name, hf):
            if weight not in hf_state:
                raise CheckpointError(f"the weights in {source} have no {weight}, so config.json's "
                                      f"{where}{says.partition('=')[0]} cannot be checked against them")
            shape = tuple(hf_state[weight].shape)
            if len(shape) <= dim or shape[dim] != size:
                wrong.append(f"config.json says {where}{says} but the weights have "
                             f"{shape[dim] if len(shape) > dim else 'no such dimension'} ({weight}: {shape})")
        layer = re.compile(re.escape(_block_prefix(hf, name)) + r"(\d+)\.")
        n_layers = len({m.group(1) for k in hf_state if (m := layer.match(k))})
        if n_layers != tower.num_hidden_layers:
            wrong.append(f"config.json says {where}num_hidden_layers={tower.num_hidden_layers} but the weights "
                         f"have {n_layers}")
    if wrong:
        raise CheckpointError(f"config.json does not fit the weights in {source}:\n  " + "\n  ".join(wrong))

def add_tower_prefix(state: StateDict, config: CLIPConfig) -> StateDict:
    """Bare `CLIPVisionModel` / `CLIPTextModel` checkpoints have no `vision_model.` prefix: in a one-tower
    checkpoint every key outside the tower's prefix, its projection and the joint parameters is the
    tower's own, whatever the family names its modules (`post_layernorm`, AIMv2's `rms_norm`, ...)."""
    if config.vision_config is not None and config.text_config is not None:
        return state
    tower = "vision" if config.vision_config is not None else "text"
    prefix = TOWER_PREFIX[tower] + "."
    own = (prefix, PROJECTION[tower] + ".")
    return {k if k.startswith(own) or k in JOINT_PARAMETERS else prefix + k: v for k, v in state.items()}

def load_into(model: CLIP, hf_state: StateDict, source: str) -> None:
    """Load an HF-layout state dict strictly: every key must match, and every shape."""
    own = model.state_dict()
    layout = model.config.layout()
    hf_state = layout.from_hf(hf_state)
    expected = {layout.hf_key(k): k for k in own}
    if model.vision is None or model.text is None:
        for key in JOINT_PARAMETERS:  # tower-only checkpoints have none; the model keeps its default
            expected.pop(key, None)
    missing = sorted(set(expected) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the weights in {source} do not fit this model:\n"
                              f"  missing keys ({len(missing)}): {_listing(missing)}\n"
                              f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[expected[k]].shape)}"
             for k, v in hf_state.items() if v.shape != own[expected[k]].shape]
    if wrong:
        raise CheckpointError(f"the weights in {source} have other shapes than config.json says:\n  "
                              + _listing(wrong, sep="\n  "))
    wrong = [f"{k}: {v.dtype} in the file, {own[expected[k]].dtype} in the model" for k, v in hf_state.items()
             if v.is_floating_point() != own[expected[k]].is_floating_point()]
    if wrong:
        raise CheckpointError(f"the weights in {source} store numbers of another kind than the model's (a header "
                              "edited, or not this model's weights):\n  " + _listing(wrong, sep="\n  "))
    wrong = [f"{k}: {n} of {v.numel()} values" for k, v in hf_state.items() if (n := _non_finite(v))]
    if wrong:
        raise CheckpointError(f"the weights in {source} hold NaN or infinite values (a damaged or diverged "
                              "checkpoint):\n  " + _listing(wrong, sep="\n  "))
    model.load_state_dict({expected[k]: v for k, v in hf_state.items()}, strict=False)  # checked above


def _non_finite(tensor: torch.Tensor) -> int:
    """How many of a tensor's values are NaN or infinite. A finite sum proves there are none (one NaN or inf
    makes any sum NaN or inf) at the cost of one pass; only a non-finite sum (or an overflowing one) counts."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return 0
    return int(tensor.numel() - torch.isfinite(tensor).sum())


def _listing(items: list[str], sep: str = ", ", limit: int = 12) -> str:
    if not items:
        return "none"
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more

def read_config(folder: Path) -> CLIPConfig | None:
    path = folder / "config.json"
    if is_file(path):
        return CLIPConfig.from_json_file(path)
    return None
