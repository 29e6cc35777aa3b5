"""Explanation methods for CLIP, one file per family, all behind `explain(model, images, texts, method=...)`."""

from . import method  # noqa: F401  (each method registers itself)
from .explanation import Explanation
from .core import Maps, Values, register
from .legend import Scale
from .registry import default_method, explain, method_options, methods

__all__ = ["Explanation", "Maps", "Scale", "Values", "default_method", "explain", "method_options", "methods",
           "register"]
