"""`FeatureView`: one SAE feature at a time: where it fires over a set of images (its top patches, and
its activation over a chosen image) and which captions its decoder direction points at."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from PIL import Image, ImageOps

from ..explain.legend import Scale
from ..model.clip import CLIP
from ..mech.sae.autoencoder import SparseAutoencoder
from ..mech.sae.features import PatchActivation, caption_similarity, feature_activations, top_patches
from .base import View
from .render import colour_bar_html, grid, mark_patch, to_png


def patch_strip(pictures: Sequence[Image.Image], patches: Sequence[PatchActivation], patch_grid: tuple[int, int],
                size: int = 64, context: int = 1) -> Image.Image:
    """Each patch cut out of its picture with `context` patches around it (grey beyond the edge), its own
    patch outlined, side by side and labelled with its activation."""
    cells = []
    for p in patches:
        picture = pictures[p.image]
        h, w = picture.height / patch_grid[0], picture.width / patch_grid[1]
        pad = round(max(h, w) * context)
        padded = ImageOps.expand(picture, border=pad, fill=(128, 128, 128))
        left, top = round(p.col * w), round(p.row * h)
        crop = padded.crop((left, top, left + round(w * (2 * context + 1)), top + round(h * (2 * context + 1))))
        n = 2 * context + 1
        cells.append(mark_patch(crop.resize((size, size), Image.NEAREST), context, context, (n, n)))
    return grid([cells], col_labels=[f"{p.activation:.2f}" for p in patches])


class FeatureView(View):
    """Pick an SAE feature (slider) to see its top patches over all the images as a strip of crops, its
    activation over the chosen image as a heatmap, and, given `captions`, the captions nearest its decoder
    direction (`clipx.mech.sae.features`' readout approximation). Features are computed once, on creation."""

    def __init__(self, model: CLIP, sae: SparseAutoencoder, images: Any, captions: Sequence[str] | None = None,
                 top: int = 8, cmap: str | None = None, size: int = 224) -> None:
        # the base view picks a caption per map; this one reads captions only as a list to rank
        super().__init__(model, images, list(captions or ["(no captions)"]), cmap, size)
        self.sae, self.top, self.captions = sae, top, list(captions or [])
        self.activations = feature_activations(model, sae, self.pixel_values)  # [n_images, grid_h, grid_w, d_sae]
        self.similarity = caption_similarity(model, sae, self.captions) if self.captions else None
        busiest = int(self.activations.flatten(0, 2).max(0).values.argmax())
        self.feature = widgets.IntSlider(value=busiest, min=0, max=sae.config.d_sae - 1, description="feature",
                                         continuous_update=False)
        controls = [self.feature, self.image_choice, self.opacity]
        self.build([controls], watch=controls)

    def render(self) -> tuple[Image.Image, str]:
        f, i = self.feature.value, self.image_choice.value
        values = self.activations[..., f]
        scale = Scale.fit(values, "positive", f"feature {f}'s activation")  # one for all images: weak ones look weak
        picture = self.overlay(i, values[i], scale)
        patches = top_patches(self.activations, f, self.top)
        firing = float((values > 0).float().mean())
        panel = (f"<p><b>feature {f}</b> fires on {firing:.1%} of the patches; "
                 f"at most {float(values.max()):.2f}</p>{colour_bar_html(scale)}"
                 "<p>top patches (activation above each):</p>")
        if patches:
            strip = base64.b64encode(to_png(patch_strip(self.pictures, patches, self.grid))).decode()
            where = ", ".join(f"image {p.image} ({p.row}, {p.col})" for p in patches)
            panel += f'<img src="data:image/png;base64,{strip}"/><p style="font-size:80%">{html.escape(where)}</p>'
        else:
            panel += "<p><i>it fires on none of these images</i></p>"
        if self.similarity is not None:
            cosines = self.similarity[f].topk(min(5, len(self.captions)))
            rows = "".join(f"<tr><td>{html.escape(self.captions[j])}</td><td style='text-align:right'>{v:.2f}</td></tr>"
                           for v, j in zip(cosines.values.tolist(), cosines.indices.tolist()))
            panel += f"<p>nearest captions (cosine with the decoder direction):</p><table>{rows}</table>"
        return picture, panel

    def __repr__(self) -> str:
        return f"FeatureView({self.sae.config.d_sae} features x {len(self.pictures)} images)"
