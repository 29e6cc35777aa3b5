"""CLIP, both towers, readable top to bottom, with a hook point at every sublayer.

Numerically it follows Hugging Face's `CLIPModel` and `SiglipModel`: pre-LN blocks, then the
readout the config describes. CLIP: the vision tower pooled at the class token through `ln_post`,
the text tower causal and pooled at EOS after `ln_final`, both projected and compared by
cosine * exp(logit_scale), a softmax over captions. SigLIP: no class token, a learned probe
attending over the tokens (`AttentionPool`), a bidirectional text tower pooled at its last position,
cosine * exp(logit_scale) + logit_bias, a sigmoid per pair.
Module names follow TransformerLens (`blocks.3.attn`, `ln1`, `hook_resid_post`); `layout.py`
maps them to Hugging Face's key layout (and `families/openai.py` OpenAI's to that).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import Attention, check_backend, flash_unavailable_reason, switched
from .config import CLIPConfig
from .hooks import HookedModule, HookPoint
from ..preprocess.image import ImageProcessor
from .save import save_folder
from .summary import describe
from .towers import TextTower, Tower, TowerOutput, VisionTower
from ..preprocess.text import Encoding
from ..errors import caller_level


@dataclass
class CLIPOutput:
    """Named as transformers' `CLIPOutput`; logits are None when a tower or an input is missing."""

    logits_per_image: torch.Tensor | None
    logits_per_text: torch.Tensor | None
    image_embeds: torch.Tensor | None  # L2-normalised
    text_embeds: torch.Tensor | None   # L2-normalised
    vision_model_output: TowerOutput | None
    text_model_output: TowerOutput | None


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


class CLIP(HookedModule):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if config.vision_config is None and config.text_config is None:
            raise ValueError("a CLIP needs at least one tower")
        self.config = config
        self.vision = VisionTower(config.vision_config) if config.vision_config else None
        self.text = TextTower(config.text_config) if config.text_config else None
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.logit_bias else None
        self.hook_logits_per_image = HookPoint()
        # Attached by `clipx.load`; a model built from a bare config has neither.
        self.processor = None
        self.tokenizer = None
        # the family's preprocessing, for checking pixel_values where no processor is attached
        self._recipe = ImageProcessor.from_dict(config.default_processor()) if config.vision_config else None
        self.setup_hooks()
        self.set_attention("sdpa")

    def __repr__(self) -> str:
        return describe(self)

    def tree(self) -> str:
        """The module tree with every hook point (what `repr` gives for other torch modules)."""
        return super().__repr__()

    # --- towers --------------------------------------------------------------------------
    def _tower(self, name: str) -> Tower:
        tower = getattr(self, name)
        if tower is None:
            other = "vision" if name == "text" else "text"
            raise ValueError(f"this checkpoint has no {name} tower (it holds only the {other} tower)")
        return tower

    def encode_image(self, pixel_values: torch.Tensor | Mapping, interpolate_pos_encoding: bool = False, *,
                     pixel_attention_mask: torch.Tensor | None = None,
                     spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """Projected image features, not normalised (transformers' `get_image_features`). pixel_values:
        images [B, C, H, W], or what `model.preprocess` gives (patches with their mask and shapes, for a
        linear patch embedding: see `VisionTower.forward`)."""
        return self._vision_forward(pixel_values, interpolate_pos_encoding, pixel_attention_mask=pixel_attention_mask,
                                    spatial_shapes=spatial_shapes).embeds

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features, not normalised (transformers' `get_text_features`)."""
        return self._text_forward(input_ids, attention_mask, pooled_only=True).embeds

    get_image_features = encode_image
    get_text_features = encode_text

    def _vision_forward(self, pixel_values, interpolate_pos_encoding=False, *, pixel_attention_mask=None,
                        spatial_shapes=None, **kwargs) -> TowerOutput:
        tower = self._tower("vision")
        if isinstance(pixel_values, Mapping):  # model.preprocess's patches, mask and shapes (NaFlex)
            if pixel_attention_mask is not None or spatial_shapes is not None:
                raise ValueError("pass the patches' pixel_attention_mask and spatial_shapes either inside "
                                 "pixel_values (as model.preprocess gives them) or as arguments, not both")
            pixel_values, pixel_attention_mask, spatial_shapes = (
                pixel_values.get(k) for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes"))
        patched = isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 3
        if spatial_shapes is not None or patched and tower.config.patch_embedding == "linear":
            pixel_attention_mask = _check_patches(tower.config, pixel_values, pixel_attention_mask, spatial_shapes)
            self._check_pixel_range(pixel_values)
            return tower(pixel_values, output_hidden_states=kwargs.get("output_hidden_states", False),
                         output_attentions=kwargs.get("output_attentions", False),
                         pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes)
        if pixel_attention_mask is not None:
            raise ValueError("pixel_attention_mask goes with patches and their spatial_shapes, not with images "
                             "[batch, channels, height, width]")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 \
                or pixel_values.shape[1] != tower.config.num_channels or not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor [batch, {tower.config.num_channels}, height, width], got "
                f"{_describe(pixel_values)}; model.preprocess(images) makes one from images")
        height, width = pixel_values.shape[-2:]
        patch = tower.config.patch_size
        if pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values holds no images ({_describe(pixel_values)})")
        if height < patch or width < patch:
            raise ValueError(f"pixel_values are {height}x{width} pixels, smaller than one {patch}x{patch} patch "
                             f"of this model; model.preprocess(images) resizes images to the model's size")
        self._check_pixel_range(pixel_values)
        return tower(pixel_values, interpolate_pos_encoding, **kwargs)

    def _check_pixel_range(self, pixel_values: torch.Tensor) -> None:
        """NaN or inf is an error; values preprocessing cannot produce (pixels in 0..255 or 0..1, not
        normalised) are a warning, since the model would still return numbers, only meaningless ones."""
        # one pass, one transfer from the device: NaN propagates to both ends, inf shows at one
        low, high = torch.stack(pixel_values.detach().aminmax()).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"pixel_values hold NaN or infinite values (they span [{low}, {high}]); the model "
                             "needs finite values, as model.preprocess(images) makes them")
        processor = self.processor if self.processor is not None else self._recipe
        lo, hi = processor.value_range()
        # generous: resampling overshoots, and standard-normal test tensors (|x| < 6) are fine; pixels in
        # 0..255 still land far beyond it
        margin = hi - lo
        if low < lo - margin or high > hi + margin:
            problem = "far from what preprocessing gives (pixels in 0..255, not normalised?)"
        elif lo < 0 <= low and high <= 1 and high - low >= 0.5 and max(processor.image_std) < 0.4:
            # unnormalised [0, 1] pixels: normalised images only stay in [0, 1] when every pixel lies within
            # one std above the mean: nearly flat and light where std is small (CLIP's 0.27; a grey image, or
            # the all-zero mean image baselines use, and those span less); but merely bright where std is
            # 0.5 (SigLIP's), so no sign of anything there
            problem = "all within [0, 1], like pixels rescaled but not normalised"
        else:
            return
        warnings.warn(f"pixel_values span [{low:.4g}, {high:.4g}], {problem}; preprocessed images span "
                      f"[{lo:.2f}, {hi:.2f}] and other values give meaningless outputs: make pixel_values "
                      "with model.preprocess(images)", UserWarning, stacklevel=caller_level())

    def _text_forward(self, input_ids, attention_mask=None, **kwargs) -> TowerOutput:
        tower = self._tower("text")
        limit = tower.config.max_position_embeddings
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 \
                or input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor [batch, length], got {_describe(input_ids)}; "
                             "model.tokenize(texts) makes one from strings")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty ({tuple(input_ids.shape)})")
        if input_ids.shape[1] > limit:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions; the text tower takes at most {limit}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                             f"input_ids {tuple(input_ids.shape)}")
        vocab = tower.config.vocab_size
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab})")
        return tower(input_ids, attention_mask, **kwargs)

    def forward(self, pixel_values: torch.Tensor | Mapping | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False,
                pixel_attention_mask: torch.Tensor | None = None,
                spatial_shapes: torch.Tensor | None = None) -> CLIPOutput:
        """pixel_values: images [B, C, H, W]; or, for a linear patch embedding (NaFlex), patches
        [B, L, p*p*C] with `spatial_shapes` and `pixel_attention_mask` (transformers' names), or those three
        in one mapping as `model.preprocess` gives them."""
        if pixel_values is None and input_ids is None:
            raise ValueError("pass pixel_values, input_ids, or both")
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        vision = text = image_embeds = text_embeds = logits_per_image = logits_per_text = None
        if pixel_values is not None:
            vision = self._vision_forward(pixel_values, interpolate_pos_encoding,
                                          pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes,
                                          **flags)
            image_embeds = _normalize(vision.embeds)
        if input_ids is not None:
            text = self._text_forward(input_ids, attention_mask, **flags)
            text_embeds = _normalize(text.embeds)
        if vision is not None and text is not None:
            logits_per_image = self.hooked_logits(image_embeds, text_embeds)
            logits_per_text = logits_per_image.T
        return CLIPOutput(logits_per_image, logits_per_text, image_embeds, text_embeds, vision, text)

    @property
    def fast_inference(self) -> bool:
        """The inference fast path (`Tower.fast_path`): in place residual sums and activations, and padding
        skipped by `encode_text`, where no gradient is recorded and nothing could see the difference.
        On by default; set False to run every call as a training-mode forward would."""
        return all(tower.fast_inference for tower in (self.vision, self.text) if tower is not None)

    @fast_inference.setter
    def fast_inference(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise TypeError(f"fast_inference is True or False, got {on!r}")
        for tower in (self.vision, self.text):
            if tower is not None:
                tower.fast_inference = on

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """logits_per_image [n_images, n_texts] between unit embeddings, as this model scores a pair:
        exp(logit_scale) * cosine, plus logit_bias where the model has one (SigLIP); bias=False for a
        difference of embeddings, whose logit the bias does not enter. The scale and bias take the
        embeddings' dtype (float32 embeddings of a half model are scored in float32)."""
        logits = image_embeds @ text_embeds.T * self.exp_logit_scale(image_embeds.dtype)
        if not bias or self.logit_bias is None:
            return logits
        return logits + self.logit_bias.to(image_embeds.dtype)

    def exp_logit_scale(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """exp(logit_scale) in `dtype`, clamped where the family clamps it (max_logit_scale): what a cosine
        is multiplied by to make a logit."""
        scale = self.logit_scale.to(dtype)
        if self.config.max_logit_scale is not None:
            scale = scale.clamp(0, math.log(self.config.max_logit_scale))
        return scale.exp()

    def hooked_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`logits` through `hook_logits_per_image`, as `forward` scores: what every explanation method that
        scores embeddings itself (of perturbed or interpolated images, of a layer's readout) calls, so that a
        hook there changes its maps as it changes forward's logits."""
        return self.hook_logits_per_image(self.logits(image_embeds, text_embeds))

    def fingerprint(self) -> str:
        """sha256 of the config and the readout weights (projections, final norms, logit scale and bias): what
        an index or a dataset run records to refuse another model later. Hashing these few tensors takes
        milliseconds; a fine-tune that left all of them bit for bit as they were would pass unnoticed."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
        state = self.state_dict()
        for name in ("vision.proj.weight", "text.proj.weight", "vision.ln_post.weight", "text.ln_final.weight",
                     "logit_scale", "logit_bias"):
            if name in state:
                digest.update(name.encode() + state[name].detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def probabilities(self, logits_per_image: torch.Tensor) -> torch.Tensor:
        """Logits as the model was trained to score them: a softmax over the captions (CLIP's contrastive
        loss), or a sigmoid per image-caption pair (SigLIP's), where the captions do not compete."""
        if self.config.scoring == "sigmoid":
            return torch.sigmoid(logits_per_image)
        return logits_per_image.softmax(dim=-1)

    # --- attention backends ----------------------------------------------------------------
    def attention_layers(self) -> Iterator[Attention]:
        return (m for m in self.modules() if isinstance(m, Attention))

    @property
    def attention_backend(self) -> str:
        """The backend every layer uses (in this thread), or "mixed"."""
        names = {layer.backend_in_use for layer in self.attention_layers()}
        return names.pop() if len(names) == 1 else "mixed"

    def set_attention(self, name: str) -> "CLIP":
        """Switch every attention layer to `eager`, `sdpa` or `flash`, for every thread; the weights
        stay as they are."""
        self._check_attention(name)
        for layer in self.attention_layers():
            layer.backend = name
        return self

    @contextmanager
    def attention(self, name: str) -> Iterator["CLIP"]:
        """Use another backend inside the block, in this thread; each layer's own setting, and what
        other threads run, stay as they are."""
        self._check_attention(name)
        with switched(self.attention_layers(), name):
            yield self

    def _check_attention(self, name: str) -> None:
        check_backend(name)
        if name == "flash":
            param = next(self.parameters())
            reason = flash_unavailable_reason(param.device, param.dtype)
            if reason:
                raise RuntimeError(reason)

    # --- inputs ------------------------------------------------------------------------------
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.parameters())
        return param.device, param.dtype

    def preprocess(self, images: Any) -> torch.Tensor | Mapping:
        """Images (PIL, paths, arrays, or a preprocessed tensor) -> pixel_values on the model's device (for a
        NaFlex processor, the patches with their mask and shapes: pass them as pixel_values all the same)."""
        if self.processor is None:
            raise ValueError("this model has no image processor; load it with clipx.load() or set model.processor")
        device, dtype = self._device_dtype()
        return self.processor(images).to(device=device, dtype=dtype)

    def tokenize(self, texts: str | list[str], **kwargs: Any):
        """Captions -> an Encoding with input_ids and attention_mask on the model's device. A text tower
        trained on captions padded to its context (SigLIP's, which pools the last position) gets them
        so, with the padding as ordinary input (attention_mask all ones; content_mask marks the caption)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; load it with clipx.load() or set model.tokenizer")
        padded = self._tower("text").config.pad_to_max_length
        if padded:
            kwargs.setdefault("padding", "max_length")
        enc = self.tokenizer(texts, **kwargs)
        if padded:  # whichever tokenizer is attached (the SigLIP demo's is CLIP's BPE)
            enc = Encoding(enc.input_ids, torch.ones_like(enc.input_ids), enc.content_mask)
        return enc.to(self._device_dtype()[0])

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json + model.safetensors in Hugging Face's layout (and the tokenizer and
        processor files), so the folder loads both in clipx and in transformers."""
        save_folder(self, folder)


def _check_patches(config, pixel_values: Any, mask: torch.Tensor | None,
                   spatial_shapes: Any) -> torch.Tensor | None:
    """Patches [B, L, p*p*C] with their spatial_shapes [B, 2] and pixel_attention_mask [B, L] (None: the
    first rows * cols of each image are real), checked against each other: a mask that disagrees with the
    shapes would mix padding into an image silently. Returns the mask."""
    p, c = config.patch_size, config.num_channels
    if config.patch_embedding != "linear":
        raise ValueError("this vision tower embeds images with a convolution: pixel_values must be images "
                         f"[batch, {c}, height, width], not patches with spatial_shapes")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 3 or pixel_values.shape[-1] != p * p * c \
            or not pixel_values.is_floating_point() or 0 in pixel_values.shape:
        raise ValueError(f"patches must be a float tensor [batch, patches, {p * p * c}] (patch_size^2 x channels), "
                         f"got {_describe(pixel_values)}; model.preprocess(images) makes them")
    b, n = pixel_values.shape[:2]
    if not isinstance(spatial_shapes, torch.Tensor) or spatial_shapes.shape != (b, 2) \
            or spatial_shapes.is_floating_point() or spatial_shapes.dtype == torch.bool:
        raise ValueError(f"spatial_shapes must be an integer tensor [{b}, 2], each image's (rows, cols) of patches, "
                         f"got {_describe(spatial_shapes)}")
    counts = spatial_shapes.prod(-1)
    if int(spatial_shapes.min()) < 1 or int(counts.max()) > n:
        raise ValueError(f"spatial_shapes {spatial_shapes.tolist()} must be at least 1 x 1 and hold at most the "
                         f"{n} patches each image has")
    real = torch.arange(n, device=pixel_values.device) < counts.to(pixel_values.device)[:, None]
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != (b, n)
                             or not torch.equal(mask.to(real.device) != 0, real) or not ((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"pixel_attention_mask must be 1 for each image's first rows x cols patches (its "
                         f"spatial_shapes) and 0 for the padding after them, shaped [{b}, {n}]; got "
                         f"{_describe(mask) if not isinstance(mask, torch.Tensor) or mask.shape != (b, n) else 'another'}")
    return mask


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"

