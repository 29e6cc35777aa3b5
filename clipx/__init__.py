"""clipx: a hookable CLIP for explainability research.

The package, top to bottom (each layer imports only those below it; pyproject.toml's import-linter
contracts check it): cli, views, runs, apps, explain, eval / demo, mech, io, families, model, preprocess,
and the ground (errors, files, assets, extras, version)."""

import importlib

from . import moved
from .apps import templates
from .apps.index import Hit, Hits, Index
from .apps.zeroshot import ZeroShot, zeroshot, zeroshot_classifier
from .errors import CheckpointError, CheckpointNotFoundError
from .explain import Explanation, explain, methods
from .explain.interaction_maps import Interactions
from .explain.interactions import interactions
from .io.loading import load
from .mech.ablation import ablate, ablate_heads, patch
from .mech.decompose import Decomposition, DirectLogits, decompose, decompose_text, logit_lens
from .mech.high_norm import HighNormTokens, high_norm_tokens
from .mech.sae.attach import attach_sae, splice_effect
from .mech.sae.autoencoder import SAEConfig, SparseAutoencoder
from .mech.sae.training import train_sae
from .mech.sweep import HeadTable, patching_effect, sweep_heads
from .mech.textspan import HeadDescription, describe_heads
from .model.clip import CLIP, CLIPOutput
from .model.config import CLIPConfig, TextConfig, VisionConfig
from .model.hooks import Cache, HookPoint
from .model.towers import TowerOutput
from .runs.explain_dataset import explain_dataset
from .runs.runner import RunResult
from .version import __version__

__all__ = ["CLIP", "CLIPConfig", "CLIPOutput", "Cache", "CheckpointError", "CheckpointNotFoundError", "Decomposition",
           "DirectLogits", "Explanation", "HeadDescription", "HeadTable", "HighNormTokens", "Hit", "Hits", "HookPoint",
           "Index", "Interactions",
           "RunResult", "SAEConfig", "SparseAutoencoder", "TextConfig", "TowerOutput", "VisionConfig", "ZeroShot",
           "ablate", "ablate_heads", "attach_sae", "decompose", "decompose_text", "describe_heads", "explain",
           "explain_dataset", "high_norm_tokens", "interactions", "load", "logit_lens", "methods", "metrics", "patch",
           "patching_effect", "segmentation", "splice_effect", "sweep_heads", "templates", "train_sae", "views",
           "zeroshot", "zeroshot_classifier"]

# Imported on first use: the views pull in ipywidgets, IPython and matplotlib (half a second), and
# a script that scores captions uses neither them nor the metrics (nor the segmentation benchmarks' readers).
_LAZY_SUBMODULES = {"metrics": "eval.metrics", "segmentation": "eval.segmentation", "shapes": "demo.shapes",
                    "views": "views"}

moved.install()  # the flat layout's module paths, for a release


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{_LAZY_SUBMODULES[name]}")
    raise AttributeError(f"module 'clipx' has no attribute {name!r}")
