"""open_clip's architecture names and its `open_clip_config.json`.

An OpenAI / open_clip state dict's shapes fix every size but two things: the number of attention
heads (open_clip's ViT-H/g/bigG use heads 80, 88 and 104 wide, not 64) and the activation (QuickGELU
or GELU). A wrong guess loads without error and computes wrong outputs, so both come from the
release's `open_clip_config.json`, or from an architecture named with `clipx.load(..., model=...)`,
and are only guessed, with a warning, when neither is given.

The table holds the `model_cfg` values of open_clip's own `model_configs/*.json` for the plain ViT
CLIPs clipx implements. Pretrained releases (LAION, DataComp, MetaCLIP, DFN) use these names:
MetaCLIP's ViT-H-14 is "ViT-H-14-quickgelu", DFN's ViT-H-14 at 378 pixels "ViT-H-14-378-quickgelu".
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from ..model.layout import StateDict
from .openai import OpenAIShapes, config_from_openai, openai_shapes
from ..model.config import CLIPConfig
from ..errors import CheckpointError
from ..files import is_file, read_json
from ..preprocess.image import BICUBIC, ImageProcessor

CONFIG_NAME = "open_clip_config.json"


def _vit(embed_dim: int, image_size: int, layers: int, width: int, patch_size: int, text_width: int,
         text_heads: int, text_layers: int, head_width: int = 64, mlp_ratio: float = 4.0) -> dict[str, Any]:
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": head_width,
                           "mlp_ratio": mlp_ratio, "patch_size": patch_size},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": text_heads,
                         "layers": text_layers}}


_GELU = {
    "ViT-B-32": _vit(512, 224, 12, 768, 32, 512, 8, 12),
    "ViT-B-16": _vit(512, 224, 12, 768, 16, 512, 8, 12),
    "ViT-B-16-plus-240": _vit(640, 240, 12, 896, 16, 640, 10, 12),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, 768, 12, 12),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, 768, 12, 12),
    "ViT-H-14": _vit(1024, 224, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-H-14-378": _vit(1024, 378, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-g-14": _vit(1024, 224, 40, 1408, 14, 1024, 16, 24, head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": _vit(1280, 224, 48, 1664, 14, 1280, 20, 32, head_width=104, mlp_ratio=4.9231),
}
# open_clip ships a "-quickgelu" twin of these (OpenAI's weights, MetaCLIP, DFN); ViT-g-14 has none
_QUICKGELU_TWINS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-H-14-378", "ViT-bigG-14")
ARCHITECTURES: dict[str, dict[str, Any]] = {
    **{name: {**cfg, "quick_gelu": False} for name, cfg in _GELU.items()},
    **{f"{name}-quickgelu": {**_GELU[name], "quick_gelu": True} for name in _QUICKGELU_TWINS},
}
# OpenAI's own releases: their shapes alone suggest QuickGELU (but LAION's ViT-B-32 has the same shapes)
_OPENAI_RELEASES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")

# The fields clipx reads, with open_clip's defaults (CLIPVisionCfg / CLIPTextCfg in open_clip/model.py).
_VISION_READ = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
_TEXT_READ = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
# Fields that change the computation in ways clipx does not implement: allowed only at their defaults
# (any of the listed values). Older open_clip names are included (input_patchnorm, n_queries, ...).
_NONE, _FALSE = (None,), (False,)
_KWARGS = (None, {})
_VISION_UNSUPPORTED = {
    "ls_init_value": _NONE, "attentional_pool": _FALSE, "attn_pooler_queries": (256,), "attn_pooler_heads": (8,),
    "n_queries": (256,), "no_ln_pre": _FALSE, "pos_embed_type": ("learnable",), "final_ln_after_pool": _FALSE,
    "pool_type": ("tok",), "global_average_pool": _FALSE, "input_patchnorm": _FALSE, "image_seq_len": _NONE,
    "act_kwargs": _KWARGS, "norm_kwargs": _KWARGS, "block_type": (None, "default"), "qk_norm": _FALSE,
    "scaled_cosine_attn": _FALSE, "scale_heads": _FALSE, "scale_attn_inner": _FALSE, "scale_attn": _FALSE,
    "scale_fc": _FALSE, "timm_model_name": _NONE, "proj_bias": _FALSE,
}
_TEXT_UNSUPPORTED = {
    "text_arch": ("clip",), "variable_text": _FALSE, "ls_init_value": _NONE, "embed_cls": _FALSE, "pad_id": (0,),
    "bos_id": _NONE, "no_causal_mask": _FALSE, "final_ln_after_pool": _FALSE, "pool_type": ("argmax",),
    "proj_bias": _FALSE, "proj_type": ("linear",), "act_kwargs": _KWARGS, "norm_kwargs": _KWARGS,
    "block_type": (None, "default"), "qk_norm": _FALSE, "scaled_cosine_attn": _FALSE, "scale_heads": _FALSE,
    "scale_attn_inner": _FALSE, "scale_attn": _FALSE, "scale_fc": _FALSE, "hf_model_name": _NONE,
    # another tokenizer than CLIP's BPE, which clipx would attach
    "hf_tokenizer_name": _NONE, "tokenizer_mode": _NONE, "tokenizer_kwargs": _KWARGS, "tokenizer_type": ("",),
    "text_mask": ("first",),
}
_MODEL_UNSUPPORTED = {"init_logit_bias": _NONE, "nonscalar_logit_scale": _FALSE, "multimodal_cfg": _NONE}
# Fields with no effect on a plain ViT CLIP in eval mode: training-only settings, output formats, and
# settings of parts (timm / Hugging Face towers, the "modern" text tower, eos pooling) refused above.
_VISION_IGNORED = {"patch_dropout", "output_tokens", "timm_model_pretrained", "timm_pool", "timm_proj",
                   "timm_proj_bias", "timm_drop", "timm_drop_path", "timm_model_kwargs"}
_TEXT_IGNORED = {"output_tokens", "eos_id", "tiktoken_name", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type",
                 "hf_model_config", "proj", "pooler_type", "attention_mode", "pos_embed", "rope_temperature",
                 "mlp_type", "norm_type", "norm_eps", "attn_gated", "pre_norm", "norm_placement",
                 "zero_init_residual", "reg_tokens", "value_residual", "attention_bias", "mlp_bias", "gate_bias"}
_MODEL_IGNORED = {"cast_dtype", "output_dict", "init_logit_scale", "custom_text"}  # the weights hold logit_scale

# open_clip's preprocess_cfg -> PIL resampling filters
_INTERPOLATION = {"bicubic": BICUBIC, "bilinear": 2, "nearest": 0, "lanczos": 1}


def architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def model_cfg(name: str) -> dict[str, Any]:
    """open_clip's `model_cfg` for an architecture name such as "ViT-H-14"."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown open_clip architecture model={name!r}; clipx knows: {', '.join(architectures())}")
    return ARCHITECTURES[name]


def read_config_file(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(model_cfg, preprocess_cfg) of `folder/open_clip_config.json`, or None when there is none."""
    path = folder / CONFIG_NAME
    if not is_file(path):
        return None
    data = read_json(path)
    model, preprocess = data.get("model_cfg"), data.get("preprocess_cfg", {})
    if model is None:
        raise CheckpointError(f"{path} has no model_cfg")
    for name, value in (("model_cfg", model), ("preprocess_cfg", preprocess)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: {name} must be a JSON object {{...}}, got a {type(value).__name__}")
    return model, preprocess


def clip_config(state: StateDict, folder: Path, model: str | None, source: str) -> tuple[CLIPConfig, dict | None]:
    """The architecture of an OpenAI / open_clip state dict without config.json, and the preprocess_cfg
    of its open_clip_config.json (None without one). The architecture comes from `model=` if given,
    else from open_clip_config.json beside the weights, else guessed off the shapes with a warning."""
    shapes = openai_shapes(state, source)
    from_file = read_config_file(folder)
    preprocess = from_file[1] if from_file is not None else None
    if model is not None:
        return config_from_model_cfg(model_cfg(model), shapes, f"model={model!r}", source), preprocess
    if from_file is not None:
        return config_from_model_cfg(from_file[0], shapes, f"{folder / CONFIG_NAME}: model_cfg", source), preprocess
    return guessed_config(shapes, source), None


def config_from_model_cfg(cfg: dict[str, Any], shapes: OpenAIShapes, where: str, source: str) -> CLIPConfig:
    """`where` names the origin in errors ("model='ViT-H-14'", ".../open_clip_config.json: model_cfg")."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    for name, value in (("vision_cfg", vision), ("text_cfg", text)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}.{name} must be a JSON object {{...}}, got a {type(value).__name__}")
    _refuse_unsupported(cfg, _MODEL_UNSUPPORTED, _MODEL_IGNORED | {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"},
                        where)
    _refuse_unsupported(vision, _VISION_UNSUPPORTED, _VISION_IGNORED | set(_VISION_READ), f"{where}.vision_cfg")
    _refuse_unsupported(text, _TEXT_UNSUPPORTED, _TEXT_IGNORED | set(_TEXT_READ), f"{where}.text_cfg")
    v = {k: vision.get(k, default) for k, default in _VISION_READ.items()}
    t = {k: text.get(k, default) for k, default in _TEXT_READ.items()}
    if "embed_dim" not in cfg:
        raise CheckpointError(f"{where} has no embed_dim")
    if isinstance(v["image_size"], list) and len(v["image_size"]) == 2 and v["image_size"][0] == v["image_size"][1]:
        v["image_size"] = v["image_size"][0]  # [h, w] of a square
    for tower, values in (("vision_cfg", v), ("text_cfg", t)):
        for k, value in values.items():
            number, kind = ((int, float), "number") if k == "mlp_ratio" else (int, "integer")
            if isinstance(value, bool) or not isinstance(value, number) or value <= 0 or not math.isfinite(value):
                resnet = " (clipx reads ViTs, not ResNets)" if (tower, k) == ("vision_cfg", "layers") else ""
                raise CheckpointError(f"{where}.{tower}.{k} must be a positive {kind}, got {value!r}{resnet}")
    embed_dim, quick_gelu = cfg["embed_dim"], cfg.get("quick_gelu", False)
    if not isinstance(quick_gelu, bool):
        raise CheckpointError(f"{where}.quick_gelu must be true or false, got {quick_gelu!r}")

    # each size the config implies, against the weights'; open_clip floors the MLP width
    vision_mlp, text_mlp = int(v["width"] * v["mlp_ratio"]), int(t["width"] * t["mlp_ratio"])
    positions = (v["image_size"] // v["patch_size"]) ** 2 + 1
    said = {"width": (f"vision_cfg.width={v['width']}", v["width"]),
            "patch_size": (f"vision_cfg.patch_size={v['patch_size']}", v["patch_size"]),
            "positions": (f"vision_cfg.image_size={v['image_size']} ({positions} positions with "
                          f"patch_size {v['patch_size']})", positions),
            "vision_layers": (f"vision_cfg.layers={v['layers']}", v["layers"]),
            "vision_mlp": (f"vision_cfg.mlp_ratio={v['mlp_ratio']} (MLP width {vision_mlp})", vision_mlp),
            "text_width": (f"text_cfg.width={t['width']}", t["width"]),
            "vocab_size": (f"text_cfg.vocab_size={t['vocab_size']}", t["vocab_size"]),
            "context_length": (f"text_cfg.context_length={t['context_length']}", t["context_length"]),
            "text_layers": (f"text_cfg.layers={t['layers']}", t["layers"]),
            "text_mlp": (f"text_cfg.mlp_ratio={t['mlp_ratio']} (MLP width {text_mlp})", text_mlp),
            "embed_dim": (f"embed_dim={embed_dim}", embed_dim)}
    wrong = [f"{says}, but the weights have {getattr(shapes, key)} ({OpenAIShapes.WEIGHTS[key]})"
             for key, (says, size) in said.items() if getattr(shapes, key) != size]
    if wrong:
        raise CheckpointError(f"{where} does not fit the weights in {source}:\n  " + "\n  ".join(wrong))
    if v["width"] % v["head_width"]:
        raise CheckpointError(f"{where}.vision_cfg.head_width={v['head_width']} does not divide "
                              f"vision_cfg.width={v['width']}")
    if t["width"] % t["heads"]:
        raise CheckpointError(f"{where}.text_cfg.heads={t['heads']} does not divide text_cfg.width={t['width']}")
    return config_from_openai(shapes, v["width"] // v["head_width"], t["heads"],
                              "quick_gelu" if quick_gelu else "gelu", source, image_size=v["image_size"])


def _refuse_unsupported(cfg: dict[str, Any], unsupported: dict[str, tuple], known: set[str], where: str) -> None:
    for name, value in cfg.items():
        if name in unsupported:
            if value not in unsupported[name]:
                raise CheckpointError(f"{where}.{name}={value!r} is an open_clip feature clipx does not implement "
                                      f"(it computes {name}={unsupported[name][0]!r} only); refusing rather than "
                                      "loading a model that computes something else")
        elif name not in known:
            raise CheckpointError(f"{where}.{name} is a setting clipx does not know (a newer open_clip's?); "
                                  "refusing rather than loading a model that may compute something else")


def guessed_config(shapes: OpenAIShapes, source: str) -> CLIPConfig:
    """OpenAI's build_model's reading: 64-wide heads and QuickGELU, said in a warning."""
    config = config_from_openai(shapes, shapes.width // 64, shapes.text_width // 64, "quick_gelu", source)
    openai = next((name for name in _OPENAI_RELEASES
                   if _config_from_cfg_fits(ARCHITECTURES[name], shapes)), None)
    if openai:
        warnings.warn(f"{source} has the shapes of OpenAI's {openai} and no {CONFIG_NAME}: assuming OpenAI's "
                      f"QuickGELU. open_clip's own {openai} trainings (LAION's, DataComp's) use plain GELU: for "
                      f"those pass model={openai!r}; for OpenAI's weights pass model='{openai}-quickgelu' to "
                      "silence this warning", UserWarning, stacklevel=4)
    else:
        warnings.warn(f"{source} has no {CONFIG_NAME} and no model= was given, so its architecture was guessed "
                      f"from the weights' shapes: {config.vision_config.num_attention_heads} vision and "
                      f"{config.text_config.num_attention_heads} text attention heads (width / 64) and QuickGELU. "
                      f"A wrong guess loads without error and computes wrong outputs (open_clip's ViT-H-14, for "
                      f"one, has 16 vision heads, not 20, and GELU); state it with clipx.load(..., model=NAME), "
                      f"NAME one of clipx.families.open_clip.architectures(), or put the release's {CONFIG_NAME} beside "
                      "the weights",
                      UserWarning, stacklevel=4)
    return config


def _config_from_cfg_fits(cfg: dict[str, Any], shapes: OpenAIShapes) -> bool:
    try:
        config_from_model_cfg(cfg, shapes, "", "")
    except CheckpointError:
        return False
    return True


def image_processor(preprocess: dict[str, Any], image_size: int, path: Path) -> ImageProcessor:
    """CLIP's recipe with open_clip's preprocess_cfg (mean, std, interpolation, resize_mode) carried
    over; the size is the model's image size, as open_clip sets it."""
    crop = {"height": image_size, "width": image_size}
    settings: dict[str, Any] = {"size": {"shortest_edge": image_size}, "crop_size": crop}
    if "mean" in preprocess:
        settings["image_mean"] = preprocess["mean"]
    if "std" in preprocess:
        settings["image_std"] = preprocess["std"]
    interpolation = preprocess.get("interpolation", "bicubic")
    if interpolation in _INTERPOLATION:
        settings["resample"] = _INTERPOLATION[interpolation]
    else:
        warnings.warn(f"{path}: preprocess_cfg.interpolation={interpolation!r} is not one clipx resizes with; "
                      "using bicubic", UserWarning, stacklevel=4)
    resize_mode = preprocess.get("resize_mode", "shortest")
    if resize_mode == "squash":
        settings["size"] = crop  # straight to the square, no crop left to do
    elif resize_mode != "shortest":
        warnings.warn(f"{path}: preprocess_cfg.resize_mode={resize_mode!r} is not a resize clipx implements; "
                      "clipx resizes the shortest edge and centre-crops, so images that are not square reach the "
                      "model otherwise than in its training", UserWarning, stacklevel=4)
    try:
        return ImageProcessor.from_dict(settings)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: preprocess_cfg: {e}") from None
