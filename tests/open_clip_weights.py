"""Weights in open_clip's (and OpenAI's) published key layout, for tests that load such state dicts:
random ones, or a transformers CLIPModel's renamed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def open_clip_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's key names (fused in_proj, [in, out] projections)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, width):
        return {f"{prefix}.weight": 1 + rand(width), f"{prefix}.bias": rand(width)}

    def blocks(prefix, width, layers, mlp):
        sd = {}
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            sd |= {**norm(b + "ln_1", width), **norm(b + "ln_2", width),
                   # large q / k so that attention patterns, and with them the head count, matter
                   b + "attn.in_proj_weight": rand(3 * width, width, scale=2 * width ** -0.5),
                   b + "attn.in_proj_bias": rand(3 * width),
                   b + "attn.out_proj.weight": rand(width, width, scale=width ** -0.5),
                   b + "attn.out_proj.bias": rand(width),
                   b + "mlp.c_fc.weight": rand(mlp, width, scale=width ** -0.5), b + "mlp.c_fc.bias": rand(mlp),
                   b + "mlp.c_proj.weight": rand(width, mlp, scale=mlp ** -0.5), b + "mlp.c_proj.bias": rand(width)}
        return sd

    v, t, embed = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    w, p, tw = v["width"], v["patch_size"], t["width"]
    positions = (v["image_size"] // p) ** 2 + 1
    return {
        "visual.conv1.weight": rand(w, 3, p, p, scale=(3 * p * p) ** -0.5),
        "visual.class_embedding": rand(w), "visual.positional_embedding": rand(positions, w),
        **norm("visual.ln_pre", w), **blocks("visual.", w, v["layers"], int(w * v["mlp_ratio"])),
        **norm("visual.ln_post", w), "visual.proj": rand(w, embed, scale=w ** -0.5),
        "token_embedding.weight": rand(t["vocab_size"], tw, scale=1.0),
        "positional_embedding": rand(t["context_length"], tw),
        **blocks("", tw, t["layers"], int(tw * t.get("mlp_ratio", 4.0))),
        **norm("ln_final", tw), "text_projection": rand(tw, embed, scale=tw ** -0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }


def hf_to_openai(state: dict) -> dict:
    """The published OpenAI <-> Hugging Face key mapping, written out independently of clipx."""
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        tower = "visual." if k.startswith("vision_model.") else ""
        k2 = k.replace("vision_model.", "").replace("text_model.", "")
        if k2.startswith("encoder.layers."):
            i, rest = k2[len("encoder.layers."):].split(".", 1)
            base = f"{tower}transformer.resblocks.{i}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = rest.split(".")[2]
                if rest.startswith("self_attn.q_proj"):
                    qkv = [state[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                    out[base + f"attn.in_proj_{kind}"] = torch.cat(qkv, 0)
                continue
            rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            out[base + rest] = v
            continue
        simple = {
            "embeddings.patch_embedding.weight": "visual.conv1.weight",
            "embeddings.class_embedding": "visual.class_embedding",
            "pre_layrnorm.weight": "visual.ln_pre.weight", "pre_layrnorm.bias": "visual.ln_pre.bias",
            "post_layernorm.weight": "visual.ln_post.weight", "post_layernorm.bias": "visual.ln_post.bias",
            "embeddings.token_embedding.weight": "token_embedding.weight",
            "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
            "logit_scale": "logit_scale",
        }
        if k2 == "embeddings.position_embedding.weight":
            out[tower + "positional_embedding"] = v
        elif k2 == "visual_projection.weight":
            out["visual.proj"] = v.T
        elif k2 == "text_projection.weight":
            out["text_projection"] = v.T
        else:
            out[simple[k2]] = v
    return out


def write_release(folder: Path, state: dict[str, torch.Tensor], model_cfg: dict | None,
                  preprocess_cfg: dict | None = None) -> Path:
    """An open_clip release folder: the state dict, and open_clip_config.json unless model_cfg is None."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    if model_cfg is not None:
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
        (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder
