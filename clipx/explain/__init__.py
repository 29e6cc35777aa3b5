"""Explanation methods for CLIP, one file per family, all behind `explain(model, images, texts, method=...)`."""

from . import attention, gradcam, integrated_gradients, legrad, occlusion, relevance, rise, rollout, similarity  # noqa: F401  (each registers its methods)
from .explanation import Explanation
from .core import Maps, register
from .registry import explain, method_options, methods

__all__ = ["Explanation", "Maps", "explain", "method_options", "methods", "register"]
