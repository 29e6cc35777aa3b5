"""Zero-shot classification: class embeddings from prompt templates, and every image scored against them.

A class's embedding is the normalised mean of its prompts' normalised text embeddings (Radford et al.,
2021; open_clip's `build_zero_shot_classifier`), one prompt per template.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import caller_level, check_int
from ..explain import Explanation
from ..model.clip import CLIP
from ..preprocess.image import check_pixel_values, image_list
from ..explain.embedding import explain_embedding
from ..model.inputs import embed_images, embed_texts, prepare_images, scores

Template = str | Callable[[str], str]


def prompts(classnames: Sequence[str], templates: Sequence[Template] | None = None) -> list[list[str]]:
    """Each class's prompts, one per template (in order). templates=None: the class names as they are
    (one prompt each). A ValueError names what is wrong: no classes, a repeated or empty class name,
    no templates, a string template without `{}`; a TypeError a callable that returns no string."""
    classnames = classnames if isinstance(classnames, str) else list(classnames)  # a generator is read once
    if isinstance(classnames, str) or not all(isinstance(c, str) for c in classnames):
        raise TypeError("classnames must be a list of strings, e.g. ['cat', 'dog']")
    if not classnames:
        raise ValueError("no class names given: pass at least one, e.g. ['cat', 'dog']")
    if not all(c.strip() for c in classnames):
        raise ValueError(f"class names must not be empty: got {classnames!r:.200}")
    repeated = sorted({c for c in classnames if classnames.count(c) > 1})
    if repeated:
        raise ValueError(f"class names must be distinct; repeated: {', '.join(map(repr, repeated))}")
    folded = [c.strip().casefold() for c in classnames]
    alike = sorted({c for c in classnames if folded.count(c.strip().casefold()) > 1})
    if alike:  # most tokenizers lower-case: such classes are one embedding, and split its score between them
        warnings.warn(f"class names differ only in case or spaces: {', '.join(map(repr, alike))}; a tokenizer "
                      "that lower-cases (CLIP's) embeds them alike", stacklevel=caller_level())
    templates = ["{}"] if templates is None else [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("no templates given: pass strings with '{}' or callables, or None for the class names alone")
    for t in templates:
        if isinstance(t, str) and "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
        if not isinstance(t, str) and not callable(t):
            raise TypeError(f"a template is a string with '{{}}' or a callable, got {type(t).__name__}")
    return [[_fill(t, c) for t in templates] for c in classnames]


def _fill(template: Template, classname: str) -> str:
    if isinstance(template, str):
        return template.replace("{}", classname)
    prompt = template(classname)
    if not isinstance(prompt, str):
        raise TypeError(f"template {template!r} returned {type(prompt).__name__} for {classname!r}, not a string")
    return prompt


def zeroshot_classifier(model: CLIP, classnames: Sequence[str], templates: Sequence[Template] | None = None,
                        batch_size: int = 256) -> torch.Tensor:
    """[n_classes, dim] unit class embeddings: each the normalised mean of its prompts' unit embeddings.
    Captions are encoded `batch_size` at a time, so 1,000 classes x 80 templates fit in memory."""
    per_class = prompts(classnames, templates)
    n_classes, n_templates = len(per_class), len(per_class[0])
    embeds = embed_texts(model, [p for ps in per_class for p in ps], batch_size)
    return F.normalize(embeds.view(n_classes, n_templates, -1).mean(1), dim=-1)


@dataclass
class ZeroShot:
    """Every image scored against every class.

    logits: [n_images, n_classes] the model's score with each class embedding: exp(logit_scale) * cosine,
            plus logit_bias for a sigmoid-scoring model (SigLIP)
    probs:  `model.probabilities(logits)`: a softmax over the classes (CLIP), or for a sigmoid-scoring
            model each class's own sigmoid, the probability that the image shows it -- rows need not sum to 1
    """

    logits: torch.Tensor
    probs: torch.Tensor
    classnames: list[str]
    classifier: torch.Tensor  # [n_classes, dim], from zeroshot_classifier
    model: CLIP
    images: Any               # as given, for explain()

    @property
    def predictions(self) -> torch.Tensor:
        """[n_images] the index of each image's best class (the same under softmax and sigmoid)."""
        return self.logits.argmax(1)

    @property
    def labels(self) -> list[str]:
        return [self.classnames[c] for c in self.predictions.tolist()]

    def top(self, i: int, k: int = 5) -> list[tuple[str, float, float]]:
        """Image i's k best classes as (name, logit, prob), best first."""
        best = self.logits[i].topk(min(k, len(self.classnames)))
        return [(self.classnames[c], self.logits[i, c].item(), self.probs[i, c].item()) for c in best.indices.tolist()]

    def explain(self, i: int, method: str | None = None, **options: Any) -> Explanation:
        """Explain image i against its predicted class's embedding (the ensemble, not one prompt): one
        `clipx.explain` call through `explain_embedding`, so `scores[0, 0]` equals `logits[i, class]`.
        The caption it names is the class name; caption-side maps are None (see `explain_embedding`)."""
        n = self.logits.shape[0]
        if check_int("i", i) not in range(-n, n):
            raise IndexError(f"image {i} of {n}: i is an image's index, 0..{n - 1} (or -1..-{n} from the end)")
        i %= n  # -1, the last image, is a slice of one from the tensor's images too
        c = int(self.predictions[i])
        image = self.images[i:i + 1] if isinstance(self.images, torch.Tensor) else [self.images[i]]
        return explain_embedding(self.model, image, self.classifier[c], self.classnames[c], method, **options)

    def __repr__(self) -> str:
        return f"ZeroShot({self.logits.shape[0]} images x {len(self.classnames)} classes, {self.model.config.scoring})"


def zeroshot(model: CLIP, images: Any, classnames: Sequence[str], templates: Sequence[Template] | None = None,
             batch_size: int = 64) -> ZeroShot:
    """Classify images (PIL, paths, arrays, or pixel_values) among `classnames`, each class embedded through
    `templates` (see `zeroshot_classifier`; `clipx.templates` has OpenAI's 80 ImageNet ones). Images run
    `batch_size` at a time."""
    classnames = classnames if isinstance(classnames, str) else list(classnames)  # a generator is read once
    classifier = zeroshot_classifier(model, classnames, templates)
    if isinstance(images, torch.Tensor):  # one [3, H, W] image is a batch of one, not three channels to slice
        items = check_pixel_values(images, "images")
    else:
        items = image_list(images)
    if len(items) == 0:
        raise ValueError("no images given: got an empty tensor")
    embeds = torch.cat([embed_images(model, prepare_images(model, items[s:s + batch_size], as_images=False)[0])
                        for s in range(0, len(items), batch_size)])
    logits = scores(model, embeds, classifier)
    return ZeroShot(logits, model.probabilities(logits), list(classnames), classifier, model, items)
