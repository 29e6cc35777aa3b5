"""clipx: a hookable CLIP for explainability research."""

from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError, CheckpointNotFoundError
from .hooks import Cache, HookPoint
from .explain import Explanation, explain, methods
# Not lazy, unlike metrics and views: it needs only torch, and the module shares its name with the function
# `clipx.decompose`, which only an import here rebinds over the submodule (as `clipx.explain`).
from .decompose import Decomposition, DirectLogits, decompose, decompose_text, logit_lens
from .ablation import ablate, ablate_heads, patch
from .textspan import HeadDescription, describe_heads
from .sae import SAEConfig, SparseAutoencoder
from .sae_attach import attach_sae, splice_effect
from .sae_training import train_sae
from .loading import load
from .explain_run import explain_dataset
from .runs import RunResult
from .sweep import HeadTable, patching_effect, sweep_heads
from .model import CLIP, CLIPOutput, TowerOutput
from . import templates
# as with decompose: the function `clipx.zeroshot` rebinds the name over its module
from .zeroshot import ZeroShot, zeroshot, zeroshot_classifier
from .index import Hit, Hits, Index
from .high_norm import HighNormTokens, high_norm_tokens

from .version import __version__

__all__ = ["CLIP", "CLIPConfig", "CLIPOutput", "Cache", "CheckpointError", "CheckpointNotFoundError", "Decomposition",
           "DirectLogits", "Explanation", "HeadDescription", "HeadTable", "HighNormTokens", "Hit", "Hits", "HookPoint",
           "Index",
           "RunResult", "SAEConfig", "SparseAutoencoder", "TextConfig", "TowerOutput", "VisionConfig", "ZeroShot",
           "ablate", "ablate_heads", "attach_sae", "decompose", "decompose_text", "describe_heads", "explain",
           "explain_dataset", "high_norm_tokens", "load", "logit_lens", "methods", "metrics", "patch",
           "patching_effect", "segmentation", "splice_effect", "sweep_heads", "templates", "train_sae", "views",
           "zeroshot", "zeroshot_classifier"]

# Imported on first use: the views pull in ipywidgets, IPython and matplotlib (half a second), and
# a script that scores captions uses neither them nor the metrics (nor the segmentation benchmarks' readers).
_LAZY_SUBMODULES = ("metrics", "segmentation", "views")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'clipx' has no attribute {name!r}")
