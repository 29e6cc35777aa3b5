"""Pictures of explanations: PNG / HTML rendering, matplotlib figures, and ipywidgets explorers
that re-render cached results as their controls move."""

from .attention import AttentionView
from .compare import Compare
from .explorer import Explorer
from .feature import FeatureView, patch_strip
from ..explain.figure import explanation_figure
from .gallery import Gallery, hits_grid
from .render import (colour_bar, colour_bar_html, explanation_card, explanation_grid, grid, heads_grid, labelled,
                     mark_patch, matrix, overlay, scores_table, to_png, token_html)
from .token_patch import TokenPatchView

__all__ = ["AttentionView", "Compare", "Explorer", "FeatureView", "Gallery", "TokenPatchView", "colour_bar",
           "colour_bar_html", "explanation_card", "explanation_figure", "explanation_grid", "grid", "heads_grid",
           "hits_grid", "labelled", "mark_patch", "matrix", "overlay", "patch_strip", "scores_table", "to_png",
           "token_html"]
