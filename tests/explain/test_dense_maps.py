"""similarity's training-free dense-map variants (SCLIP, ClearCLIP, NACLIP) against each paper's last block
written here from its formula and its authors' code, on transformers' CLIPModel and SiglipModel weights;
batching, the sanity check and the refusals.

Each reference test also checks that the part of the formula it guards changes the result, so that it
cannot pass by leaving that part out."""

import math

import pytest
import torch
import torch.nn.functional as F

import clipx
from checkpoints import hf_siglip, randomise, save_siglip
from clipx.model.config import CLIPConfig, TextConfig, VisionConfig
from explain_checks import check_batched_equals_single, map_change_after_rerandomising
from floats import assert_float32_close, max_relative_error
from inputs import CAPTIONS, images

VARIANTS = ["sclip", "clearclip", "naclip"]
NACLIP_STD = 5.0  # NACLIP's default gaussian_std, in patches


def softmax(scores):
    return torch.softmax(scores, dim=-1)


def gaussian(grid, prefix, std=NACLIP_STD):
    """NACLIP's omega, patch by patch: exp(-(dr^2 + dc^2) / (2 std^2)) between the patches at (row, column)
    on the grid (row-major, as the tokens), nothing to or from a class token."""
    rows, cols = grid
    omega = torch.zeros(prefix + rows * cols, prefix + rows * cols)
    for a in range(rows * cols):
        for b in range(rows * cols):
            (r1, c1), (r2, c2) = divmod(a, cols), divmod(b, cols)
            omega[prefix + a, prefix + b] = math.exp(-((r1 - r2) ** 2 + (c1 - c2) ** 2) / (2 * std ** 2))
    return omega


class Omega:
    """NACLIP's omega on the image's grid, and on the grid with rows and columns swapped (a guard)."""

    def __init__(self, rows, cols, prefix):
        self.grid, self.transposed = gaussian((rows, cols), prefix), gaussian((cols, rows), prefix)


# The attention weights each paper puts in the last block (from q, k, the scale s and NACLIP's `Omega`), and
# whether the block keeps its residual and MLP (SCLIP's code does; ClearCLIP and NACLIP keep neither).
PAPERS = {
    "sclip": (lambda q, k, s, omega: softmax(q @ q.mT * s) + softmax(k @ k.mT * s), True),
    "clearclip": (lambda q, k, s, omega: softmax(q @ q.mT * s), False),
    "naclip": (lambda q, k, s, omega: softmax(k @ k.mT * s + omega.grid), False),
}
# what each test guards: the same block with that part of the formula changed
CHANGED = {
    "sclip": [(lambda q, k, s, omega: softmax(q @ q.mT * s), True),               # the k-k term
              (PAPERS["sclip"][0], False)],                                       # residual and MLP
    "clearclip": [(lambda q, k, s, omega: softmax(q @ k.mT * s), False)],         # q-q, not q-k
    "naclip": [(lambda q, k, s, omega: softmax(k @ k.mT * s), False),             # the neighbourhood
               (lambda q, k, s, omega: softmax(k @ k.mT * s + omega.transposed), False)],  # rows, columns
}


def last_block(layer, x, weights, residual_mlp, omega):
    """A transformers encoder layer rewired: q, k, v from layer_norm1(x), per head, mixed by `weights`."""
    b, n, d = x.shape
    attn = layer.self_attn
    heads = attn.num_heads
    h = layer.layer_norm1(x)
    q, k, v = (p(h).view(b, n, heads, d // heads).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = attn.out_proj((weights(q, k, (d // heads) ** -0.5, omega) @ v).transpose(1, 2).reshape(b, n, d))
    if not residual_mlp:
        return out
    x = x + out
    return x + layer.mlp(layer.layer_norm2(x))


def reference_maps(hf, px, tok, variant_formulas, prefix, per_patch):
    """Image maps [B, T, n_patches]: the last block's input through `last_block`, the patches through
    `per_patch` (the readout of one token), cosine with each caption embedding."""
    rows, cols = px.shape[-2] // 8, px.shape[-1] // 8
    out = hf(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask,
             output_hidden_states=True, interpolate_pos_encoding=True)
    x = out.vision_model_output.hidden_states[-2]
    omega = Omega(rows, cols, prefix)
    maps = []
    for weights, residual_mlp in variant_formulas:
        patches = last_block(hf.vision_model.encoder.layers[-1], x, weights, residual_mlp, omega)[:, prefix:]
        features = F.normalize(per_patch(hf.vision_model.post_layernorm(patches)), dim=-1)
        maps.append(torch.einsum("bnd,td->btn", features, F.normalize(out.text_embeds, dim=-1)))
    return maps


def wide_pixels(n=2, width=48, seed=1):
    """[n, 3, 32, width]: a grid of 4 x 6 patches, so that a transposed neighbourhood cannot pass for the
    right one; standard-normal, about the range of CLIP's preprocessed images."""
    return torch.randn(n, 3, 32, width, generator=torch.Generator().manual_seed(seed))


def siglip_pixels(n=2, width=48, seed=1):
    """As `wide_pixels`, in SigLIP's preprocessed range [-1, 1]."""
    return torch.rand(n, 3, 32, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_clip_maps_equal_the_papers_last_block(tiny_checkpoint, model, variant):
    hf, px, tok = tiny_checkpoint[1], wide_pixels(), model.tokenize(CAPTIONS)
    with torch.no_grad():
        ref, *changed = reference_maps(hf, px, tok, [PAPERS[variant], *CHANGED[variant]], 1, hf.visual_projection)
    for other in changed:
        assert max_relative_error(other, ref) > 1e-2
    exp = clipx.explain(model, px, CAPTIONS, method="similarity", variant=variant)
    assert exp.image.shape == (2, 3, 4, 6)
    assert_float32_close(exp.image.flatten(2), ref)
    # the caption's own end token is its embedding: the cube holds the same rewired patches
    eos = tok.input_ids.argmax(-1)
    for j in range(3):
        assert_float32_close(exp.token_maps[:, j, eos[j]], exp.image[:, j])
    plain = clipx.explain(model, px, CAPTIONS, method="similarity")
    assert_float32_close(exp.text, plain.text)  # the text side reads the model as it is


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-siglip")
    hf = hf_siglip()
    save_siglip(hf, folder)
    return hf, clipx.load(folder)


def siglip_each(hf):
    """transformers' pooling head as if its probe attended to one token alone (softmax over one key is 1):
    the token's value through out_proj, then the head's MLP with its residual."""
    head = hf.vision_model.head
    _, _, wv = head.attention.in_proj_weight.chunk(3)
    _, _, bv = head.attention.in_proj_bias.chunk(3)

    def each(tokens):
        h = head.attention.out_proj(tokens @ wv.T + bv)
        return h + head.mlp(head.layernorm(h))
    return each


@pytest.mark.parametrize("variant", VARIANTS)
def test_siglip_maps_equal_the_papers_last_block_over_the_patches(siglip, variant):
    """No class token: the rewired attention runs over the patches alone, read through the head per patch."""
    hf, model = siglip
    px, tok = siglip_pixels(), model.tokenize(CAPTIONS)
    with torch.no_grad():
        ref, *changed = reference_maps(hf, px, tok, [PAPERS[variant], *CHANGED[variant]], 0, siglip_each(hf))
    for other in changed:
        assert max_relative_error(other, ref) > 1e-2
    exp = clipx.explain(model, px, CAPTIONS, method="similarity", variant=variant)
    assert_float32_close(exp.image.flatten(2), ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_equals_single_pair_and_the_model_is_left_as_it_was(model, siglip, variant):
    for m, px in ((model, images()), (siglip[1], siglip_pixels(3, width=32))):
        weights = {k: v.clone() for k, v in m.state_dict().items()}
        check_batched_equals_single(m, px, CAPTIONS, "similarity", variant=variant)
        assert all(torch.equal(v, weights[k]) for k, v in m.state_dict().items())
        assert not any(p.fwd_hooks for p in m.modules() if hasattr(p, "fwd_hooks"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_maps_change_when_the_last_block_is_rerandomised(tiny_checkpoint, variant):
    model = clipx.load(tiny_checkpoint[0])
    assert map_change_after_rerandomising(model, images(2), CAPTIONS, "similarity", variant=variant) > 1e-3


def test_variants_give_different_maps(model):
    maps = {v: clipx.explain(model, images(2), CAPTIONS, method="similarity", variant=v).image
            for v in ["tokens", "maskclip", *VARIANTS]}
    for a in maps:
        for b in maps:
            assert a == b or max_relative_error(maps[a], maps[b]) > 1e-2, (a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_post_norm_tower_is_refused_by_name(variant):
    tiny = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=TextConfig(**tiny), projection_dim=24,
                        vision_config=VisionConfig(**tiny, image_size=32, patch_size=8, norm_position="post"))
    model = randomise(clipx.CLIP(config).eval())
    with pytest.raises(ValueError, match=f"'{variant}' rewires the last block's attention: .* post-norm"):
        clipx.explain(model, images(1), {"input_ids": torch.tensor([[49406, 320, 49407]])},
                      method="similarity", variant=variant)


def test_an_unknown_variant_lists_them_all(model):
    with pytest.raises(ValueError, match="tokens, maskclip, sclip, clearclip, naclip"):
        clipx.explain(model, images(1), CAPTIONS[:1], method="similarity", variant="clear_clip")
