"""MetaCLIP 2: parity with transformers' MetaClip2Model (random weights written by save_pretrained), its
text pooled at the first `</s>` by id (eos_token_id 2 is XLM-R's real EOS, not OpenAI's mistake), its
XLM-R tokenizer read from tokenizer.json, loading and saving, and every explanation method on it."""

from __future__ import annotations

import copy
import io
import json
import warnings

import pytest
import sentencepiece as spm
import torch
import transformers

import clipx
import clipx.assets
from clipx.families.metaclip_2 import MetaClip2Config
from clipx.preprocess.auto import load_tokenizer
from checkpoints import randomise
from explain_checks import FEWER_SAMPLES, check_batched_equals_single
from floats import assert_float32_close
from tokenizer_texts import varied_strings
from transformers_parity import assert_outputs_match, forward_both, load_strictly, load_weights_only

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=32)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
CAPTIONS = ["a photo of a cat", "a red dog on a blue sofa", "两只鸟"]
# XLM-R's special tokens in captions too: transformers keeps them whole
TEXTS = ["a cat</s>dog", "</s>", "<s> x", "<mask> y", "<unk>", "a<pad>b", "▁▁a", "  lead"] + varied_strings(1200, seed=1)


def save_xlmr_tokenizer(folder):
    """A small XLM-R tokenizer the way the hub's are made: a SentencePiece Unigram (with its precompiled
    NFKC normaliser) converted by transformers' XLMRobertaTokenizer, which writes tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(varied_strings(3000, seed=2)), model_writer=model, model_type="unigram",
        vocab_size=600, hard_vocab_limit=False, bos_id=0, pad_id=1, eos_id=2, unk_id=3, bos_piece="<s>",
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=0.995, num_threads=1,
        minloglevel=2)
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    (folder / "sentencepiece.bpe.model").unlink()  # what is left is tokenizer.json and its config
    tok.save_pretrained(folder)
    return tok


def hf_metaclip_2(vocab_size, text=TEXT, vision=VISION, seed=0, attn="eager"):
    torch.manual_seed(seed)
    config = transformers.MetaClip2Config(
        text_config=dict(text, vocab_size=vocab_size, bos_token_id=0, pad_token_id=1, eos_token_id=2),
        vision_config=vision, projection_dim=24, logit_scale_init_value=4.6)
    config._attn_implementation = attn
    return randomise(transformers.MetaClip2Model(config).eval(), seed)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-metaclip-2")
    hf_tok = save_xlmr_tokenizer(folder)
    hf = hf_metaclip_2(len(hf_tok))
    hf.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(folder)
    return folder, hf, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_strictly(checkpoint[0])


def inputs(hf_tok, n_images=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    enc = hf_tok(["a photo of a cat", "two dogs", "北京欢迎你 and a long caption", "x"], padding=True, truncation=True, max_length=32,
                 return_tensors="pt")
    return torch.rand(n_images, 3, 32, 32, generator=g) * 2 - 1, enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_parity_with_transformers(checkpoint, model, backend):
    _, hf, hf_tok = checkpoint
    px, ids, mask = inputs(hf_tok)
    # the largest id is not the EOS: CLIP's argmax rule would pool elsewhere
    assert not torch.equal(ids.argmax(-1), (ids == 2).int().argmax(-1))
    with torch.no_grad():
        ref = hf(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 output_attentions=True)
        with model.attention(backend):
            out = model(pixel_values=px, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
    # hidden states [0]: the blocks' input (after ln_pre in vision); [-1]: the last block's output, before the
    # final norm
    assert_outputs_match(out, ref, n_layers=2)


def test_pooled_at_the_first_eos_by_id(model):
    config = model.config
    assert isinstance(config, MetaClip2Config)
    assert config.text_config.eos_token_id == 2 and config.text_config.pooling == "eos"
    ids = torch.tensor([[0, 50, 60, 2, 1, 1], [0, 97, 2, 41, 2, 1]])
    assert model.text.pooled_positions(ids).tolist() == [3, 2]


def test_reads_eos_2_as_the_real_eos_even_without_pooling_field(checkpoint, tmp_path):
    """transformers' own config.json says eos_token_id 2 and nothing of pooling; CLIP's reader would take
    that for OpenAI's mistake (pooling="eos_argmax"). A config that does say pooling keeps it."""
    config = json.loads((checkpoint[0] / "config.json").read_text())
    assert "pooling" not in config["text_config"] and config["text_config"]["eos_token_id"] == 2
    assert MetaClip2Config.from_dict(config).text_config.pooling == "eos"
    config["text_config"]["pooling"] = "last"
    assert MetaClip2Config.from_dict(config).text_config.pooling == "last"


@pytest.mark.parametrize("padding, length", [("longest", None), ("max_length", 16), ("longest", 8)])
def test_tokenizer_matches_transformers(checkpoint, padding, length):
    hf_tok = checkpoint[2]
    assert type(hf_tok).__name__ == "XLMRobertaTokenizer"
    tok = load_tokenizer(checkpoint[0], context_length=length or 16)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(TEXTS) > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are among them
        enc = tok(TEXTS, padding=padding)
        ref = hf_tok(TEXTS, padding=padding, max_length=length or 16, truncation=True, return_tensors="pt")
    bad = [t for t, a, b in zip(TEXTS, enc.input_ids, ref.input_ids) if not torch.equal(a, b)]
    assert not bad, bad[:5]
    assert torch.equal(enc.attention_mask, ref.attention_mask)
    assert (enc.input_ids[:, 0] == 0).all()  # <s> first; truncation keeps </s> last
    long = enc.attention_mask.sum(1) == enc.input_ids.shape[1]
    assert (enc.input_ids[long, -1] == 2).all()


def test_tokenizer_shows_decodes_and_saves(checkpoint, model, tmp_path):
    hf_tok, tok = checkpoint[2], model.tokenizer
    enc = tok(["A photo of a cat!"])
    shown = tok.tokens(enc.input_ids)[0]
    assert shown[0] == "<s>" and shown[-1] == "</s>" and "".join(shown[1:-1]) == " A photo of a cat!"
    for text in ["A photo of a cat!", "Café au lait, 北京", ""]:
        ids = tok(text).input_ids[0]
        assert tok.decode(ids) == hf_tok.decode(ids.tolist(), skip_special_tokens=True)
    tok.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(again).__name__ == "XLMRobertaTokenizer"
    assert all(again(t).input_ids == hf_tok(t).input_ids for t in TEXTS[:300])
    assert torch.equal(load_tokenizer(tmp_path, 32)(TEXTS[:300]).input_ids, tok(TEXTS[:300]).input_ids)


def test_load_gives_model_processor_and_tokenizer(checkpoint, model):
    """clipx.load's model, fed by its own processor and tokenizer, scores as transformers does."""
    from PIL import Image

    _, hf, hf_tok = checkpoint
    assert model.processor is not None and model.tokenizer is not None
    image = Image.open(clipx.assets.demo_image("circle-and-square"))
    hf_processor = transformers.CLIPImageProcessor.from_pretrained(checkpoint[0])
    with torch.no_grad():
        ref = hf(pixel_values=hf_processor(image, return_tensors="pt").pixel_values,
                 **hf_tok(CAPTIONS, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits_per_image
        out = model(pixel_values=model.preprocess(image), **model.tokenize(CAPTIONS)).logits_per_image
    assert_float32_close(out, ref, rtol=1e-4, floor=1)


def test_save_pretrained_loads_back_in_transformers(checkpoint, model, tmp_path):
    _, hf, hf_tok = checkpoint
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "metaclip_2" and config["architectures"] == ["MetaClip2Model"]
    assert config["text_config"]["model_type"] == "metaclip_2_text_model"
    again = transformers.MetaClip2Model.from_pretrained(tmp_path).eval()
    px, ids, mask = inputs(hf_tok)
    for (name, a), (_, b) in zip(again.state_dict().items(), hf.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert_float32_close(again(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image,
                             rtol=1e-4, floor=1)
    back = clipx.load(tmp_path)
    assert back.config.text_config.pooling == "eos"
    for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(back.tokenizer(TEXTS[:50]).input_ids, model.tokenizer(TEXTS[:50]).input_ids)


@pytest.mark.parametrize("cls, tower", [(transformers.MetaClip2VisionModelWithProjection, "vision"),
                                        (transformers.MetaClip2VisionModel, "vision"),
                                        (transformers.MetaClip2TextModelWithProjection, "text"),
                                        (transformers.MetaClip2TextModel, "text")])
def test_tower_only_checkpoints(checkpoint, tmp_path, cls, tower):
    _, hf, hf_tok = checkpoint
    config = copy.deepcopy(getattr(hf.config, f"{tower}_config"))
    config.projection_dim = hf.config.projection_dim  # a sub-config carries a stale default
    ref = cls(config).eval()
    own = hf.state_dict()
    own.update({k.removeprefix(f"{tower}_model."): v for k, v in own.items()})  # a bare tower has no prefix
    ref.load_state_dict({k: v for k, v in own.items() if k in ref.state_dict()})
    ref.save_pretrained(tmp_path)
    model = load_weights_only(tmp_path)
    px, ids, mask = inputs(hf_tok)
    with torch.no_grad():
        if tower == "vision":
            out, got = ref(pixel_values=px), model.encode_image(px)
        else:
            out, got = ref(input_ids=ids, attention_mask=mask), model.encode_text(ids, mask)
    expected = getattr(out, f"{'image' if tower == 'vision' else 'text'}_embeds", None)
    assert_float32_close(got, out.pooler_output if expected is None else expected, floor=1)
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == f"metaclip_2_{tower}_model"
    again = cls.from_pretrained(tmp_path / "again")
    for k, v in ref.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@pytest.mark.slow
def test_vit_b_32_shapes(tmp_path):
    """A ViT-B/32's shapes (random weights): 12 layers of width 768 (vision) and 512 (text), 77 positions,
    50 tokens per image. The vocabulary is cut to 32,000 (XLM-V's 901,629 would take 1.8 GB for nothing
    but the embedding table, whose lookup is shape-independent)."""
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                max_position_embeddings=77)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32)
    hf = hf_metaclip_2(32000, text, vision, seed=3)
    hf.save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(4)
    px = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1
    ids = torch.randint(3, 32000, (3, 77), generator=g)
    ids[:, 0], ids[0, 20], ids[1, 76], ids[2, 5] = 0, 2, 2, 2
    mask = torch.ones_like(ids)
    mask[0, 21:], mask[2, 6:] = 0, 0
    out, ref = forward_both(load_weights_only(tmp_path), hf, pixel_values=px, input_ids=ids, attention_mask=mask)
    assert_outputs_match(out, ref, n_layers=12)


# --- every method on MetaCLIP 2 ------------------------------------------------------------------


@pytest.mark.parametrize("method", clipx.methods())
def test_every_method_batched_equals_single_pair(model, method):
    px = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    exp = check_batched_equals_single(model, px, CAPTIONS, method, **FEWER_SAMPLES.get(method, {}))
    assert exp.image.shape == (3, 3, 4, 4)


def test_cli_explain_on_a_metaclip_2_checkpoint(checkpoint, tmp_path):
    from PIL import Image

    from clipx.cli import main

    image = tmp_path / "img.png"
    Image.open(clipx.assets.demo_image("circle-and-square")).save(image)
    assert main(["explain", str(image), "a red circle", "一个蓝色方块", "--model", str(checkpoint[0]),
                 "--out", str(tmp_path / "out")]) == 0
    first, second = (Image.open(p) for p in sorted((tmp_path / "out").glob("*.png")))
    assert first.tobytes() != second.tobytes()
