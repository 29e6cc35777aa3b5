"""Inference computes residual sums and activations in place: the same bits, and nothing a hook
(ours or torch's) holds is ever overwritten."""

import pytest
import torch

from inputs import texts_to_ids


def inputs():
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = texts_to_ids()
    return dict(pixel_values=px, input_ids=ids, attention_mask=mask)


def run(model, grad: bool, **kwargs):
    with torch.set_grad_enabled(grad):
        return model(**inputs(), output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_in_place_inference_gives_the_same_bits(tiny_model, backend):
    tiny_model.set_attention(backend)
    assert tiny_model.vision.fast_path() is False  # grad on
    with torch.no_grad():
        assert tiny_model.vision.fast_path() is True
    fast, plain = run(tiny_model, grad=False), run(tiny_model, grad=True)
    assert torch.equal(fast.logits_per_image, plain.logits_per_image)
    for tower in ("vision_model_output", "text_model_output"):
        for a, b in zip(getattr(fast, tower).hidden_states, getattr(plain, tower).hidden_states):
            assert torch.equal(a, b.detach())  # every layer's residual stream, none overwritten later


NAMES = ["vision.blocks.0.hook_attn_out", "vision.blocks.0.attn.hook_out", "vision.blocks.1.hook_mlp_out",
         "text.blocks.0.mlp.hook_pre", "text.blocks.1.hook_resid_mid"]


def test_what_hook_points_record_is_never_overwritten(tiny_model):
    with torch.no_grad():
        _, fast = tiny_model.run_with_cache(**inputs(), names_filter=NAMES)
    with torch.enable_grad():
        _, plain = tiny_model.run_with_cache(**inputs(), names_filter=NAMES)
    for name in NAMES:
        assert torch.equal(fast[name], plain[name]), name


def test_what_torch_module_hooks_keep_is_never_overwritten(tiny_model):
    kept = {}
    modules = {"fc1": tiny_model.vision.blocks[0].mlp.fc1, "out_proj": tiny_model.text.blocks[1].attn.out_proj,
               "mlp": tiny_model.vision.blocks[1].mlp}
    handles = [m.register_forward_hook(lambda m, args, out, name=name: kept.__setitem__(name, (args[0], out)))
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            assert not tiny_model.vision.fast_path()
            tiny_model(**inputs())
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, module in modules.items():
            arg, out = kept[name]
            assert torch.equal(module(arg), out), name


def test_the_fast_path_is_one_switch_on_the_model(tiny_model):
    with torch.no_grad():
        fast = tiny_model(**inputs())
        tiny_model.fast_inference = False
        assert not tiny_model.fast_inference
        assert not tiny_model.vision.fast_path() and not tiny_model.text.fast_path()
        assert not tiny_model.text.skips_padding(inputs()["attention_mask"])
        slow = tiny_model(**inputs())
    assert torch.equal(fast.logits_per_image, slow.logits_per_image)
    with pytest.raises(TypeError, match="fast_inference is True or False"):
        tiny_model.fast_inference = 1
