"""The module paths of clipx 0.1's flat layout, kept for a release: `import clipx.processing` gives the very
module `clipx.preprocess.image` (one module object, so monkeypatching either patches both), with a
DeprecationWarning naming the new path. The public submodules (`clipx.metrics`, `clipx.segmentation`,
`clipx.shapes`, `clipx.templates`) stay without a warning."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

MOVED = {
    "processing": "preprocess.image", "sentencepiece_tokenizer": "preprocess.sentencepiece",
    "config": "model.config", "hooks": "model.hooks", "attention": "model.attention",
    "length_groups": "model.length_groups",
    "open_clip": "families.open_clip", "siglip": "families.siglip", "hub": "io.hub", "loading": "io.loading",
    "ablation": "mech.ablation", "sweep": "mech.sweep", "textspan": "mech.textspan",
    "high_norm": "mech.high_norm", "sae": "mech.sae.autoencoder", "sae_attach": "mech.sae.attach",
    "sae_features": "mech.sae.features", "sae_training": "mech.sae.training",
    "templates": "apps.templates", "index": "apps.index",
    "sources": "runs.sources", "explain_run": "runs.explain_dataset",
    "metrics": "eval.metrics", "segmentation": "eval.segmentation",
    "shapes": "demo.shapes", "training": "demo.training",
    **{f"explain.{m}": f"explain.method.{m}" for m in (
        "attention", "captum_adapter", "gradcam", "integrated_gradients", "legrad", "occlusion", "perturbation",
        "relevance", "rise", "rollout", "similarity")},
}
# Modules split by concern: the old path is a module that finds each name in the new ones, in this order.
SPLIT = {
    "checkpoint": ("io.weights", "families.openai", "model.layout", "model.save"),
    "text_embeddings": ("model.inputs", "explain.embedding"),
    "tokenizer": ("preprocess.bpe", "preprocess.text", "preprocess.auto"),
}
PUBLIC = {"metrics", "segmentation", "shapes", "templates"}  # clipx.<name> in the documented API
# Old paths that are also functions' names (`clipx.decompose(...)`): entered in sys.modules with clipx, since
# an import through the finder would set the module as the attribute, over the function.
SEEDED = {"decompose": "mech.decompose", "zeroshot": "apps.zeroshot"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module now at the new one."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("clipx.")
        if fullname.startswith("clipx.") and (old in MOVED or old in SPLIT):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name.removeprefix("clipx.")
        new = ", ".join(f"clipx.{m}" for m in SPLIT[old]) if old in SPLIT else f"clipx.{MOVED[old]}"
        if old not in PUBLIC:
            warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                          DeprecationWarning, stacklevel=2)
        if old in SPLIT:
            return _split_module(spec.name, [importlib.import_module(f"clipx.{m}") for m in SPLIT[old]])
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__  # the import system stamps the alias's spec on it next
        return module

    def exec_module(self, module):
        if module.__name__ != module.__spec__.name:  # a moved module: its own spec back
            module.__spec__ = self._specs.pop(module.__spec__.name)


def _split_module(name: str, parts: list[types.ModuleType]) -> types.ModuleType:
    module = types.ModuleType(name, f"The flat layout's {name}, now in " + ", ".join(p.__name__ for p in parts))

    def find(attribute: str):
        for part in parts:
            if hasattr(part, attribute):
                return getattr(part, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    module.__getattr__ = find
    return module


def install() -> None:
    for old, new in SEEDED.items():
        sys.modules.setdefault(f"clipx.{old}", importlib.import_module(f"clipx.{new}"))
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
