"""The two towers and what they share: the block stack and its hook points, the embeddings, and the readout
each config describes (how the tokens become one embedding). Every method, view and metric asks a tower
these questions (its prefix tokens, its patch grid, where a caption is pooled, each patch's own feature)
rather than assuming OpenAI's CLIP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig, TowerConfig, VisionConfig
from .hooks import HookPoint
from .layers import AttentionPool, Block, LinearPatchEmbedding, norm
from .length_groups import length_groups
from .readout import LinearReadout


def refuse(reason: str | None, what: str) -> None:
    """A ValueError "what: reason" where a tower gave a reason it cannot serve (`cannot_decompose()`, ...)."""
    if reason:
        raise ValueError(f"{what}: {reason}")


def _module_hooked(root: nn.Module) -> bool:
    """Whether a torch module hook (Captum's, say) may see the modules under `root`: one on any of
    them, or one registered for every module (register_module_forward_hook)."""
    from torch.nn.modules import module

    if getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in root.modules())


@dataclass
class TowerOutput:
    """One tower's outputs, named as in transformers' `BaseModelOutputWithPooling`."""

    last_hidden_state: torch.Tensor | None  # None only from a pooled-only call that skipped padding
    pooler_output: torch.Tensor
    embeds: torch.Tensor  # projected pooler_output (the pooler_output itself if the tower has no projection)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class Tower(nn.Module):
    """What both towers share: the block stack, the final projection and their hook points."""

    # The inference fast path: on unless switched off (`CLIP.fast_inference` sets it for the whole model).
    # Where it applies, see `fast_path`.
    fast_inference = True

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
        overwrite = self.fast_path()
        for block in self.blocks:
            x, pattern = block(x, overwrite, force_eager=output_attentions, **attn_kwargs)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(pattern)
        return (x, None if hidden_states is None else tuple(hidden_states),
                None if attentions is None else tuple(attentions))

    def fast_path(self) -> bool:
        """Whether a call takes the inference fast path. Its conditions, all of them: it is switched on, no
        gradient is being recorded, and no torch module hook sits under the tower (Captum's, say, which may
        keep a sublayer's output). On it, the blocks compute activations and residual sums in place, sparing
        an allocation and its page faults per sum, with bit-for-bit the same outputs (what a hook point
        holds is never overwritten); and a text tower asked for its embeddings alone skips padding
        (`TextTower.skips_padding`)."""
        return self.fast_inference and not torch.is_grad_enabled() and not _module_hooked(self)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        pooled = self.hook_pooled(pooled)
        return self.hook_projected(self.proj(pooled) if self.proj is not None else pooled)

    # --- what methods ask a tower -----------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm between the last block and the readout (`final_norm_name`), if the tower has one."""
        return getattr(self, self.final_norm_name)

    def cannot_decompose(self) -> str | None:
        """Why the embedding is not a sum of per-block parts through a linearised readout; None where it is."""
        if self.config.norm_position == "post":
            return (f"the {self.name} tower's blocks are post-norm (norm_position='post'): each norm rescales the "
                    "whole residual, so no block's output reaches the embedding by itself")
        return None

    def linear_readout(self, residual: torch.Tensor) -> LinearReadout:
        """The readout from the last residual [items, d] (at the pooled positions) to the joint space,
        linearised at that residual; a ValueError saying why for a tower where no such readout exists."""
        reason = self.cannot_decompose()
        if reason:
            raise ValueError(reason)
        return LinearReadout(self.final_norm, self.proj, residual,
                             (f"{self.name}.{self.final_norm_name}", f"{self.name}.proj"))


class VisionTower(Tower):
    config: VisionConfig
    name, final_norm_name = "vision", "ln_post"

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        p = config.patch_size
        self.patch_embedding = (LinearPatchEmbedding(p, config.num_channels, d, config.patch_bias)
                                if config.patch_embedding == "linear"
                                else nn.Conv2d(config.num_channels, d, p, p, bias=config.patch_bias))
        self.patch_norm = norm(config) if config.patch_norm else None
        self.class_embedding = nn.Parameter(torch.zeros(d)) if config.prefix_tokens else None
        self.position_embedding = nn.Embedding(config.grid_size ** 2 + config.prefix_tokens, d)
        self.ln_pre = norm(config) if config.pre_layernorm else None
        self.ln_post = norm(config)
        self.head = None if config.pooling == "class" else AttentionPool(config)

    @property
    def prefix_tokens(self) -> int:
        """How many tokens (a class token) precede the patches."""
        return self.config.prefix_tokens

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """(grid_h, grid_w): the patches of pixel_values [..., H, W], as the patch embedding cuts them."""
        patch = self.config.patch_size
        return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch

    def position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, prefix + grid_h * grid_w, d]; the patch positions resampled for other grids as
        `config.position_resize` says: bicubic (transformers' `interpolate_pos_encoding`), or bilinear with
        antialiasing computed in float32 (NaFlex's, which resizes every image's positions to its grid)."""
        weight, p = self.position_embedding.weight, self.prefix_tokens
        n = self.config.grid_size
        if (grid_h, grid_w) == (n, n):
            return weight[None]
        patch = weight[p:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        if self.config.position_resize == "bilinear_antialias":
            patch = F.interpolate(patch.float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False,
                                  antialias=True).to(weight.dtype)
        else:
            patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([weight[None, :p], patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def padded_position_embeddings(self, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
        """[B, length, d]: each image's positions on its own (rows, cols) grid, then, on its padding, the
        first patch's (as transformers fills them: padding is masked out as a key, its value is moot)."""
        positions = self.position_embedding.weight.new_empty(len(spatial_shapes), length,
                                                             self.config.hidden_size)
        shapes = [tuple(s) for s in spatial_shapes.tolist()]
        for rows, cols in set(shapes):
            grid = self.position_embeddings(rows, cols)[0, self.prefix_tokens:]
            for b in (b for b, shape in enumerate(shapes) if shape == (rows, cols)):
                positions[b, :rows * cols] = grid
                positions[b, rows * cols:] = grid[0]
        return positions

    def embed_patches(self, pixel_values: torch.Tensor,
                      spatial_shapes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch tokens [B, n, d], their positions [1 or B, n, d]) of images [B, C, H, W], or, with
        `spatial_shapes` [B, 2], of patches [B, L, p*p*C] each image cut on its own grid (a linear patch
        embedding's, see `config.patch_embedding`)."""
        pixel_values = pixel_values.to(self.patch_embedding.weight.dtype)
        if spatial_shapes is not None:
            return (self.patch_embedding.flat(pixel_values),
                    self.padded_position_embeddings(spatial_shapes, pixel_values.shape[1]))
        patches = self.patch_embedding(pixel_values)  # [B, d, grid_h, grid_w], a convolution or not
        grid_h, grid_w = patches.shape[-2:]
        return patches.flatten(2).transpose(1, 2), self.position_embeddings(grid_h, grid_w)

    def pool(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's tokens -> (last_hidden_state, pooled), as transformers names them: the class
        token through ln_post (last_hidden_state stays before it), or every token through ln_post and
        then the attention-pooling head (which ignores the `key_padding` tokens)."""
        if self.head is None:
            return x, self.ln_post(x[:, 0])
        x = self.ln_post(x)
        return x, self.head(x, key_padding)

    def cannot_decompose(self) -> str | None:
        if self.head is not None:
            return (f"the vision tower pools through an attention head (pooling={self.config.pooling!r}), which is "
                    "nonlinear in the tokens: the parts would not sum to the embedding. clipx.logit_lens works for it")
        return super().cannot_decompose()

    def readout(self, tokens: torch.Tensor, class_token: torch.Tensor | None = None) -> torch.Tensor:
        """Block-output tokens [batch, n, d] -> embeddings [batch, dim] as the readout makes them: through the
        pooling head where the tower has one, else `class_token` [batch, d] (default: the first token)
        through ln_post and the projection."""
        if self.head is not None:
            pooled = self.pool(tokens)[1]
        else:
            pooled = self.ln_post(tokens[:, 0] if class_token is None else class_token)
        return self.proj(pooled) if self.proj is not None else pooled

    def cannot_value_path(self) -> str | None:
        """Why the last block has no value path (MaskCLIP's out_proj(v_proj(ln1(x)))), or None."""
        if self.config.norm_position == "post":
            return "the vision tower's blocks are post-norm: the last block's values are not read from ln1(x)"
        return None

    def value_path(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block [batch, n, d] -> what its attention would write for each token if
        every query attended to that token alone: out_proj(v_proj(ln1(x))) (MaskCLIP)."""
        reason = self.cannot_value_path()
        if reason:
            raise ValueError(reason)
        last = self.blocks[-1]
        return last.attn.out_proj(last.attn.v_proj(last.ln1(tokens)))

    def patch_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Block-output tokens [batch, n, d] (patches only, or any) -> each one's own feature in the joint
        space, as the readout would make it from that token alone (for dense similarity maps): through
        ln_post, the pooling head where there is one, and the projection where there is one (AIMv2 has
        both; SigLIP's head output is its embedding)."""
        x = self.ln_post(tokens)
        if self.head is not None:
            x = self.head.each(x)
        return self.proj(x) if self.proj is not None else x

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False, *,
                pixel_attention_mask: torch.Tensor | None = None,
                spatial_shapes: torch.Tensor | None = None) -> TowerOutput:
        """pixel_values: images [B, C, H, W]; or, for a linear patch embedding, patches [B, L, p*p*C] with
        `spatial_shapes` [B, 2] (each image's rows and cols of patches, its first rows * cols patches) and
        `pixel_attention_mask` [B, L] (1 for real patches; None: the first rows * cols of each image)."""
        size = self.config.image_size
        if spatial_shapes is None and not self.config.any_resolution \
                and pixel_values.shape[-2:] != (size, size) and not interpolate_pos_encoding:
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])} but the model takes "
                             f"{size}x{size}; pass interpolate_pos_encoding=True to run at another size")
        x, positions = self.embed_patches(pixel_values, spatial_shapes)
        if self.patch_norm is not None:
            x = self.patch_norm(x)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = self.hook_embed(x)
        x = x + self.hook_pos_embed(positions)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        key_padding = self._key_padding(pixel_attention_mask, spatial_shapes, x.shape[1])
        x, hidden_states, attentions = self.run_blocks(x, output_hidden_states, output_attentions,
                                                       key_padding=key_padding)
        last, pooled = self.pool(x, key_padding)
        return TowerOutput(last, pooled, self.project(pooled), hidden_states, attentions)

    def _key_padding(self, pixel_attention_mask: torch.Tensor | None, spatial_shapes: torch.Tensor | None,
                     n: int) -> torch.Tensor | None:
        """[B, n] True for the padding patches no token may attend to (prefix tokens are real); None where
        there are none."""
        if spatial_shapes is None:
            return None
        p = self.prefix_tokens
        if pixel_attention_mask is None:
            real = torch.arange(n - p, device=spatial_shapes.device) < spatial_shapes.prod(-1)[:, None]
        else:
            real = pixel_attention_mask.bool()
        if bool(real.all()):
            return None
        return F.pad(~real, (p, 0), value=False)


class TextTower(Tower):
    config: TextConfig
    name, final_norm_name = "text", "ln_final"

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embedding = nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size else None
        self.ln_embed = norm(config) if config.embedding_norm else None
        self.ln_final = norm(config) if config.final_norm else None

    def token_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """last_hidden_state [T, L, d] -> each position's own feature in the joint space [T, L, dim]."""
        return self.proj(hidden) if self.proj is not None else hidden

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] the position each caption is pooled at, as `config.pooling` says: its first EOS by id, its
        largest id (OpenAI's EOS), the last position (SigLIP) or the first ([CLS])."""
        pooling = self.config.pooling
        if pooling in ("last", "first"):
            at = input_ids.shape[1] - 1 if pooling == "last" else 0
            return torch.full(input_ids.shape[:1], at, dtype=torch.long, device=input_ids.device)
        if pooling == "eos_argmax":
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == self.config.eos_token_id
        found = is_eos.any(dim=-1)
        if not found.all():
            rows = found.logical_not().nonzero().flatten().tolist()
            warnings.warn(f"input_ids rows {rows[:8]}{' ...' if len(rows) > 8 else ''} hold no end-of-text token "
                          f"(id {self.config.eos_token_id}), where this text tower pools: they are pooled at "
                          "position 0, as transformers does, which scores every such caption alike; make ids "
                          "with model.tokenize", stacklevel=2)
        return is_eos.int().argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                pooled_only: bool = False) -> TowerOutput:
        """`pooled_only`: the caller reads only the pooled output and the embeddings (`encode_text`), so
        the fast path may skip padding; last_hidden_state is then None, never a partial tensor."""
        if pooled_only and not (output_hidden_states or output_attentions) and self.skips_padding(attention_mask):
            lengths = attention_mask.sum(1)
            groups = length_groups(lengths)
            if len(groups) > 1 or int(lengths.max()) < input_ids.shape[1]:
                return self._forward_by_length(input_ids, attention_mask, groups)
        return self._forward(input_ids, attention_mask, output_hidden_states, output_attentions, pooled_only)

    def skips_padding(self, attention_mask: torch.Tensor | None) -> bool:
        """On the fast path, under a fused backend, with right padding and none of our hook points active,
        padding is pure waste for the pooled output: no real token of a causal tower attends to it."""
        if not (self.config.causal and self.config.pooling in ("eos", "eos_argmax")):
            return False  # a token attends to the padding after it, or the pooled position is padding
        if attention_mask is None or bool(attention_mask.all()) or not self.fast_path():
            return False
        if any(isinstance(m, HookPoint) and m.active for m in self.modules()):
            return False
        if any(block.attn.backend_for_call() == "eager" for block in self.blocks):
            return False
        return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())

    def _forward_by_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           groups: list[torch.Tensor]) -> TowerOutput:
        """Each group of captions cut to its own longest caption (`length_groups` chooses them).
        Pooled and projected outputs are those of the padded batch; no last_hidden_state (its padding was
        not computed)."""
        pooled = embeds = None
        for group in groups:
            n = int(attention_mask[group].sum(1).max())
            out = self._forward(input_ids[group, :n], attention_mask[group, :n], False, False, True)
            if pooled is None:
                pooled = out.pooler_output.new_empty(input_ids.shape[0], out.pooler_output.shape[-1])
                embeds = out.embeds.new_empty(input_ids.shape[0], out.embeds.shape[-1])
            pooled[group], embeds[group] = out.pooler_output, out.embeds
        return TowerOutput(None, pooled, embeds)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 output_hidden_states: bool, output_attentions: bool, pooled_only: bool = False) -> TowerOutput:
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids)
        if self.token_type_embedding is not None:  # segment 0 throughout: one caption is one segment
            x = x + self.token_type_embedding.weight[0]
        x = self.hook_embed(x)
        x = x + self.hook_pos_embed(self.position_embedding.weight[None, :n])
        if self.ln_embed is not None:
            x = self.ln_embed(x)
        key_padding, right_padded = None, pooled_only
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding = attention_mask == 0
            # only the pooled output is read: a fused backend may drop the mask of right padding, which
            # changes the padding's own outputs alone
            right_padded = pooled_only and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
        x, hidden_states, attentions = self.run_blocks(
            x, output_hidden_states, output_attentions,
            causal=self.config.causal, key_padding=key_padding, right_padded=right_padded)
        if self.ln_final is not None:
            x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.pooled_positions(input_ids)]
        return TowerOutput(x, pooled, self.project(pooled), hidden_states, attentions)


