"""The files other toolkits write their SAEs in, read into the fields of clipx's SAEConfig and its tensors
(W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, a JumpReLU's threshold), and SAELens' written.

Each reader follows its source's own loader and forward, read from their code:
- SAELens (`SAE.load_from_disk`, 6.x; configs of 5.x renamed as its `handle_pre_6_0_config` does): a folder
  with `cfg.json` and `sae_weights.safetensors` (a `sparsity.safetensors` beside them is not needed). Its
  "standard" (ReLU), "topk" and "jumprelu" SAEs; `rescale_acts_by_decoder_norm` folded into the weights as
  its `fold_W_dec_norm` does; "expected_average_only_in" is no step at run time (SAELens folds a factor it
  reads from its release list, never from the folder).
- saev (`saev.nn.modeling.dump` / `load`): one file, a JSON header line and a torch state dict after it.
  Until July 2025 saev subtracted b_dec before encoding (files without a schema, or schema 1 with a ReLU);
  later files encode x @ W_enc + b_enc, and today's saev runs every file so. Its TopK keeps the k largest
  values unrectified; its BatchTopK runs, at inference, as a JumpReLU at one learned threshold.
- ViT-Prisma (`SparseAutoencoder.load_from_pretrained`): a `.pt` holding {"cfg", "state_dict"} (its
  `save_model`; the config is a pickled object, of which only the fields are read) or a bare state dict
  with `config.json` in its folder. Its "standard" SAEs, ReLU or TopK.

A toolkit's hook names are TransformerLens' without a tower ("blocks.9.hook_resid_post"): Prisma's are
the vision tower's, SAELens' need the tower said. Where a layout holds what clipx cannot run the same way
(gated SAEs, transcoders, per-head hooks, a CLS-only SAE), the reader refuses and says what.
"""

from __future__ import annotations

import io
import json
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...files import read_json, read_safetensors, save_safetensors, write_json

SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"  # the layout written: SAELens reads configs older than 6 as its 5.x ones
TOWERS = ("vision", "text")
# block hooks whose activations are [batch, positions, width], as an SAE reads them
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
               "ln1.hook_normalized", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post")
INPUT_NORMS = {"layer_norm": "layer_norm", "constant_norm_rescale": "constant_norm_rescale"}
OTHER_LAYOUTS = (f"SAELens' folders hold {SAELENS_CONFIG} and {SAELENS_WEIGHTS}, saev's are one file, "
                 "ViT-Prisma's a .pt file (with config.json beside it)")


@dataclass
class Imported:
    """An SAE read from another toolkit's files: SAEConfig's fields, its tensors, and where they came from."""

    fields: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    source: str


def layout_of(path: Path) -> str:
    """"clipx", "saelens", "saev" or "prisma", from the files at `path`; "clipx" where none matches (its
    loader then names what is missing)."""
    if path.is_dir():
        if (path / SAELENS_CONFIG).is_file() and not (path / "sae.safetensors").is_file():
            return "saelens"
        if (path / "config.json").is_file() and not (path / "sae.safetensors").is_file() and _pt_files(path):
            return "prisma"
        return "clipx"
    if path.is_file():
        with open(path, "rb") as f:
            start = f.read(2)
        if start[:1] == b"{":
            return "saev"
        if start == b"PK":  # torch.save's zip
            return "prisma"
        raise ValueError(f"{path} is no SAE file clipx knows: {OTHER_LAYOUTS}, clipx's a folder")
    return "clipx"


def clipx_hook_name(name: Any, tower: str | None, source: str) -> str:
    """The clipx hook a toolkit's hook name is, "vision.blocks.3.hook_resid_post" for ("blocks.3.
    hook_resid_post", "vision"); names already carrying a tower keep it. A ValueError where there is none."""
    if not isinstance(name, str):
        raise ValueError(f"{source} names no hook (hook name {name!r})")
    head, _, rest = name.partition(".")
    if head in TOWERS:
        tower, name = head, rest
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if match is None or match.group(2) not in BLOCK_HOOKS:
        raise ValueError(f"{source}: hook {name!r} is none clipx splices an SAE at (blocks.<i>.<hook> with "
                         f"<hook> one of {', '.join(BLOCK_HOOKS)})")
    if tower not in TOWERS:
        raise ValueError(f"{source}: hook {name!r} names no tower; say which with tower='vision' or 'text' "
                         f"(got tower={tower!r})")
    return f"{tower}.{name}"


# --- SAELens ---------------------------------------------------------------------------------------------
def read_saelens(folder: Path, tower: str | None) -> Imported:
    config_path, weights_path = folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS
    for file in (config_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"no {file.name} in {folder}: SAELens' folders hold {SAELENS_CONFIG} and "
                                    f"{SAELENS_WEIGHTS}")
    cfg = read_json(config_path)
    source = str(config_path)
    metadata = cfg.get("metadata") or {}
    version = cfg.get("sae_lens_version") or metadata.get("sae_lens_version")
    if _major(version) < 6:
        cfg = _saelens_5(cfg)
        metadata = cfg
    architecture = cfg.get("architecture", "standard")
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(architecture)
    if activation is None:
        raise ValueError(f"{source}: SAELens architecture {architecture!r} is not one clipx runs (standard, "
                         "topk, jumprelu)")
    if metadata.get("hook_head_index") is not None or cfg.get("reshape_activations", "none") != "none":
        raise ValueError(f"{source}: an SAE on one head's or on all heads' hook_z; clipx splices SAEs at "
                         "token activations [batch, positions, width]")
    tensors, _ = read_safetensors(weights_path)
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.equal(scaling, torch.ones_like(scaling)):
        raise ValueError(f"{weights_path}: a finetuning scaling_factor other than ones, which SAELens 6 "
                         "loads no more")
    if activation == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        tensors = _fold_decoder_norm(tensors)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", *INPUT_NORMS):
        raise ValueError(f"{source}: normalize_activations={norm!r} is none SAELens runs")
    fields = dict(hook_name=clipx_hook_name(metadata.get("hook_name"), tower, source), d_in=cfg.get("d_in"),
                  d_sae=cfg.get("d_sae"), activation=activation, k=cfg.get("k") if activation == "topk" else None,
                  l1=cfg.get("l1_coefficient"), positions=metadata.get("clipx_positions", "all"),
                  subtract_b_dec=cfg.get("apply_b_dec_to_input", True), input_norm=INPUT_NORMS.get(norm, "none"))
    return Imported(fields, tensors, str(weights_path))


def _major(version: Any) -> int:
    match = re.match(r"(\d+)", str(version)) if version else None
    return int(match.group(1)) if match else 0


def _saelens_5(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config SAELens wrote before 6.0, in 6.0's names and defaults."""
    renamed = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    cfg = {renamed.get(key, key): value for key, value in cfg.items()}
    cfg.setdefault("architecture", "standard")
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if cfg.get("activation_fn") == "topk" and k is not None:
        cfg.update(architecture="topk", k=k)
    norm = cfg.get("normalize_activations")
    cfg["normalize_activations"] = ("expected_average_only_in" if norm is True else
                                    "none" if norm in (None, False) else norm)
    return cfg


def _fold_decoder_norm(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TopK SAE that ranks pre-activations times its decoder rows' norms, as one with unit rows."""
    norms = tensors["W_dec"].norm(dim=-1)
    return {**tensors, "W_enc": tensors["W_enc"] * norms, "b_enc": tensors["b_enc"] * norms,
            "W_dec": tensors["W_dec"] / norms[:, None]}


def write_saelens(folder: Path, fields: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """SAELens' layout of an SAE with clipx's config `fields`; `tensors` hold W_enc (the tied one too)."""
    if fields["activation"] == "topk" and not fields["topk_relu"]:
        raise ValueError("SAELens' TopK rectifies the values it keeps; this SAE's (topk_relu=False) does not")
    scale = fields["input_scale"]  # folded as SAELens' fold_activation_norm_scaling_factor does
    weights = {"W_enc": tensors["W_enc"] * scale, "W_dec": tensors["W_dec"] / scale,
               "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"] / scale}
    if fields["activation"] == "jumprelu":
        weights["threshold"] = tensors["threshold"]
    architecture = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[fields["activation"]]
    cfg = {"d_in": fields["d_in"], "d_sae": fields["d_sae"], "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": fields["subtract_b_dec"], "normalize_activations": fields["input_norm"],
           "reshape_activations": "none", "architecture": architecture,
           "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                        "hook_name": fields["hook_name"], "clipx_positions": fields["positions"]}}
    if architecture == "topk":
        cfg.update(k=fields["k"], rescale_acts_by_decoder_norm=False)
    save_safetensors({name: t.detach().float().contiguous() for name, t in weights.items()},
                     folder / SAELENS_WEIGHTS)
    write_json(cfg, folder / SAELENS_CONFIG)


# --- saev ----------------------------------------------------------------------------------------------
def read_saev(path: Path, hook_name: str, positions: str, subtract_b_dec: bool | None) -> Imported:
    source = str(path)
    with open(path, "rb") as f:
        first, rest = f.readline(), f.read()
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path} does not start with saev's JSON header line")
    schema = header.get("schema")
    if schema is None:  # before schemas: the header is the config, d_vit wide, a ReLU SAE
        cfg, activation = {**header, "d_model": header.get("d_vit")}, {"cls": "Relu", "params": {}}
    elif schema == 1:
        cfg = dict(header.get("cfg") or {})
        name = header.get("cls", "SparseAutoencoderConfig")
        activation = (cfg.get("activation") if name == "SparseAutoencoderConfig" else
                      {"cls": name, "params": {"top_k": cfg.get("top_k", 32)}})
    elif schema in (2, 3, 4, 5):
        cfg = dict(header.get("cfg") or {})
        activation = cfg.get("activation")
    else:
        raise ValueError(f"{path}: saev schema {schema!r} is one clipx does not know (it reads up to 5)")
    if not (isinstance(activation, dict) and isinstance(activation.get("params"), dict)):
        raise ValueError(f"{path}: the header names no activation ({activation!r})")
    d_model = cfg.get("d_model", cfg.get("d_vit"))
    d_sae = cfg.get("d_sae")
    if d_sae is None and isinstance(d_model, int) and isinstance(cfg.get("exp_factor"), int):
        d_sae = d_model * cfg["exp_factor"]
    try:
        tensors = torch.load(io.BytesIO(rest), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged pickle
        raise ValueError(f"{path}: the state dict after the header does not read ({e})") from None
    if not isinstance(tensors, dict):
        raise ValueError(f"{path}: after the header comes no state dict")
    tensors = dict(tensors)
    name, params = activation.get("cls"), activation["params"]
    fields = dict(hook_name=clipx_hook_name(hook_name, None, source), d_in=d_model, d_sae=d_sae,
                  positions=positions)
    threshold = tensors.pop("activation.threshold", None)
    if name == "Relu":
        sparsity = params.get("sparsity")
        coefficient = sparsity.get("params", {}).get("coeff") if isinstance(sparsity, dict) else None
        fields.update(activation="relu", l1=coefficient)
    elif name == "TopK":
        fields.update(activation="topk", k=params.get("top_k", 32), topk_relu=False)
    elif name == "BatchTopK":
        if threshold is None:
            raise ValueError(f"{path}: a BatchTopK SAE without its inference threshold (activation.threshold)")
        # saev's eval mode keeps x where x > max(threshold, 0): the JumpReLU's own ReLU covers threshold <= 0
        fields.update(activation="jumprelu")
        tensors["threshold"] = threshold.expand(d_sae if isinstance(d_sae, int) else 0).clone()
    else:
        raise ValueError(f"{path}: saev activation {name!r} is none clipx runs (Relu, TopK, BatchTopK)")
    if subtract_b_dec is None:
        subtract_b_dec = schema is None or (schema == 1 and name == "Relu")
    fields["subtract_b_dec"] = subtract_b_dec
    return Imported(fields, tensors, source)


# --- ViT-Prisma ------------------------------------------------------------------------------------------
def read_prisma(path: Path) -> Imported:
    if path.is_dir():
        files = _pt_files(path)
        if len(files) != 1:
            raise ValueError(f"{path}: a ViT-Prisma folder holds one .pt checkpoint, found "
                             f"{[f.name for f in files] or 'none'}; pass the file")
        path = files[0]
    source = str(path)
    saved = _torch_load_with_config_objects(path)
    if isinstance(saved, dict) and "cfg" in saved and "state_dict" in saved:
        cfg = saved["cfg"] if isinstance(saved["cfg"], dict) else vars(saved["cfg"])
        tensors = dict(saved["state_dict"])
    elif isinstance(saved, dict) and "config" in saved and "autoencoder" in saved:
        raise ValueError(f"{path}: a legacy SAELens 2 checkpoint (Prisma's load_from_pretrained_legacy_saelens"
                         "_v2); clipx does not read it")
    elif isinstance(saved, dict) and all(isinstance(t, torch.Tensor) for t in saved.values()):
        config_path = path.parent / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{path} is a bare state dict and no config.json is beside it")
        cfg, tensors = read_json(config_path), dict(saved)
    else:
        raise ValueError(f"{path} holds no ViT-Prisma SAE (neither {{'cfg', 'state_dict'}} nor a state dict)")
    if cfg.get("is_transcoder"):
        raise ValueError(f"{source}: a transcoder; clipx's SAEs reconstruct their own input")
    if cfg.get("architecture", "standard") != "standard":
        raise ValueError(f"{source}: ViT-Prisma architecture {cfg.get('architecture')!r} is not one clipx runs "
                         "(standard)")
    if cfg.get("cls_token_only"):
        raise ValueError(f"{source}: an SAE trained on the class token only; clipx's SAEs read patches or all "
                         "tokens")
    if cfg.get("hook_point_head_index") is not None:
        raise ValueError(f"{source}: an SAE on one head's activations; clipx splices SAEs at whole tokens")
    layer = cfg.get("hook_point_layer", 9)
    layer = layer[0] if isinstance(layer, list) and len(layer) == 1 else layer
    hook = f"blocks.{layer}.{cfg.get('layer_subtype', 'ln2.hook_normalized')}"  # as Prisma's hook_point
    function = cfg.get("activation_fn_str", "topk")
    if function not in ("relu", "topk"):
        raise ValueError(f"{source}: activation {function!r} is none clipx runs (relu, topk)")
    d_in, expansion = cfg.get("d_in", 768), cfg.get("expansion_factor", 16)
    fields = dict(hook_name=clipx_hook_name(hook, "vision", source), d_in=d_in,
                  d_sae=d_in * expansion if isinstance(d_in, int) and isinstance(expansion, int) else None,
                  activation=function, k=(cfg.get("activation_fn_kwargs") or {}).get("k") if function == "topk"
                  else None, l1=cfg.get("l1_coefficient") if function == "relu" else None,
                  positions="patches" if cfg.get("use_patches_only") else "all",
                  input_norm=INPUT_NORMS.get(cfg.get("normalize_activations", "layer_norm"), "none"))
    return Imported(fields, tensors, source)


def _pt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.pt") if p.is_file() and "sparsity" not in p.name)


def _torch_load_with_config_objects(path: Path) -> Any:
    """torch.load without running the file's code: tensors as weights_only reads them, and ViT-Prisma's
    pickled config objects as plain records of their fields (their classes stand in, empty)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        outside = [name for name in names if not name.startswith("vit_prisma.")]
        if outside:
            raise ValueError(f"{path} pickles {', '.join(outside)}, which clipx does not unpickle")
        stand_ins = [_stand_in(name) for name in names]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except ValueError:
        raise
    except Exception as e:  # torch raises many kinds for a damaged file
        raise ValueError(f"{path} does not read as a torch checkpoint ({e})") from None


def _stand_in(name: str) -> type:
    module, _, qualname = name.rpartition(".")
    return types.new_class(qualname, exec_body=lambda ns: ns.update(
        __module__=module, __init__=lambda self, *args, **kwargs: None))
