"""clipx.interactions against the authors' own code: exclip 1.1's `OpenAIExplainer.explain` (installed with
`pip install --no-deps exclip==1.1`: its explanation module imports only torch and tqdm) on OpenAI's module
layout (tests/openai_layout.py) holding the same random weights clipx loads, at two layers, two images x two
captions, one pair per exclip call."""

from __future__ import annotations

import pytest
import torch

import clipx
from floats import max_relative_error
from open_clip_weights import open_clip_state, write_release
from openai_layout import OpenAICLIP

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning")]

VISION = {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "mlp_ratio": 2.0, "patch_size": 8}
# CLIP's vocabulary size: exclip writes its reference caption with CLIP's BOS and EOS ids
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 3}
CFG = {"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT, "quick_gelu": True}
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    state = open_clip_state(CFG)
    openai = OpenAICLIP(CFG)
    openai.load_state_dict(state)
    return clipx.load(write_release(tmp_path_factory.mktemp("openai-layout"), state, CFG)), openai.eval()


def inputs():
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, 32, 32, generator=g) * 0.5
    ids = torch.zeros(2, TEXT["context_length"], dtype=torch.long)  # OpenAI's tokenizer pads with 0
    for j, words in enumerate([4, 7]):
        ids[j, 0], ids[j, words + 1] = BOS, EOS
        ids[j, 1:words + 1] = torch.randint(1, BOS, (words,), generator=g)
    return pixels, ids


@pytest.mark.parametrize("layer", [0, 2])
def test_interactions_equal_exclips_on_the_same_weights(models, layer):
    from exclip.explanation import OpenAIExplainer

    model, openai = models
    pixels, ids = inputs()
    explainer = OpenAIExplainer(openai, image_dim=32, text_seq_len=TEXT["context_length"], device=torch.device("cpu"))
    ours = clipx.interactions(model, pixels, {"input_ids": ids}, text_layer=layer, image_layer=layer, n_steps=10,
                              text_reference=explainer.txt_ref[0])
    for i in range(2):
        for j in range(2):
            try:
                theirs, score, image_ref, text_ref, both_ref = explainer.explain(
                    ids[j:j + 1], pixels[i:i + 1], text_layer=layer, image_layer=layer, N=10, compute_lhs_terms=True)
            finally:  # exclip leaves its interpolation hooks on the module after a call
                explainer.reset_attribution()
            length = theirs.shape[0]  # exclip cuts the caption after its EOS
            assert max_relative_error(ours.values[i, j, :length], theirs) < 1e-4
            assert ours.values[i, j, length:].abs().max() == 0  # no token after the EOS reaches the pooled one
            terms = [ours.similarity, ours.image_reference_similarity, ours.text_reference_similarity,
                     ours.reference_similarity]
            assert max_relative_error(torch.stack([t[i, j] for t in terms]),
                                      torch.tensor([score, image_ref, text_ref, both_ref]), floor=1) < 1e-5
