"""A model writes itself in Hugging Face's layout: model.safetensors under the family's key names, its
config.json, and the tokenizer and processor it holds, so transformers loads the folder too."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..files import save_safetensors
from .layout import JOINT_PARAMETERS, TOWER_PREFIX


def save_folder(model: nn.Module, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = model.config.layout()
    state = layout.to_hf({layout.hf_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    if model.vision is None or model.text is None:
        tower = "vision" if model.vision is not None else "text"
        if not layout.tower_prefixed(getattr(model, tower)):
            state = {k.removeprefix(TOWER_PREFIX[tower] + "."): v for k, v in state.items()}
        for key in JOINT_PARAMETERS:
            state.pop(key, None)
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.save(folder)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    if model.processor is not None:
        model.processor.save_pretrained(folder)
