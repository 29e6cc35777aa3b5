"""`clipx.load`: a name, folder, file or hub id -> a ready CLIP with its tokenizer and processor."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..families import open_clip
from ..families.openai import is_openai_layout, openai_to_hf
from .weights import add_tower_prefix, check_config_against_weights, load_into, read_config, read_weights
from ..errors import CheckpointError, CheckpointNotFoundError
from ..files import is_file
from .hub import resolve
from ..model.clip import CLIP
from ..model.save import check_saved
from ..preprocess.image import ImageProcessor
from ..preprocess.bpe import Tokenizer
from ..preprocess.auto import load_tokenizer

CLIP_VOCAB_SIZE = 49408


def load(name_or_path: str | Path, *, revision: str | None = None, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, attention: str = "sdpa", local_files_only: bool | None = None,
         model: str | None = None) -> CLIP:
    """Load a CLIP checkpoint.

    `name_or_path`: "demo" (the model shipped in clipx/data/), a hub id such as
    "openai/clip-vit-base-patch16", a local folder in the hub's layout, or a single state-dict
    file (Hugging Face, OpenAI or open_clip layout). Raises `CheckpointNotFoundError` when
    nothing is found and `CheckpointError` when the files do not make a model.

    `model`: the open_clip architecture ("ViT-H-14", see `clipx.families.open_clip.architectures()`) of an
    OpenAI / open_clip state dict; without it the folder's `open_clip_config.json` says it, and
    without that it is guessed off the weights' shapes, with a warning.
    """
    if model is not None:
        open_clip.model_cfg(model)  # an unknown name fails before anything is downloaded
    device, dtype = _placement(device, dtype)  # and so does a device or dtype the model cannot go to
    try:
        files = resolve(name_or_path, revision, local_files_only)
    except CheckpointNotFoundError:
        if os.path.isdir(name_or_path):  # a save stopped before its weights took their name says so
            check_saved(Path(name_or_path))
        raise
    check_saved(files.folder)  # a folder clipx saved: whole, and as saved, or refused naming the file
    source = str(files.weights[0] if len(files.weights) == 1 else files.folder)
    config = read_config(files.folder)  # first: a broken config.json fails before the weights are read
    from_file = config is not None
    state = read_weights(files.weights)
    if model is not None and (config is not None or not is_openai_layout(state)):
        raise ValueError(f"model={model!r} names the architecture of an OpenAI / open_clip state dict, but "
                         f"{source} " + ("has a config.json" if config is not None else "is in Hugging Face's layout"))
    open_clip_preprocess = None
    if is_openai_layout(state):
        if config is None:
            config, open_clip_preprocess = open_clip.clip_config(state, files.folder, model, source)
        state = openai_to_hf(state)
    elif config is None:
        raise CheckpointError(f"{files.folder} has Hugging Face-layout weights but no config.json")
    else:
        state = add_tower_prefix(state, config)
    hf = config.layout().hf_key
    for tower, projection in ((config.vision_config, hf("vision.proj.weight")), (config.text_config, hf("text.proj.weight"))):
        if tower is not None and projection not in state:
            tower.projection_dim = None  # a bare CLIPVisionModel / CLIPTextModel checkpoint

    if from_file:  # before CLIP(config) allocates what config.json says (a config read off the shapes fits them)
        check_config_against_weights(config, state, source)
    try:
        clip = CLIP(config)
    except ValueError as e:  # a setting no size check covers, e.g. an unknown hidden_act
        raise CheckpointError(f"config.json in {files.folder}: {e}") from None
    load_into(clip, state, source)
    clip.eval()
    if config.vision_config is not None:
        clip.processor = _processor(files.folder, config, open_clip_preprocess)
    if config.text_config is not None:
        clip.tokenizer = _tokenizer(files.folder, config)
        _check_end_token(clip.tokenizer, config.text_config, source)
    if device is not None or dtype is not None:
        clip.to(device=device, dtype=dtype)
    return clip.set_attention(attention)


def _processor(folder: Path, config, open_clip_preprocess: dict | None) -> ImageProcessor:
    if is_file(folder / "preprocessor_config.json"):
        return ImageProcessor.from_pretrained(folder)
    if open_clip_preprocess is not None:
        return open_clip.image_processor(open_clip_preprocess, config.vision_config.image_size,
                                         folder / open_clip.CONFIG_NAME)
    # no processor file (OpenAI state dicts): the family's recipe at the model's own input size
    return ImageProcessor.from_dict(config.default_processor())


def _placement(device: Any, dtype: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """`device` and `dtype` checked: a torch device this machine has, a floating-point dtype (also by
    name, "bfloat16", as transformers' torch_dtype takes it)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch dtype (torch.float16, 'bfloat16', ...), got {dtype!r}")
    if device is None:
        return None, dtype
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (such as 'cpu', 'cuda', 'cuda:1', 'mps')") from None
    if device.type == "meta":
        raise ValueError("device meta holds no values, so a model there cannot run: load onto 'cpu' or a GPU")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {device}: this machine has {count} CUDA device{'s' * (count != 1)} that torch "
                             f"can use (torch {torch.__version__})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: torch cannot use Apple's MPS on this machine")
    return device, dtype


def _check_end_token(tokenizer, text_config, source: str) -> None:
    """A text tower that pools at its EOS id needs a tokenizer that ends captions with it: else every
    caption is pooled at position 0 and scores alike."""
    if tokenizer is None or text_config.pooling != "eos":
        return
    emitted = tokenizer([""]).input_ids[0].tolist()  # no word the vocabulary could lack
    if text_config.eos_token_id not in emitted:
        warnings.warn(f"{source}: the text tower pools at eos_token_id={text_config.eos_token_id} (config.json), but "
                      f"its tokenizer never emits it (it makes {emitted} of an empty caption): captions would all be "
                      "pooled at position 0; fix eos_token_id or the tokenizer files", stacklevel=3)


def _tokenizer(folder: Path, config):
    context = config.text_config.max_position_embeddings
    try:
        return load_tokenizer(folder, context_length=context)
    except FileNotFoundError:
        if config.text_config.vocab_size == CLIP_VOCAB_SIZE and config.text_config.pooling in ("eos", "eos_argmax"):
            return Tokenizer.default(context_length=context)  # OpenAI state dicts ship no tokenizer files
        warnings.warn(f"{folder} has no tokenizer files and a vocabulary of {config.text_config.vocab_size} "
                      "tokens, not CLIP's: model.tokenize() is unavailable; pass input_ids yourself")
        return None
