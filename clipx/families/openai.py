"""OpenAI's and open_clip's state dicts (fused in_proj, transposed projections, `visual.` / `transformer.`
names): recognised, converted to Hugging Face's keys, and the architecture their shapes fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..model.config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from ..model.layout import PROJECTION, TOWER_RENAMES, StateDict, split_in_proj


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
            out[f"{PROJECTION['vision' if prefix == 'vision_model' else 'text']}.weight"] = value.T.contiguous()
        elif re.fullmatch(r"ln_(pre|post|final)\.(weight|bias)", rest):
            ln, kind = rest.split(".")
            out[f"{prefix}.{TOWER_RENAMES[ln]}.{kind}"] = value
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
                          eos_token_id=2, pooling="eos_argmax")  # as OpenAI and open_clip pool, for any vocabulary
    except ValueError as e:  # e.g. a width that gives no heads
        raise CheckpointError(f"the shapes in {source} do not make a ViT CLIP: {e}") from None
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=shapes.embed_dim)
