"""One model, several threads: every call sees only its own hooks and recordings."""

import threading

import pytest
import torch

import clipx
from floats import FLOAT32_RTOL, assert_float32_close
from inputs import texts_to_ids

CAPTIONS = [["a photo of a cat", "two birds"], ["a red dog on a blue sofa"], ["a diagram", "x", "a house"]]
N_THREADS, N_CALLS = 4, 3


def run_threads(fn, n_threads=N_THREADS):
    """fn(thread_index) in n threads started together; their results, re-raising the first error."""
    results, errors = [None] * n_threads, []
    start = threading.Barrier(n_threads)

    def work(k):
        try:
            start.wait()
            results[k] = fn(k)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def inputs(k):
    """Different images and captions for each thread, so crossed recordings cannot agree by chance."""
    pixel_values = torch.randn(1 + k % 2, 3, 32, 32, generator=torch.Generator().manual_seed(k))
    return pixel_values, CAPTIONS[k % len(CAPTIONS)]


@pytest.mark.parametrize("method", clipx.methods())
def test_explain_in_threads_equals_explain_in_sequence(model, method):
    expected = [clipx.explain(model, *inputs(k), method=method) for k in range(N_THREADS)]
    got = run_threads(lambda k: [clipx.explain(model, *inputs(k), method=method) for _ in range(N_CALLS)])
    for k in range(N_THREADS):
        for exp in got[k]:
            rtol = 1e-4 if method == "gradcam" else FLOAT32_RTOL  # see explain_checks.BATCHING_RTOL
            assert_float32_close(exp.image, expected[k].image, rtol, what=f"thread {k} image")
            if exp.text is not None:
                assert_float32_close(exp.text, expected[k].text, rtol, what=f"thread {k} text")
            assert_float32_close(exp.scores, expected[k].scores)
    assert not any(model.hook_point(n).active for n in model.hook_names())


def test_hooks_of_one_thread_do_not_touch_another(model):
    """An ablation in one thread leaves a plain forward in another thread alone, and caches stay apart."""
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = texts_to_ids()
    with torch.no_grad():
        clean = model(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image
    inside, outside = threading.Event(), threading.Event()

    def ablate():
        with model.hooks(fwd_hooks=[("vision.blocks.*.attn.hook_z", lambda z, hook: z * 0)]), torch.no_grad():
            inside.set()
            outside.wait(timeout=60)
            return model(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image

    def plain():
        inside.wait(timeout=60)
        try:
            with torch.no_grad():
                out, cache = model.run_with_cache(pixel_values=px, input_ids=ids, attention_mask=mask,
                                                  names_filter="vision.blocks.0.attn.hook_z")
            return out.logits_per_image, list(cache)
        finally:
            outside.set()

    ablated, (logits, cached) = run_threads(lambda k: (ablate, plain)[k](), 2)
    assert (ablated - clean).abs().max() > 1e-3
    assert torch.equal(logits, clean)
    assert cached == ["vision.blocks.0.attn.hook_z"]


def test_attention_blocks_switch_only_their_own_thread(model):
    """Two threads in `with model.attention(...)` blocks that exit out of order: each ran its own
    backend, the other thread's stayed, and the model is left as it was."""
    model.set_attention("sdpa")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with model.attention("eager"):
            first_in.set()
            second_in.wait(timeout=60)
            seen["first"] = model.attention_backend
        first_out.set()
        return model.attention_backend

    def second():
        first_in.wait(timeout=60)
        seen["second before"] = model.attention_backend
        with model.attention("eager"):
            second_in.set()
            first_out.wait(timeout=60)  # the first block exits while this one is open
            seen["second"] = model.attention_backend
        return model.attention_backend

    after = run_threads(lambda k: (first, second)[k](), 2)
    assert seen == {"first": "eager", "second before": "sdpa", "second": "eager"}
    assert after == ["sdpa", "sdpa"] and model.attention_backend == "sdpa"


def test_a_captum_layer_method_in_one_thread_leaves_the_others_alone(model):
    """Captum hooks a layer with torch module hooks, which every thread shares: the adapter gives it a layer
    only its own thread's forwards pass through, so the others' explanations and forwards stay their own."""
    from captum.attr import LayerGradCam, LayerIntegratedGradients

    methods = [LayerIntegratedGradients, LayerGradCam, "relevance", "relevance"]
    expected = [clipx.explain(model, *inputs(k), method=methods[k]) for k in range(N_THREADS)]
    got = run_threads(lambda k: [clipx.explain(model, *inputs(k), method=methods[k]) for _ in range(N_CALLS)])
    for k in range(N_THREADS):
        for exp in got[k]:
            assert_float32_close(exp.image, expected[k].image, what=f"thread {k} ({methods[k]}) image")
            assert_float32_close(exp.scores, expected[k].scores)
