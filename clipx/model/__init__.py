"""The model: its config (data), the hook points, the attention maths, the layers and towers, the joint
CLIP module, how its parameters are named in Hugging Face's layout, how it writes itself, and the one
copy of what callers do to its inputs and outputs (`inputs.py`). Imports nothing above `preprocess/`."""

from .clip import CLIP, CLIPOutput
from .config import CLIPConfig, TextConfig, VisionConfig
from .layers import MLP, AttentionPool, Block, LayerNorm, RMSNorm, SwiGLU
from .towers import TextTower, Tower, TowerOutput, VisionTower

__all__ = ["CLIP", "MLP", "AttentionPool", "Block", "CLIPConfig", "CLIPOutput", "LayerNorm", "RMSNorm", "SwiGLU",
           "TextConfig", "TextTower", "Tower", "TowerOutput", "VisionConfig", "VisionTower"]
