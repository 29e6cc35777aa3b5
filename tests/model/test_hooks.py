"""Hook points, scoped hooks, run_with_cache and the attention backends."""

import pytest
import torch

import clipx
from floats import assert_float32_close
from inputs import texts_to_ids

# Every hook point of a one-block-per-tower model: a rename or a lost hook point breaks this.
BLOCK = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
         "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
         "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "attn.hook_out", "ln2.hook_normalized", "mlp.hook_pre",
         "mlp.hook_post"]
TOWER = ["hook_embed", "hook_pos_embed", "hook_pooled", "hook_projected"]
EXPECTED_NAMES = sorted(
    [f"{t}.{h}" for t in ("vision", "text") for h in TOWER]
    + [f"{t}.blocks.0.{h}" for t in ("vision", "text") for h in BLOCK]
    + ["vision.ln_pre.hook_normalized", "vision.ln_post.hook_normalized", "text.ln_final.hook_normalized",
       "hook_logits_per_image"])


def one_block_model(seed=0):
    torch.manual_seed(seed)
    config = clipx.CLIPConfig(
        text_config=clipx.TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, vocab_size=49408, projection_dim=24),
        vision_config=clipx.VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8, projection_dim=24),
        projection_dim=24)
    return clipx.CLIP(config).eval()


def inputs(n_images=2, seed=1):
    px = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    ids, mask = texts_to_ids()
    return dict(pixel_values=px, input_ids=ids, attention_mask=mask)


def test_hook_names_snapshot():
    assert sorted(one_block_model().hook_names()) == EXPECTED_NAMES


def test_hook_names_scale_with_depth(tiny_model):
    names = tiny_model.hook_names()
    assert "vision.blocks.1.attn.hook_pattern" in names and "text.blocks.1.hook_resid_post" in names
    assert len(names) == len(EXPECTED_NAMES) + 2 * len(BLOCK)


def test_ablation_changes_logits_and_they_return(tiny_model):
    x = inputs()
    with torch.no_grad():
        before = tiny_model(**x).logits_per_image
        with tiny_model.hooks(fwd_hooks=[("vision.blocks.1.attn.hook_z", lambda z, hook: z * 0)]):
            ablated = tiny_model(**x).logits_per_image
        after = tiny_model(**x).logits_per_image
    assert (before - ablated).abs().max() > 1e-3
    assert torch.equal(before, after)  # the same computation: exactly the same numbers


def test_head_ablation_touches_one_head_only(tiny_model):
    def kill_head_2(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    x = inputs()
    _, clean = tiny_model.run_with_cache(**x, names_filter="vision.blocks.0.attn.hook_z")
    with tiny_model.hooks(fwd_hooks=[("vision.blocks.0.attn.hook_z", kill_head_2)]):
        _, cache = tiny_model.run_with_cache(**x, names_filter="vision.blocks.0.attn.hook_z")
    z0, z1 = clean["vision.blocks.0.attn.hook_z"], cache["vision.blocks.0.attn.hook_z"]
    assert torch.equal(z1[:, :, 2], torch.zeros_like(z1[:, :, 2]))
    assert torch.equal(z1[:, :, [0, 1, 3]], z0[:, :, [0, 1, 3]])


def test_patching_one_image_into_another(tiny_model):
    """Activation patching: image 0's residual stream written into image 1 makes their embeddings equal."""
    x = inputs()

    def patch(resid, hook):
        resid = resid.clone()
        resid[1] = resid[0]
        return resid

    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[("vision.blocks.0.hook_resid_pre", patch)]):
        emb = tiny_model.encode_image(x["pixel_values"])
    torch.testing.assert_close(emb[0], emb[1])


def test_no_hook_survives_an_exception(tiny_model):
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks(fwd_hooks=[("vision.blocks.*.attn.hook_pattern", lambda t, h: seen.append(h.name))],
                              bwd_hooks=[("text.hook_pooled", lambda g, h: None)]):
            raise RuntimeError("boom")
    assert all(not tiny_model.hook_point(n).active for n in tiny_model.hook_names())
    with torch.no_grad():
        tiny_model(**inputs())
    assert seen == []


def test_unknown_hook_name_is_a_clear_error(tiny_model):
    with pytest.raises(KeyError, match="hook_names"):
        with tiny_model.hooks(fwd_hooks=[("vision.blocks.9.attn.hook_pattern", lambda t, h: None)]):
            pass


def test_cached_gradients_equal_autograd(tiny_model):
    x = inputs()
    names = ["vision.blocks.0.attn.hook_pattern", "vision.blocks.1.attn.hook_pattern",
             "text.blocks.1.attn.hook_pattern", "vision.blocks.1.hook_resid_post", "text.hook_pooled"]

    def objective(out):
        return out.logits_per_image[1, 2]

    _, cache = tiny_model.run_with_cache(**x, names_filter=names, objective=objective)

    # the reference: keep the activations by hand and differentiate with torch.autograd.grad
    kept = {}

    def keep(t, hook):
        t = t if t.requires_grad else t.detach().requires_grad_(True)
        kept[hook.name] = t
        return t

    with tiny_model.hooks(fwd_hooks=[(n, keep) for n in names]):
        out = tiny_model(**x)
    grads = torch.autograd.grad(objective(out), [kept[n] for n in names])
    for name, g in zip(names, grads):
        assert_float32_close(cache.grad(name), g)
        torch.testing.assert_close(cache[name], kept[name].detach())
        assert not cache[name].requires_grad


def test_gradients_inside_no_grad_and_frozen_weights(tiny_model):
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(**inputs(), names_filter="*.attn.hook_pattern",
                                             objective=lambda out: out.logits_per_image.sum())
    assert cache.grad("vision.blocks.0.attn.hook_pattern").abs().sum() > 0
    assert cache.grad("text.blocks.1.attn.hook_pattern").abs().sum() > 0
    assert not any(p.requires_grad for p in tiny_model.parameters())


def test_objective_must_be_scalar(tiny_model):
    with pytest.raises(ValueError, match="scalar"):
        tiny_model.run_with_cache(**inputs(), names_filter="text.hook_pooled", objective=lambda out: out.logits_per_image)


def test_backward_hook_can_scale_gradients(tiny_model):
    x = dict(inputs())
    x["pixel_values"].requires_grad_(True)
    out = tiny_model(**x)
    (g_plain,) = torch.autograd.grad(out.logits_per_image.sum(), x["pixel_values"])
    with tiny_model.hooks(bwd_hooks=[("vision.hook_pooled", lambda g, hook: g * 2)]):
        out = tiny_model(**x)
        (g_doubled,) = torch.autograd.grad(out.logits_per_image.sum(), x["pixel_values"])
    torch.testing.assert_close(g_doubled, 2 * g_plain)


# --- attention backends ----------------------------------------------------------------------------

def test_eager_and_sdpa_agree_switching_back_and_forth(tiny_model):
    x = inputs()
    results = []
    with torch.no_grad():
        for backend in ("eager", "sdpa", "eager", "sdpa"):
            tiny_model.set_attention(backend)
            assert tiny_model.attention_backend == backend
            results.append(tiny_model(**x))
    for r in results[1:]:
        assert_float32_close(r.logits_per_image, results[0].logits_per_image)
        assert_float32_close(r.vision_model_output.last_hidden_state,
                             results[0].vision_model_output.last_hidden_state)


def test_attention_context_restores_each_layer(tiny_model):
    tiny_model.set_attention("sdpa")
    tiny_model.vision.blocks[0].attn.backend = "eager"
    with tiny_model.attention("eager"):
        assert tiny_model.attention_backend == "eager"
    assert tiny_model.attention_backend == "mixed"
    assert tiny_model.vision.blocks[0].attn.backend == "eager" and tiny_model.text.blocks[0].attn.backend == "sdpa"


def test_patterns_are_recorded_under_sdpa(tiny_model):
    """Hooking scores or patterns makes those layers run eagerly for that call."""
    x = inputs()
    with tiny_model.attention("eager"):
        _, eager = tiny_model.run_with_cache(**x, names_filter="*.hook_pattern")
    tiny_model.set_attention("sdpa")
    _, fused = tiny_model.run_with_cache(**x, names_filter="*.hook_pattern")
    assert set(fused) == set(eager) and len(fused) == 4
    for name in eager:
        assert_float32_close(fused[name], eager[name])
    assert tiny_model.attention_backend == "sdpa"


def test_flash_on_cpu_is_a_clear_error(tiny_checkpoint, tiny_model):
    with pytest.raises(RuntimeError, match="CUDA"):
        tiny_model.set_attention("flash")
    assert tiny_model.attention_backend == "eager"  # nothing half-switched
    with pytest.raises(RuntimeError, match="CUDA"):
        clipx.load(tiny_checkpoint[0], attention="flash")
    with pytest.raises(ValueError, match="eager, sdpa, flash"):
        tiny_model.set_attention("fast")


def test_hook_result_is_each_heads_share_of_the_output(tiny_model):
    """TransformerLens' hook_result: head h's z through its slice of W_O; the heads plus the bias are
    hook_out, and with hook_result hooked the outputs stay those of the plain forward."""
    x = inputs()
    with torch.no_grad():
        plain = tiny_model(**x).logits_per_image
        out, cache = tiny_model.run_with_cache(**x, names_filter=["vision.blocks.0.attn.hook_z",
                                                                  "vision.blocks.0.attn.hook_result",
                                                                  "vision.blocks.0.attn.hook_out"])
    attn = tiny_model.vision.blocks[0].attn
    z, result = cache["vision.blocks.0.attn.hook_z"], cache["vision.blocks.0.attn.hook_result"]
    assert result.shape == (*z.shape[:3], attn.out_proj.out_features)
    for h in range(attn.num_heads):
        w_o = attn.out_proj.weight[:, h * attn.head_dim:(h + 1) * attn.head_dim]
        assert_float32_close(result[:, :, h], z[:, :, h] @ w_o.T)
    assert_float32_close(result.sum(2) + attn.out_proj.bias, cache["vision.blocks.0.attn.hook_out"])
    assert_float32_close(out.logits_per_image, plain)


def test_zeroing_one_heads_result_equals_zeroing_its_z(tiny_model):
    x = inputs()

    def zero(head):
        def hook(t, hook):
            t = t.clone()
            t[:, :, head] = 0
            return t
        return hook

    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=[("vision.blocks.1.attn.hook_result", zero(2))]):
            by_result = tiny_model(**x).logits_per_image
        with tiny_model.hooks(fwd_hooks=[("vision.blocks.1.attn.hook_z", zero(2))]):
            by_z = tiny_model(**x).logits_per_image
        clean = tiny_model(**x).logits_per_image
    assert_float32_close(by_result, by_z)
    assert not torch.allclose(by_result, clean)


def test_old_spellings_work_and_warn(tiny_model):
    x = inputs()
    with torch.no_grad():
        _, new = tiny_model.run_with_cache(**x, names_filter="text.blocks.0.attn.hook_attn_scores")
        with pytest.warns(DeprecationWarning, match="names= is now names_filter="):
            _, old = tiny_model.run_with_cache(**x, names="text.blocks.0.attn.hook_attn_scores")
        assert torch.equal(old["text.blocks.0.attn.hook_attn_scores"], new["text.blocks.0.attn.hook_attn_scores"])
        with pytest.warns(DeprecationWarning, match="'hook_scores' is now 'hook_attn_scores'"):
            _, glob = tiny_model.run_with_cache(**x, names_filter="text.blocks.*.attn.hook_scores")
        assert list(glob) == [f"text.blocks.{i}.attn.hook_attn_scores" for i in range(len(tiny_model.text.blocks))]
        with pytest.warns(DeprecationWarning, match="'hook_scores' is now 'hook_attn_scores'"):
            assert torch.equal(glob["text.blocks.0.attn.hook_scores"], new["text.blocks.0.attn.hook_attn_scores"])
        seen = []
        with pytest.warns(DeprecationWarning, match="fwd= is now fwd_hooks="):
            with tiny_model.hooks(fwd=[("vision.blocks.0.attn.hook_attn_scores", lambda t, h: seen.append(h.name))]):
                tiny_model(**x)
        assert seen == ["vision.blocks.0.attn.hook_attn_scores"]
        with pytest.warns(DeprecationWarning, match="bwd= is now bwd_hooks="):
            with tiny_model.hooks(bwd=[("vision.hook_pooled", lambda g, h: None)]):
                pass
        with pytest.raises(TypeError, match="give fwd_hooks= only"):
            with tiny_model.hooks(fwd_hooks=[("vision.hook_pooled", lambda t, h: None)], fwd=[]):
                pass
    with pytest.raises(KeyError, match="no hook point named 'vision.blocks.0.attn.hook_nothing'"):
        tiny_model.hook_point("vision.blocks.0.attn.hook_nothing")


def test_a_cache_shows_names_and_shapes_in_a_few_lines(demo):
    tok = demo.tokenize(["a red circle"])
    x = dict(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    _, cache = demo.run_with_cache(**x)
    text = repr(cache)
    lines = text.splitlines()
    assert len(lines) == 20 and lines[0] == f"Cache of {len(cache)} activations and 0 gradients:"
    assert "  vision.blocks.{0-3}.attn.hook_pattern: [1, 4, 65, 65]" in lines
    assert lines[-1].startswith("  ... and ") and "list(cache)" in lines[-1]
    _, cache = demo.run_with_cache(**x, names_filter=["vision.blocks.1.attn.hook_pattern",
                                                      "vision.blocks.3.attn.hook_pattern", "text.hook_pooled"])
    assert repr(cache).splitlines()[1:] == ["  vision.blocks.{1,3}.attn.hook_pattern: [1, 4, 65, 65]",
                                            "  text.hook_pooled: [1, 128]"]
