"""Where the files shipped with the repository live (the demo model, the CLIP BPE, demo images)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CLIP_BPE_DIR = ASSETS_DIR / "clip-bpe"
DEMO_MODEL_DIR = ASSETS_DIR / "shapes-clip"
DEMO_SIGLIP_DIR = ASSETS_DIR / "shapes-siglip"
DEMOS = {"demo": DEMO_MODEL_DIR, "demo-siglip": DEMO_SIGLIP_DIR}  # the names clipx.load takes for them
DEMO_SAES = {"demo-sae": ASSETS_DIR / "shapes-clip-sae"}  # the names SparseAutoencoder.load takes for shipped SAEs
# the 1,000 ImageNet-1k class names OpenAI wrote for CLIP's zero-shot prompts, line k = class index k (from
# CLIP's Prompt_Engineering_for_ImageNet.ipynb, as open_clip's zero_shot_metadata.py ships them; MIT). Two
# names repeat there ("missile" 657 / 744, "sunglasses" 836 / 837) and are kept, so lines stay class indices.
IMAGENET_CLASSES = ASSETS_DIR / "imagenet-classes.txt"
