"""Pictures of explanations: matplotlib figures now; overlays and ipywidgets explorers build on them."""

from .figures import explanation_figure

__all__ = ["explanation_figure"]
