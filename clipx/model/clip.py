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
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, check_backend, flash_unavailable_reason, switched
from .config import CLIPConfig, TextConfig, TowerConfig, VisionConfig
from .hooks import HookedModule, HookPoint
from .length_groups import length_groups
from ..preprocess.image import ImageProcessor
from .save import save_folder
from ..preprocess.text import Encoding


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """quick_gelu into x's own memory, the same operations in the same order (the same bits)."""
    return x.mul_(torch.mul(x, 1.702).sigmoid_())


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def _activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported hidden_act {name!r}; clipx knows {sorted(ACTIVATIONS)}") from None


def _module_hooked(root: nn.Module) -> bool:
    """Whether a torch module hook (Captum's, say) may see the modules under `root`: one on any of
    them, or one registered for every module (register_module_forward_hook)."""
    from torch.nn.modules import module

    if getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in root.modules())


class LayerNorm(nn.LayerNorm):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__(width, eps=eps)
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(super().forward(x))


class MLP(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)
        self.hook_pre = HookPoint()   # [batch, pos, d_mlp], before the activation
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], after it

    def forward(self, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        h = self.hook_pre(self.fc1(x))
        if overwrite and self.act is quick_gelu and not self.hook_pre.active:
            h = quick_gelu_(h)
        else:
            h = self.act(h)
        return self.fc2(self.hook_post(h))


class Block(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.ln1 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.attn = Attention(config.hidden_size, config.num_attention_heads)
        self.ln2 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = MLP(config)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, overwrite: bool = False,
                **attn_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`overwrite`: the sublayers' fresh outputs may take the residual sums in place (see
        `Tower.may_overwrite`), where no hook point holds them."""
        x = self.hook_resid_pre(x)
        attn_out, pattern = self.attn(self.ln1(x), **attn_kwargs)
        attn_out = self.hook_attn_out(attn_out)
        if overwrite and not (self.hook_attn_out.active or self.attn.hook_out.active):
            x = self.hook_resid_mid(attn_out.add_(x))  # x + attn_out, bit for bit: addition commutes
        else:
            x = self.hook_resid_mid(x + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(x), overwrite))
        if overwrite and not self.hook_mlp_out.active:
            x = self.hook_resid_post(mlp_out.add_(x))
        else:
            x = self.hook_resid_post(x + mlp_out)
        return x, pattern


@dataclass
class TowerOutput:
    """One tower's outputs, named as in transformers' `BaseModelOutputWithPooling`."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    embeds: torch.Tensor  # projected pooler_output (the pooler_output itself if the tower has no projection)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class AttentionPool(nn.Module):
    """SigLIP's pooling head (multihead attention pooling): a learned probe attends over the tokens,
    then a pre-LN MLP with its residual. Its attention has hook points like any other
    (`vision.head.attn.hook_pattern`: [batch, heads, 1, tokens], the probe's weights over the tokens)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attn = Attention(config.hidden_size, config.num_attention_heads)
        self.ln = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = MLP(config)
        self.hook_attn_out = HookPoint()  # [batch, 1, d_model]
        self.hook_mlp_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, tokens, d] -> [batch, d]"""
        attn_out, _ = self.attn(self.probe.expand(x.shape[0], -1, -1), context=x)
        h = self.hook_attn_out(attn_out)
        return (h + self.hook_mlp_out(self.mlp(self.ln(h))))[:, 0]

    def each(self, x: torch.Tensor) -> torch.Tensor:
        """Every token's own pooled feature, [batch, tokens, d]: the head as if the probe attended to that
        token alone (softmax over one key is 1), so each patch lands in the joint space by itself."""
        h = self.attn.out_proj(self.attn.v_proj(x))
        return h + self.mlp(self.ln(h))


class Tower(nn.Module):
    """What both towers share: the block stack, the final projection and their hook points."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.proj = (nn.Linear(config.hidden_size, config.projection_dim, bias=config.projection_bias)
                     if config.projection_dim else None)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_pooled = HookPoint()
        self.hook_projected = HookPoint()

    def run_blocks(self, x: torch.Tensor, output_hidden_states: bool, output_attentions: bool,
                   **attn_kwargs: Any) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        overwrite = self.may_overwrite()
        for block in self.blocks:
            x, pattern = block(x, overwrite, force_eager=output_attentions, **attn_kwargs)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(pattern)
        return (x, None if hidden_states is None else tuple(hidden_states),
                None if attentions is None else tuple(attentions))

    def may_overwrite(self) -> bool:
        """In inference, with no torch module hook anywhere (Captum's, say, which may keep a sublayer's
        output), the blocks compute activations and residual sums in place: one large allocation and
        its page faults fewer per sum and activation. Outputs are bit for bit the same."""
        return not torch.is_grad_enabled() and not _module_hooked(self)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        pooled = self.hook_pooled(pooled)
        return self.hook_projected(self.proj(pooled) if self.proj is not None else pooled)


class VisionTower(Tower):
    config: VisionConfig

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config)
        d, eps = config.hidden_size, config.layer_norm_eps
        if config.pooling not in ("class", "attention"):
            raise ValueError(f"a vision tower pools at its class token ('class') or through an attention head "
                             f"('attention'), got pooling={config.pooling!r}")
        self.patch_embedding = nn.Conv2d(config.num_channels, d, config.patch_size, config.patch_size,
                                         bias=config.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(d)) if config.prefix_tokens else None
        self.position_embedding = nn.Embedding(config.grid_size ** 2 + config.prefix_tokens, d)
        self.ln_pre = LayerNorm(d, eps) if config.pre_layernorm else None
        self.ln_post = LayerNorm(d, eps)
        self.head = AttentionPool(config) if config.pooling == "attention" else None

    @property
    def prefix_tokens(self) -> int:
        """How many tokens (a class token) precede the patches."""
        return self.config.prefix_tokens

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """(grid_h, grid_w): the patches of pixel_values [..., H, W], as the patch embedding cuts them."""
        patch = self.config.patch_size
        return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch

    def position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, prefix + grid_h * grid_w, d]; bicubic resampling of the patch positions for other grids
        (transformers' `interpolate_pos_encoding`)."""
        weight, p = self.position_embedding.weight, self.prefix_tokens
        n = self.config.grid_size
        if (grid_h, grid_w) == (n, n):
            return weight[None]
        patch = weight[p:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([weight[None, :p], patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's tokens -> (last_hidden_state, pooled), as transformers names them: the class
        token through ln_post (last_hidden_state stays before it), or every token through ln_post and
        then the attention-pooling head."""
        if self.head is None:
            return x, self.ln_post(x[:, 0])
        x = self.ln_post(x)
        return x, self.head(x)

    def patch_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Block-output tokens [batch, n, d] (patches only, or any) -> each one's own feature in the joint
        space, as the readout would make it from that token alone (for dense similarity maps)."""
        x = self.ln_post(tokens)
        if self.head is not None:
            return self.head.each(x)
        return self.proj(x) if self.proj is not None else x

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False) -> TowerOutput:
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size) and not interpolate_pos_encoding:
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])} but the model takes "
                             f"{size}x{size}; pass interpolate_pos_encoding=True to run at another size")
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        grid_h, grid_w = patches.shape[-2:]
        x = patches.flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = self.hook_embed(x)
        x = x + self.hook_pos_embed(self.position_embeddings(grid_h, grid_w))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        x, hidden_states, attentions = self.run_blocks(x, output_hidden_states, output_attentions)
        last, pooled = self.pool(x)
        return TowerOutput(last, pooled, self.project(pooled), hidden_states, attentions)


class TextTower(Tower):
    config: TextConfig

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.ln_final = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] the position each caption is pooled at: its EOS, or the last position (SigLIP)."""
        if self.config.pooling == "last":
            return torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
        if self.config.eos_token_id == 2:
            # OpenAI's configs carry eos_token_id=2; their real EOS (49407) is the largest id.
            return input_ids.argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> TowerOutput:
        if not (output_hidden_states or output_attentions) and self._skippable_padding(attention_mask):
            lengths = attention_mask.sum(1)
            groups = length_groups(lengths)
            if len(groups) > 1 or int(lengths.max()) < input_ids.shape[1]:
                return self._forward_by_length(input_ids, attention_mask, groups)
        return self._forward(input_ids, attention_mask, output_hidden_states, output_attentions)

    def _skippable_padding(self, attention_mask: torch.Tensor | None) -> bool:
        """In inference under a fused backend, with right padding and nothing hooked (ours or
        torch module hooks, as Captum sets), padding is pure waste: no real token attends to it."""
        if not (self.config.causal and self.config.pooling == "eos"):
            return False  # a token attends to the padding after it, or the pooled position is padding
        if attention_mask is None or torch.is_grad_enabled() or bool(attention_mask.all()):
            return False
        if any(block.attn.backend_in_use == "eager" for block in self.blocks) or _module_hooked(self):
            return False
        if any(isinstance(m, HookPoint) and m.active for m in self.modules()):
            return False
        return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())

    def _forward_by_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           groups: list[torch.Tensor]) -> TowerOutput:
        """Each group of captions cut to its own longest caption (`length_groups` chooses them).
        Pooled and projected outputs are those of the padded batch; last_hidden_state is zero past
        the longest caption of each group (padding that was not computed)."""
        last = torch.zeros(*input_ids.shape, self.config.hidden_size, dtype=self.token_embedding.weight.dtype,
                           device=input_ids.device)
        pooled = embeds = None
        for group in groups:
            n = int(attention_mask[group].sum(1).max())
            out = self._forward(input_ids[group, :n], attention_mask[group, :n], False, False)
            if pooled is None:
                pooled = out.pooler_output.new_empty(input_ids.shape[0], out.pooler_output.shape[-1])
                embeds = out.embeds.new_empty(input_ids.shape[0], out.embeds.shape[-1])
            last[group, :n] = out.last_hidden_state
            pooled[group], embeds[group] = out.pooler_output, out.embeds
        return TowerOutput(last, pooled, embeds)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 output_hidden_states: bool, output_attentions: bool) -> TowerOutput:
        n = input_ids.shape[1]
        x = self.hook_embed(self.token_embedding(input_ids))
        x = x + self.hook_pos_embed(self.position_embedding.weight[None, :n])
        key_padding, right_padded = None, True
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding = attention_mask == 0
            right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
        x, hidden_states, attentions = self.run_blocks(
            x, output_hidden_states, output_attentions,
            causal=self.config.causal, key_padding=key_padding, right_padded=right_padded)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.pooled_positions(input_ids)]
        return TowerOutput(x, pooled, self.project(pooled), hidden_states, attentions)


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

    # --- towers --------------------------------------------------------------------------
    def _tower(self, name: str) -> Tower:
        tower = getattr(self, name)
        if tower is None:
            other = "vision" if name == "text" else "text"
            raise ValueError(f"this checkpoint has no {name} tower (it holds only the {other} tower)")
        return tower

    def encode_image(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected image features, not normalised (transformers' `get_image_features`)."""
        return self._vision_forward(pixel_values, interpolate_pos_encoding).embeds

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features, not normalised (transformers' `get_text_features`)."""
        return self._text_forward(input_ids, attention_mask).embeds

    get_image_features = encode_image
    get_text_features = encode_text

    def _vision_forward(self, pixel_values, interpolate_pos_encoding=False, **kwargs) -> TowerOutput:
        tower = self._tower("vision")
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
                      "with model.preprocess(images)", UserWarning, stacklevel=_caller_level())

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

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False) -> CLIPOutput:
        if pixel_values is None and input_ids is None:
            raise ValueError("pass pixel_values, input_ids, or both")
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        vision = text = image_embeds = text_embeds = logits_per_image = logits_per_text = None
        if pixel_values is not None:
            vision = self._vision_forward(pixel_values, interpolate_pos_encoding, **flags)
            image_embeds = _normalize(vision.embeds)
        if input_ids is not None:
            text = self._text_forward(input_ids, attention_mask, **flags)
            text_embeds = _normalize(text.embeds)
        if vision is not None and text is not None:
            logits_per_image = self.hook_logits_per_image(self.logits(image_embeds, text_embeds))
            logits_per_text = logits_per_image.T
        return CLIPOutput(logits_per_image, logits_per_text, image_embeds, text_embeds, vision, text)

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """logits_per_image [n_images, n_texts] between unit embeddings, as this model scores a pair:
        exp(logit_scale) * cosine, plus logit_bias where the model has one (SigLIP); bias=False for a
        difference of embeddings, whose logit the bias does not enter. The scale and bias take the
        embeddings' dtype (float32 embeddings of a half model are scored in float32)."""
        logits = image_embeds @ text_embeds.T * self.logit_scale.to(image_embeds.dtype).exp()
        if not bias or self.logit_bias is None:
            return logits
        return logits + self.logit_bias.to(image_embeds.dtype)

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

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (PIL, paths, arrays, or a preprocessed tensor) -> pixel_values on the model's device."""
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


_INTERNAL = tuple(str(Path(f).parent) + os.sep for f in (torch.__file__, Path(__file__).parent))  # torch's and clipx's code


def _caller_level() -> int:
    """The stacklevel, for a warnings.warn in the function calling this one, of the first frame
    outside clipx and torch: the user's own line, however deep inside the call the check ran."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        level, frame = level + 1, frame.f_back
    return level


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"

