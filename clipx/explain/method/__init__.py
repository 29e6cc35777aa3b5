"""One file per explanation method; each registers its methods with `explain.core.register` when imported.
`perturbation.py` is what the perturbation methods (occlusion, RISE, the Captum adapter) share."""

from . import attention, gradcam, integrated_gradients, legrad, occlusion, relevance, rise, rollout, similarity

__all__ = ["attention", "gradcam", "integrated_gradients", "legrad", "occlusion", "relevance", "rise", "rollout",
           "similarity"]
