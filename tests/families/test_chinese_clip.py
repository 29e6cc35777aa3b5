"""Chinese-CLIP: parity with transformers' ChineseCLIPModel (random weights written by save_pretrained),
its BERT text tower (post-norm blocks, embedding LayerNorm, token types, [CLS] readout) under BERT's key
names, its WordPiece tokenizer read from tokenizer.json, loading and saving, every explanation method,
and the refusal of methods that need a residual stream that adds up."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import transformers
from tokenizers import Tokenizer as Backend
from tokenizers import models, normalizers, pre_tokenizers, trainers

import clipx
import clipx.assets
from clipx.errors import CheckpointError
from clipx.families.chinese_clip import ChineseCLIPConfig
from clipx.preprocess.auto import load_tokenizer
from checkpoints import randomise
from explain_checks import FEWER_SAMPLES, check_batched_equals_single
from floats import assert_float32_close
from tokenizer_texts import varied_strings
from transformers_parity import assert_outputs_match, forward_both, load_strictly, load_weights_only

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=40, type_vocab_size=2)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
CAPTIONS = ["一只猫的照片", "a red dog on a blue sofa", "两只鸟"]
TEXTS = ["a cat[SEP]dog", "[CLS]", "[MASK] x", "[UNK]", "a[PAD]b", "##ing"] + varied_strings(1200, seed=1)


def save_bert_tokenizer(folder):
    """A small BERT WordPiece vocabulary, saved by transformers' BertTokenizer (tokenizer.json and its config)."""
    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=800, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    backend.train_from_iterator(varied_strings(3000, seed=2), trainer)
    transformers.BertTokenizer(vocab=backend.get_vocab()).save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def hf_chinese_clip(vocab_size, text=TEXT, vision=VISION, seed=0, attn="eager"):
    torch.manual_seed(seed)
    config = transformers.ChineseCLIPConfig(text_config=dict(text, vocab_size=vocab_size, pad_token_id=0),
                                            vision_config=vision, projection_dim=24, logit_scale_init_value=4.6)
    config._attn_implementation = attn
    return randomise(transformers.ChineseCLIPModel(config).eval(), seed)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-chinese-clip")
    hf_tok = save_bert_tokenizer(folder)
    hf = hf_chinese_clip(len(hf_tok))
    hf.save_pretrained(folder)
    transformers.ChineseCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(folder)
    return folder, hf, hf_tok


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_strictly(checkpoint[0])


def inputs(hf_tok, n_images=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    enc = hf_tok(["a photo of a cat", "两只狗", "北京欢迎你 and a long caption", "x"], padding=True, truncation=True,
                 max_length=40, return_tensors="pt")
    return torch.rand(n_images, 3, 32, 32, generator=g) * 2 - 1, enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_with_transformers(checkpoint, model, backend):
    _, hf, hf_tok = checkpoint
    px, ids, mask = inputs(hf_tok)
    assert not mask.all()  # padding, which a bidirectional tower must mask
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 output_attentions=True)
        with model.attention(backend):
            out = model(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
    # text hidden states [0]: after the embedding LayerNorm; [-1]: the last block's output = last_hidden_state
    assert_outputs_match(out, ref, n_layers=2)
    assert torch.equal(out.text_model_output.hidden_states[-1], out.text_model_output.last_hidden_state)


def test_the_text_tower_is_bert(model):
    text = model.text
    assert isinstance(model.config, ChineseCLIPConfig)
    assert text.config.norm_position == "post" and not text.config.causal and text.config.pooling == "first"
    assert text.ln_final is None and text.ln_embed is not None and text.token_type_embedding is not None
    assert text.config.hidden_act == "gelu" and text.config.layer_norm_eps == 1e-12 and text.proj.bias is None
    assert model.vision.config.norm_position == "pre"
    ids = torch.tensor([[2, 50, 60, 3, 0], [2, 97, 3, 0, 0]])
    assert text.pooled_positions(ids).tolist() == [0, 0]
    with torch.no_grad():  # bidirectional: a later token changes [CLS]
        a, b = model.text(torch.tensor([[2, 10, 11, 3], [2, 10, 12, 3]])).last_hidden_state[:, 0]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("padding, length", [("longest", None), ("max_length", 40), ("longest", 8)])
def test_tokenizer_matches_transformers(checkpoint, padding, length):
    hf_tok = checkpoint[2]
    assert type(hf_tok).__name__ == "BertTokenizer"
    tok = load_tokenizer(checkpoint[0], context_length=length or 40)
    assert (tok.bos_token, tok.eos_token, tok.pad_token_id) == ("[CLS]", "[SEP]", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are among them
        enc = tok(TEXTS, padding=padding)
        ref = hf_tok(TEXTS, padding=padding, max_length=length or 40, truncation=True, return_tensors="pt")
    bad = [t for t, a, b in zip(TEXTS, enc.input_ids, ref.input_ids) if not torch.equal(a, b)]
    assert not bad, bad[:5]
    assert torch.equal(enc.attention_mask, ref.attention_mask)
    assert (ref.token_type_ids == 0).all()  # one segment: what the text tower assumes
    long = enc.attention_mask.sum(1) == enc.input_ids.shape[1]
    assert (enc.input_ids[long, -1] == tok.eos_token_id).all()


def test_tokenizer_shows_decodes_and_saves(checkpoint, model, tmp_path):
    hf_tok, tok = checkpoint[2], model.tokenizer
    shown = tok.tokens(tok(["A photo of a cat!"]).input_ids)[0]
    assert shown[0] == "[CLS]" and shown[-1] == "[SEP]"
    for text in ["A photo of a cat!", "Café au lait, 北京", ""]:
        ids = tok(text).input_ids[0]
        assert tok.decode(ids) == hf_tok.decode(ids.tolist(), skip_special_tokens=True)
    tok.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(again).__name__ == "BertTokenizer"
    assert all(again(t).input_ids == hf_tok(t).input_ids for t in TEXTS[:300])


def test_load_gives_model_processor_and_tokenizer(checkpoint, model):
    """clipx.load's model, fed by its own processor and tokenizer, scores as transformers does."""
    from PIL import Image

    _, hf, hf_tok = checkpoint
    image = Image.open(clipx.assets.demo_image("circle-and-square"))
    hf_processor = transformers.AutoImageProcessor.from_pretrained(checkpoint[0])
    with torch.no_grad():
        ref = hf(pixel_values=hf_processor(image, return_tensors="pt").pixel_values,
                 **hf_tok(CAPTIONS, padding=True, return_tensors="pt")).logits_per_image
        out = model(pixel_values=model.preprocess(image), **model.tokenize(CAPTIONS)).logits_per_image
    assert_float32_close(out, ref, rtol=1e-4, floor=1)


def test_save_pretrained_loads_back_in_transformers(checkpoint, model, tmp_path):
    _, hf, hf_tok = checkpoint
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "chinese_clip" and config["architectures"] == ["ChineseCLIPModel"]
    assert config["text_config"]["model_type"] == "chinese_clip_text_model"
    again = transformers.ChineseCLIPModel.from_pretrained(tmp_path).eval()
    assert again.state_dict().keys() == hf.state_dict().keys()
    for name, a in again.state_dict().items():
        assert torch.equal(a, hf.state_dict()[name]), name
    px, ids, mask = inputs(hf_tok)
    with torch.no_grad():
        assert_float32_close(again(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             rtol=1e-4, floor=1)
    back = clipx.load(tmp_path)
    assert back.config.text_config == model.config.text_config
    for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_vision_tower_only_checkpoint(checkpoint, tmp_path):
    _, hf, _ = checkpoint
    ref = transformers.ChineseCLIPVisionModel(copy.deepcopy(hf.config.vision_config)).eval()
    ref.load_state_dict({k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()
                         if k.startswith("vision_model.")})
    ref.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no processor file beside a tower
        model = clipx.load(tmp_path)
    assert model.text is None
    px = inputs(checkpoint[2])[0]
    with torch.no_grad():
        assert_float32_close(model.encode_image(px), ref(pixel_values=px).pooler_output, floor=1)
    model.save_pretrained(tmp_path / "again")
    again = transformers.ChineseCLIPVisionModel.from_pretrained(tmp_path / "again")
    for k, v in ref.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_text_tower_only_checkpoint_is_refused_by_name(checkpoint, tmp_path):
    _, hf, _ = checkpoint
    transformers.ChineseCLIPTextModel(hf.config.text_config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="ChineseCLIPTextModel.*pooler"):
        clipx.load(tmp_path)


@pytest.mark.slow
def test_chinese_clip_vit_base_patch16_shapes(tmp_path):
    """OFA-Sys/chinese-clip-vit-base-patch16's shapes (random weights): ViT-B/16 (196 patches + class token),
    a 12-layer BERT-base text tower over bert-base-chinese's 21,128 tokens and 512 positions, 512-wide
    embeddings."""
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=512, type_vocab_size=2)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    torch.manual_seed(3)
    config = transformers.ChineseCLIPConfig(text_config=dict(text, vocab_size=21128), vision_config=vision,
                                            projection_dim=512)
    config._attn_implementation = "eager"
    hf = randomise(transformers.ChineseCLIPModel(config).eval(), 3)
    hf.save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(4)
    px = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1
    ids = torch.randint(105, 21128, (3, 52), generator=g)
    ids[:, 0], ids[0, 20], ids[1, 51], ids[2, 5] = 101, 102, 102, 102
    mask = torch.ones_like(ids)
    mask[0, 21:], mask[2, 6:] = 0, 0
    out, ref = forward_both(load_weights_only(tmp_path), hf, pixel_values=px, input_ids=ids, attention_mask=mask)
    assert_outputs_match(out, ref, n_layers=12)


# --- every method on Chinese-CLIP, and what needs a residual stream that adds up ---------------------

@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_batched_equals_single_pair(model, method):
    px = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    exp = check_batched_equals_single(model, px, CAPTIONS, method, **FEWER_SAMPLES.get(method, {}))
    assert exp.image.shape == (3, 3, 4, 4)


def test_text_decomposition_is_refused_for_post_norm_blocks(model):
    with pytest.raises(ValueError, match="decompose_text.*post-norm.*norm_position='post'"):
        clipx.decompose_text(model, CAPTIONS)
    px = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    parts = clipx.decompose(model, px)  # the vision tower is CLIP's, pre-norm: its parts add up
    with torch.no_grad():
        assert_float32_close(parts.total(), model.encode_image(px), floor=1)
    assert clipx.logit_lens(model, px, CAPTIONS).shape == (3, 2, 3)


def test_cli_explain_on_a_chinese_clip_checkpoint(checkpoint, tmp_path):
    from PIL import Image

    from clipx.cli import main

    image = tmp_path / "img.png"
    Image.open(clipx.assets.demo_image("circle-and-square")).save(image)
    assert main(["explain", str(image), "一个红色的圆", "a blue square", "--model", str(checkpoint[0]),
                 "--out", str(tmp_path / "out")]) == 0
    first, second = (Image.open(p) for p in sorted((tmp_path / "out").glob("*.png")))
    assert first.tobytes() != second.tobytes()
