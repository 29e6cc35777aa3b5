"""The explanation formulas against references written here from the papers (and the authors' code),
on transformers' CLIPModel and SiglipModel: their activations, attentions and gradients, the maths in plain torch.

Each test also checks that the part of the formula it guards (a ReLU, a LayerNorm) changes the result
on these inputs, so that it cannot pass by leaving that part out. tools/mutation_sweep.py checks that
the suite notices each such change."""

import pytest
import torch
import torch.nn.functional as F

import clipx
from checkpoints import hf_siglip, save_siglip
from floats import assert_float32_close, max_relative_error
from inputs import CAPTIONS, pixels
from paths import ROOT

N_LAYERS = 2  # the tiny model's blocks, in each tower


def pair(hf, px, tok, i, j, **flags):
    """transformers' forward of image i with caption j (its own padding), with graphs for gradients."""
    return hf(pixel_values=px[i:i + 1], input_ids=tok.input_ids[j:j + 1],
              attention_mask=tok.attention_mask[j:j + 1], **flags)


def differs(a, b, by=1e-2):
    """The guard that keeps a test from being vacuous: the left-out part moves the result by far more
    than the comparison's tolerance."""
    return max_relative_error(a, b) > by


# --- Grad-CAM (Selvaraju et al., 2017) on a block's input tokens -----------------------------------

def gradcam_reference(hf, px, tok, layer):
    """(maps, maps before the ReLU): weights = the logit's gradient averaged over the tokens that count,
    map = relu(activations . weights) per token; image over the patches, text over the caption's tokens."""
    n_images, n_texts, length = px.shape[0], len(tok.input_ids), tok.input_ids.shape[1]
    image, text = torch.zeros(n_images, n_texts, 16), torch.zeros(n_images, n_texts, length)
    for i in range(n_images):
        for j in range(n_texts):
            out = pair(hf, px, tok, i, j, output_hidden_states=True)
            v = out.vision_model_output.hidden_states[layer]  # the input of block `layer`
            t = out.text_model_output.hidden_states[layer]
            gv, gt = torch.autograd.grad(out.logits_per_image[0, 0], [v, t])
            patches, grads = v[0, 1:].detach(), gv[0, 1:]  # the class token is not a place in the image
            image[i, j] = patches @ grads.mean(0)
            real = tok.attention_mask[j].bool()
            text[i, j] = (t[0].detach() @ gt[0, real].mean(0)) * real
    return (image.clamp(min=0), text.clamp(min=0)), (image, text)


@pytest.mark.parametrize("layer", [-1, 0])
def test_gradcam_equals_the_reference(tiny_checkpoint, tiny_model, layer):
    px, tok = pixels(), tiny_model.tokenize(CAPTIONS)
    (ref_image, ref_text), (raw_image, raw_text) = gradcam_reference(tiny_checkpoint[1], px, tok, layer % N_LAYERS)
    assert differs(raw_image, ref_image) and differs(raw_text, ref_text)  # the ReLU cuts negative evidence
    exp = clipx.explain(tiny_model, px, CAPTIONS, method="gradcam", layer=layer)
    # a dot product whose terms cancel: rounding relative to the terms, about ten times the result
    assert_float32_close(exp.image.flatten(2), ref_image, rtol=1e-4)
    assert_float32_close(exp.text, ref_text, rtol=1e-4)


# --- token-to-patch similarity, and MaskCLIP's value path (Zhou, Loy & Dai, 2022) --------------------

@pytest.mark.parametrize("variant", ["tokens", "maskclip"])
def test_similarity_equals_the_reference(tiny_checkpoint, tiny_model, variant):
    """Each patch's cosine with the caption: `tokens` reads the last block's output patches; MaskCLIP the
    last block's value path alone, out_proj(v_proj(ln1(x))) on its input x, both then through
    post_layernorm and the visual projection."""
    hf, px, tok = tiny_checkpoint[1], pixels(), tiny_model.tokenize(CAPTIONS)
    last = hf.vision_model.encoder.layers[-1]

    def patch_map(patches):
        features = F.normalize(hf.visual_projection(hf.vision_model.post_layernorm(patches)), dim=-1)
        return torch.einsum("bnd,td->btn", features, out.text_embeds)

    with torch.no_grad():
        out = hf(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask, output_hidden_states=True)
        if variant == "maskclip":
            x = out.vision_model_output.hidden_states[-2][:, 1:]
            ref = patch_map(last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x))))
            assert differs(patch_map(last.self_attn.out_proj(last.self_attn.v_proj(x))), ref)  # ln1 matters
        else:
            ref = patch_map(out.vision_model_output.hidden_states[-1][:, 1:])
    exp = clipx.explain(tiny_model, px, CAPTIONS, method="similarity", variant=variant)
    assert_float32_close(exp.image.flatten(2), ref)


# --- LeGrad (Bousselham et al., 2024), as in WalBouss/LeGrad's CLIP wrapper -------------------------

def legrad_reference(hf, px, tok, layers, relu=True):
    """Per pair and layer l: s_l = cos(visual_projection(post_layernorm(mean of layer l's output tokens)),
    caption); relu(ds_l / dA_l), averaged over heads and query rows, class-token key dropped; summed over
    the layers, min-max normalised."""
    maps = torch.zeros(px.shape[0], len(tok.input_ids), 16)
    for i in range(px.shape[0]):
        for j in range(len(tok.input_ids)):
            out = pair(hf, px, tok, i, j, output_hidden_states=True, output_attentions=True)
            vision = out.vision_model_output
            for l in layers:
                pooled = hf.vision_model.post_layernorm(vision.hidden_states[l + 1].mean(1))
                s = (F.normalize(hf.visual_projection(pooled), dim=-1) @ out.text_embeds.T)[0, 0]
                grad = torch.autograd.grad(s, vision.attentions[l], retain_graph=True)[0]
                maps[i, j] += (grad.clamp(min=0) if relu else grad).mean(1).mean(1)[0, 1:]
    low, high = maps.amin(-1, keepdim=True), maps.amax(-1, keepdim=True)
    return (maps - low) / (high - low)


@pytest.mark.parametrize("start_layer", [-2, -1])
def test_legrad_equals_the_reference(tiny_checkpoint, tiny_model, start_layer):
    hf, px, tok = tiny_checkpoint[1], pixels(), tiny_model.tokenize(CAPTIONS)
    layers = range(N_LAYERS + start_layer, N_LAYERS)
    ref = legrad_reference(hf, px, tok, layers)
    assert differs(legrad_reference(hf, px, tok, layers, relu=False), ref)  # the ReLU keeps positive sensitivity
    exp = clipx.explain(tiny_model, px, CAPTIONS, method="legrad", start_layer=start_layer)
    assert_float32_close(exp.image.flatten(2), ref)


# --- SigLIP's score (Zhai et al., 2023): exp(t) * cos(image, caption) + b, wherever clipx scores ---------

@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """(clipx's SigLIP, transformers' SiglipModel it was loaded from): random weights, SigLIP's trained
    scale and bias, so the bias moves the scores by a lot."""
    hf, folder = hf_siglip(), tmp_path_factory.mktemp("tiny-siglip")
    save_siglip(hf, folder)
    return clipx.load(folder), hf


def test_siglip_scores_carry_the_logit_bias(siglip):
    """The model's logits, the logit lens's last layer, zero-shot logits, a perturbation method's scores and
    a caption's direct logit attribution summed over parts: all exp(t) * cos + b, from transformers'
    embeddings."""
    model, hf = siglip
    px = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # SigLIP's pixel range
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        out = hf(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        ref = out.image_embeds @ out.text_embeds.T * hf.logit_scale.exp() + hf.logit_bias
        assert differs(ref - hf.logit_bias, ref)  # the bias is no rounding error next to the scores
        logits = model(pixel_values=px, input_ids=tok.input_ids, attention_mask=tok.attention_mask).logits_per_image
    rtol = dict(rtol=1e-4, floor=1)  # logits: two towers' rounding, relative where large
    assert_float32_close(logits, ref, **rtol, what="logits_per_image")
    assert_float32_close(clipx.logit_lens(model, px, CAPTIONS)[-1], ref, **rtol, what="logit lens")
    assert_float32_close(clipx.zeroshot(model, px, CAPTIONS).logits, ref, **rtol, what="zero-shot")
    assert_float32_close(clipx.explain(model, px, CAPTIONS, method="occlusion").scores, ref, **rtol, what="occlusion")
    parts = clipx.decompose_text(model, CAPTIONS).logits(model, out.image_embeds)  # captions against images
    assert parts.labels[-1] == "logit_bias"
    assert_float32_close(parts.total(), ref.T, **rtol, what="direct logits")


def test_every_mutation_of_the_sweep_still_finds_its_text():
    """tools/mutation_sweep.py breaks each formula by an exact text replacement: a refactor that moves the
    text must move the mutation with it, or the sweep would stop guarding that formula."""
    import importlib.util

    root = ROOT
    spec = importlib.util.spec_from_file_location("mutation_sweep", root / "tools" / "mutation_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for name, (path, text, replacement) in sweep.MUTATIONS.items():
        assert (root / path).read_text(encoding="utf-8").count(text) == 1, f"{name}: {text!r} in {path}"
        assert replacement != text
