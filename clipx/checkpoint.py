"""State-dict layouts: reading weight files, converting Hugging Face and OpenAI / open_clip
key layouts to clipx's module names, and writing the Hugging Face layout back.

Hugging Face is the pivot: OpenAI / open_clip state dicts are converted to HF keys first,
and clipx's own names are derived from HF's by `hf_key`, one rule per kind of module.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError
from .files import check_readable, is_file, save_safetensors

if TYPE_CHECKING:
    from .model import CLIP, Tower

StateDict = dict[str, torch.Tensor]

_TOWER_PREFIX = {"vision": "vision_model", "text": "text_model"}
_PROJECTION = {"vision": "visual_projection", "text": "text_projection"}
_BLOCK_RENAMES = {"attn": "self_attn", "ln1": "layer_norm1", "ln2": "layer_norm2", "mlp": "mlp"}
_TOWER_RENAMES = {
    "ln_pre": "pre_layrnorm", "ln_post": "post_layernorm", "ln_final": "final_layer_norm",
    "token_embedding": "embeddings.token_embedding", "position_embedding": "embeddings.position_embedding",
    "patch_embedding": "embeddings.patch_embedding", "class_embedding": "embeddings.class_embedding",
}
# Buffers some checkpoints carry that hold no weights.
_IGNORED = re.compile(r"(^|\.)(position_ids|attn_mask)$|^(input_resolution|context_length|vocab_size)$")


# the joint model's own parameters, which tower-only checkpoints lack
JOINT_PARAMETERS = ("logit_scale", "logit_bias")


def hf_key(key: str) -> str:
    """The Hugging Face `CLIPModel` name of a clipx state-dict key."""
    if key in JOINT_PARAMETERS:
        return key
    tower, rest = key.split(".", 1)
    if rest.startswith("proj."):
        return f"{_PROJECTION[tower]}.{rest[5:]}"
    match = re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(.+)", rest)
    if match:
        i, module, tail = match.groups()
        rest = f"encoder.layers.{i}.{_BLOCK_RENAMES[module]}.{tail}"
    else:
        head, _, tail = rest.partition(".")
        rest = _TOWER_RENAMES[head] + (f".{tail}" if tail else "")
    return f"{_TOWER_PREFIX[tower]}.{rest}"


def _same(state: StateDict) -> StateDict:
    return state


@dataclass(frozen=True)
class Layout:
    """How one family's Hugging Face checkpoints name and shape the weights."""

    hf_key: Callable[[str], str]                          # clipx key -> checkpoint key
    from_hf: Callable[[StateDict], StateDict] = _same     # checkpoint tensors -> the shapes hf_key's names hold
    to_hf: Callable[[StateDict], StateDict] = _same       # and back, for save_pretrained
    # whether a tower-only checkpoint keeps the `vision_model.` / `text_model.` prefix
    tower_prefixed: Callable[["Tower"], bool] = lambda tower: tower.proj is not None


# CLIPVisionModelWithProjection keeps its prefix; a bare CLIPVisionModel has none
CLIP_LAYOUT = Layout(hf_key=hf_key)


# --- reading -------------------------------------------------------------------------------

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


def is_openai_layout(state: StateDict) -> bool:
    return "visual.conv1.weight" in state or "ln_final.weight" in state or "visual.proj" in state


def openai_to_hf(state: StateDict) -> StateDict:
    """OpenAI / open_clip names (fused in_proj, transposed projections) -> Hugging Face names."""
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("visual."):
            prefix, rest = "vision_model", key[len("visual."):]
        else:
            prefix, rest = "text_model", key
        block = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)
        if block:
            i, tail = block.groups()
            layer = f"{prefix}.encoder.layers.{i}"
            if tail.startswith("attn.in_proj_"):
                out.update(split_in_proj(f"{layer}.self_attn.", tail, value))
                continue
            tail = (tail.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[f"{layer}.{tail}"] = value
            continue
        renamed = {
            "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "class_embedding": "vision_model.embeddings.class_embedding",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "logit_scale": "logit_scale",
        }.get(rest)
        if renamed:
            out[renamed] = value
        elif rest == "positional_embedding":
            out[f"{prefix}.embeddings.position_embedding.weight"] = value
        elif rest in ("proj", "text_projection"):
            out[f"{_PROJECTION['vision' if prefix == 'vision_model' else 'text']}.weight"] = value.T.contiguous()
        elif re.fullmatch(r"ln_(pre|post|final)\.(weight|bias)", rest):
            ln, kind = rest.split(".")
            out[f"{prefix}.{_TOWER_RENAMES[ln]}.{kind}"] = value
        else:
            out[key] = value  # left for the strict key check to report
    return out


@dataclass(frozen=True)
class OpenAIShapes:
    """The sizes an OpenAI / open_clip state dict's tensors fix; `WEIGHTS` names the tensor each is read from.
    Head counts and the activation are not among them: the weights have the same shapes either way."""

    width: int
    patch_size: int
    positions: int
    vision_layers: int
    vision_mlp: int
    text_width: int
    vocab_size: int
    context_length: int
    text_layers: int
    text_mlp: int
    embed_dim: int

    WEIGHTS = {
        "width": "visual.conv1.weight", "patch_size": "visual.conv1.weight",
        "positions": "visual.positional_embedding", "vision_layers": "visual.transformer.resblocks",
        "vision_mlp": "visual.transformer.resblocks.0.mlp.c_fc.weight", "text_width": "token_embedding.weight",
        "vocab_size": "token_embedding.weight", "context_length": "positional_embedding",
        "text_layers": "transformer.resblocks", "text_mlp": "transformer.resblocks.0.mlp.c_fc.weight",
        "embed_dim": "text_projection",
    }


def openai_shapes(state: StateDict, source: str) -> OpenAIShapes:
    def n_blocks(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        return len({m.group(1) for k in state if (m := pattern.match(k))})

    try:
        conv = state["visual.conv1.weight"]
        return OpenAIShapes(
            width=conv.shape[0], patch_size=conv.shape[-1], positions=state["visual.positional_embedding"].shape[0],
            vision_layers=n_blocks("visual."),
            vision_mlp=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            text_width=state["token_embedding.weight"].shape[1], vocab_size=state["token_embedding.weight"].shape[0],
            context_length=state["positional_embedding"].shape[0], text_layers=n_blocks(""),
            text_mlp=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            embed_dim=state["text_projection"].shape[1])
    except KeyError as e:
        raise CheckpointError(f"{source} is an OpenAI-layout state dict without {e}: "
                              "clipx reads ViT CLIPs with both towers") from None
    except IndexError as e:  # tensors of the wrong rank
        raise CheckpointError(f"the shapes in {source} do not make a ViT CLIP: {e}") from None


def split_in_proj(prefix: str, key: str, value: torch.Tensor) -> StateDict:
    """A fused `...in_proj_weight` / `in_proj_bias` (torch's MultiheadAttention) as `{prefix}q_proj.weight`, ..."""
    kind = key.rsplit("_", 1)[1]  # weight / bias
    return {f"{prefix}{name}_proj.{kind}": part.clone() for name, part in zip("qkv", value.chunk(3, dim=0))}


def config_from_openai(shapes: OpenAIShapes, vision_heads: int, text_heads: int, hidden_act: str,
                       source: str, image_size: int | None = None) -> CLIPConfig:
    """The architecture of an OpenAI / open_clip state dict: its shapes plus what they cannot tell.
    `image_size` defaults to the largest the positions fit (OpenAI's build_model reads it so)."""
    grid = round((shapes.positions - 1) ** 0.5)
    try:
        vision = VisionConfig(hidden_size=shapes.width, intermediate_size=shapes.vision_mlp,
                              num_hidden_layers=shapes.vision_layers, num_attention_heads=vision_heads,
                              image_size=image_size or shapes.patch_size * grid, patch_size=shapes.patch_size,
                              hidden_act=hidden_act, projection_dim=shapes.embed_dim)
        text = TextConfig(hidden_size=shapes.text_width, intermediate_size=shapes.text_mlp,
                          num_hidden_layers=shapes.text_layers, num_attention_heads=text_heads,
                          vocab_size=shapes.vocab_size, max_position_embeddings=shapes.context_length,
                          hidden_act=hidden_act, projection_dim=shapes.embed_dim,
                          eos_token_id=2)  # pool at argmax(input_ids), as OpenAI and open_clip do for any vocabulary
    except ValueError as e:  # e.g. a width that gives no heads
        raise CheckpointError(f"the shapes in {source} do not make a ViT CLIP: {e}") from None
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=shapes.embed_dim)


def _sized_by(tower: VisionConfig | TextConfig, prefix: str, projection_weight: str) -> list[tuple[str, int, str, int]]:
    """(what config.json says, the size it implies, HF weight, dimension) for every size the tower allocates."""
    def field(name: str) -> tuple[str, int]:
        return f"{name}={getattr(tower, name)}", getattr(tower, name)

    positions = f"{prefix}embeddings.position_embedding.weight"
    if isinstance(tower, VisionConfig):
        patches = f"{prefix}embeddings.patch_embedding.weight"
        n = tower.grid_size ** 2 + tower.prefix_tokens
        sizes = [(*field("hidden_size"), patches, 0), (*field("num_channels"), patches, 1),
                 (*field("patch_size"), patches, 2),
                 (f"image_size={tower.image_size} with patch_size={tower.patch_size}, which needs {n} positions",
                  n, positions, 0)]
    else:
        tokens = f"{prefix}embeddings.token_embedding.weight"
        sizes = [(*field("hidden_size"), tokens, 1), (*field("vocab_size"), tokens, 0),
                 (*field("max_position_embeddings"), positions, 0)]
    sizes.append((*field("intermediate_size"), f"{prefix}encoder.layers.0.mlp.fc1.weight", 0))
    if tower.projection_dim is not None:
        sizes.append((*field("projection_dim"), projection_weight, 0))
    return sizes


def check_config_against_weights(config: CLIPConfig, hf_state: StateDict, source: str) -> None:
    """Every size the model would allocate, compared with the weights' shapes before the model is built:
    a config.json that disagrees with its weights (or asks for absurd sizes) fails here at once, naming
    the field, rather than in torch's allocator or after minutes of building a million layers."""
    joint = config.vision_config is not None and config.text_config is not None
    hf = config.layout().hf_key
    wrong = []
    for key, prefix, projection in (("vision_config", "vision_model.", hf("vision.proj.weight")),
                                    ("text_config", "text_model.", hf("text.proj.weight"))):
        tower = getattr(config, key)
        if tower is None:
            continue
        where = f"{key}." if joint else ""
        for says, size, weight, dim in _sized_by(tower, prefix, projection):
            if weight not in hf_state:
                raise CheckpointError(f"the weights in {source} have no {weight}, so config.json's "
                                      f"{where}{says.partition('=')[0]} cannot be checked against them")
            shape = tuple(hf_state[weight].shape)
            if len(shape) <= dim or shape[dim] != size:
                wrong.append(f"config.json says {where}{says} but the weights have "
                             f"{shape[dim] if len(shape) > dim else 'no such dimension'} ({weight}: {shape})")
        layer = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        n_layers = len({m.group(1) for k in hf_state if (m := layer.match(k))})
        if n_layers != tower.num_hidden_layers:
            wrong.append(f"config.json says {where}num_hidden_layers={tower.num_hidden_layers} but the weights "
                         f"have {n_layers}")
    if wrong:
        raise CheckpointError(f"config.json does not fit the weights in {source}:\n  " + "\n  ".join(wrong))


def add_tower_prefix(state: StateDict, config: CLIPConfig) -> StateDict:
    """Bare `CLIPVisionModel` / `CLIPTextModel` checkpoints have no `vision_model.` prefix."""
    if config.vision_config is not None and config.text_config is not None:
        return state
    prefix = "vision_model." if config.vision_config is not None else "text_model."
    bare = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "final_layer_norm.", "head.")
    return {prefix + k if k.startswith(bare) else k: v for k, v in state.items()}


def load_into(model: "CLIP", hf_state: StateDict, source: str) -> None:
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
    model.load_state_dict({expected[k]: v for k, v in hf_state.items()}, strict=False)  # checked above


def _listing(items: list[str], sep: str = ", ", limit: int = 12) -> str:
    if not items:
        return "none"
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


# --- writing -------------------------------------------------------------------------------

def save_folder(model: "CLIP", folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = model.config.layout()
    state = layout.to_hf({layout.hf_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    if model.vision is None or model.text is None:
        tower = "vision" if model.vision is not None else "text"
        if not layout.tower_prefixed(getattr(model, tower)):
            state = {k.removeprefix(_TOWER_PREFIX[tower] + "."): v for k, v in state.items()}
        for key in JOINT_PARAMETERS:
            state.pop(key, None)
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.save(folder)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    if model.processor is not None:
        model.processor.save_pretrained(folder)


def read_config(folder: Path) -> CLIPConfig | None:
    path = folder / "config.json"
    if is_file(path):
        return CLIPConfig.from_json_file(path)
    return None
