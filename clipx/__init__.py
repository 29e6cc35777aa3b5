"""clipx: a hookable CLIP for explainability research."""

from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError, CheckpointNotFoundError
from .hooks import Cache, HookPoint
from . import metrics, views
from .explain import Explanation, explain, methods
from .loading import load
from .model import CLIP, CLIPOutput, TowerOutput

__version__ = "0.1.0"

__all__ = ["CLIP", "CLIPConfig", "CLIPOutput", "Cache", "CheckpointError", "CheckpointNotFoundError",
           "Explanation", "HookPoint", "TextConfig", "TowerOutput", "VisionConfig", "explain", "load", "methods", "metrics",
           "views"]
