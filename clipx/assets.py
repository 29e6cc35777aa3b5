"""Where the files shipped inside the package live (the demo models and SAE, the CLIP BPE, demo images).

They are package data under clipx/data, so a wheel or a non-editable install carries them: nothing here
reaches outside the installed package.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "data"
CLIP_BPE_DIR = ASSETS_DIR / "clip-bpe"
DEMO_MODEL_DIR = ASSETS_DIR / "shapes-clip"
DEMO_SIGLIP_DIR = ASSETS_DIR / "shapes-siglip"
DEMOS = {"demo": DEMO_MODEL_DIR, "demo-siglip": DEMO_SIGLIP_DIR}  # the names clipx.load takes for them
DEMO_SAES = {"demo-sae": ASSETS_DIR / "shapes-clip-sae"}  # the names SparseAutoencoder.load takes for shipped SAEs
DEMO_IMAGES_DIR = ASSETS_DIR / "images"
# the 1,000 ImageNet-1k class names OpenAI wrote for CLIP's zero-shot prompts, line k = class index k (from
# CLIP's Prompt_Engineering_for_ImageNet.ipynb, as open_clip's zero_shot_metadata.py ships them; MIT). Two
# names repeat there ("missile" 657 / 744, "sunglasses" 836 / 837) and are kept, so lines stay class indices.
IMAGENET_CLASSES = ASSETS_DIR / "imagenet-classes.txt"
# what the command line takes for a shipped image: demo:shapes-scene
DEMO_IMAGE_PREFIX = "demo:"


def demo_images() -> dict[str, Path]:
    """The demo images shipped with clipx, by name (the file name without .png)."""
    return {p.stem: p for p in sorted(DEMO_IMAGES_DIR.glob("*.png"))}


def demo_image(name: str) -> Path:
    """The shipped demo image `name` ("shapes-scene", or "demo:shapes-scene" as the command line writes it)."""
    images = demo_images()
    stem = name.removeprefix(DEMO_IMAGE_PREFIX).removesuffix(".png")
    if stem not in images:
        raise FileNotFoundError(f"no demo image {name!r}; the shipped ones are "
                                + ", ".join(DEMO_IMAGE_PREFIX + n for n in images))
    return images[stem]
