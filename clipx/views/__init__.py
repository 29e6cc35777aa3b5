"""Pictures of explanations: PNG / HTML rendering, matplotlib figures, and ipywidgets explorers
that re-render cached results as their controls move."""

from .attention import AttentionView
from .compare import Compare
from .explorer import Explorer
from .feature import FeatureView, patch_strip
from ..explain.figure import explanation_figure
from ..explain.interaction_figure import interaction_figure
from .gallery import Gallery, hits_grid
from .render import (colour_bar, colour_bar_html, explanation_card, explanation_grid, grid, heads_grid, labelled,
                     mark_patch, matrix, outline_cells, overlay, scores_table, to_png, token_html)
from .interaction import InteractionView
from .token_patch import TokenPatchView

__all__ = ["AttentionView", "Compare", "Explorer", "FeatureView", "Gallery", "InteractionView", "TokenPatchView",
           "colour_bar", "colour_bar_html", "explanation_card", "explanation_figure", "explanation_grid", "grid",
           "heads_grid", "hits_grid", "interaction_figure", "labelled", "mark_patch", "matrix", "outline_cells",
           "overlay", "patch_strip", "scores_table", "to_png", "token_html"]
