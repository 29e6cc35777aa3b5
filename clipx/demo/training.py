"""Training the demo models from scratch on `clipx.shapes` scenes, on a CPU.

    python -m clipx.demo.training --out clipx/data/shapes-clip --steps 3000 --batch 128 --seed 0
    python -m clipx.demo.training --family siglip --out clipx/data/shapes-siglip ...

The recipe is CLIP's at toy scale: a BPE trained on the caption grammar with CLIP's
conventions, OpenAI's initialisation, a learnable temperature starting at 1/0.07 and clamped
at 100, AdamW with linear warmup and cosine decay, and the symmetric cross-entropy over a
batch. A caption that is true of another image in the batch ("a red circle" when that image
has a red circle too) is taken out of that image's negatives, and that image out of the
caption's. `--family siglip` trains SigLIP's architecture (no class token, an attention-pooling
head, a bidirectional text tower pooled at its last position over captions padded to the context)
with its sigmoid loss: every image-caption pair is its own yes/no question, temperature 10 and
bias -10 at the start; a caption true of another image is a positive for it. At this scale (batch
128, 3,000 steps) the sigmoid loss alone stalls at telling colours apart (held-out zero-shot accuracy
0.16-0.20 after 700-1,000 steps in every variant tried: bias -10 or -5, temperature 10, 30 or 50,
learning rate 1e-3 or 3e-3, other true captions as positives or left out), while the same architecture
under the softmax loss passes 0.4 by step 800; so `--contrastive-steps N` trains the first N steps with
the softmax loss and the rest with the sigmoid loss, which then sets the bias and temperature the
model's sigmoid scores use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import shapes
from ..assets import DEMO_MODEL_DIR
from ..model.config import CLIPConfig, TextConfig, VisionConfig
from ..model.clip import CLIP
from ..preprocess.image import ImageProcessor
from ..families.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from ..preprocess.bpe import BOS, EOS, SPLIT, Tokenizer


FAMILIES = {"clip": (CLIPConfig, TextConfig, VisionConfig), "siglip": (SiglipConfig, SiglipTextConfig, SiglipVisionConfig)}


@dataclass(frozen=True)
class Architecture:
    family: str = "clip"      # or "siglip": its readout and its sigmoid loss
    image_size: int = shapes.IMAGE_SIZE
    patch_size: int = 8
    width: int = 128         # both towers
    layers: int = 4          # both towers
    heads: int = 4
    context_length: int = 16  # the longest caption has 13 tokens with BOS and EOS
    projection_dim: int = 128  # SigLIP: the vision width, where its pooling head ends


@dataclass
class Recipe:
    steps: int = 3000
    batch: int = 128
    seed: int = 0
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    eval_every: int = 250
    eval_scenes: int = 360  # single-object held-out scenes for the periodic zero-shot check
    contrastive_steps: int = 0  # sigmoid-scored models: the first steps under the softmax loss (see above)


@dataclass
class Result:
    model: CLIP
    losses: list[float]
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out zero-shot accuracy)


# --- tokenizer -----------------------------------------------------------------------------------

def train_tokenizer(context_length: int = Architecture.context_length) -> Tokenizer:
    """A BPE learned on the caption grammar, laid out like CLIP's vocabulary: the 256 byte symbols,
    the same with `</w>`, the learned merges, then BOS and EOS last. It is loaded back through
    `Tokenizer.from_pretrained` on vocab.json + merges.txt, so it gets exactly CLIP's pipeline
    (NFC, lowercase, CLIP's split, byte-level, BOS/EOS post-processor)."""
    # tokenizers' trainer numbers `end_of_word_suffix` symbols in hash-map order, which breaks ties
    # between merges differently from run to run (huggingface/tokenizers#1794). So each word's last
    # symbol is spelled as one private-use character while training, and as "<symbol></w>" after.
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    corpus = [" ".join(w[:-1] + chr(_FINAL + ord(w[-1])) for w, _ in split.pre_tokenize_str(caption))
              for caption in shapes.all_captions()]
    bpe = Backend(BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # vocab_size is a ceiling: merging stops once every word of the grammar is a single token
    bpe.train_from_iterator(corpus, BpeTrainer(vocab_size=4096, show_progress=False))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + sorted(bpe.get_vocab(), key=bpe.token_to_id):
        vocab.setdefault(_word_end(token), len(vocab))
    vocab.update({BOS: len(vocab), EOS: len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        merges = Path(tmp, "merges.txt").read_text(encoding="utf-8").splitlines()
        Path(tmp, "merges.txt").write_text("\n".join(_word_end(line) for line in merges) + "\n", encoding="utf-8")
        Path(tmp, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return Tokenizer.from_pretrained(tmp, context_length=context_length)


_FINAL = 0xE000  # private-use characters: chr(_FINAL + ord(c)) stands for c + "</w>"


def _word_end(text: str) -> str:
    return "".join(chr(ord(c) - _FINAL) + "</w>" if ord(c) >= _FINAL else c for c in text)


# --- model ---------------------------------------------------------------------------------------

def build_model(arch: Architecture, tokenizer: Tokenizer, seed: int) -> CLIP:
    """A freshly initialised model of `arch.family`, whose text config carries the tokenizer's ids."""
    if arch.family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {arch.family!r}")
    config_cls, text_cls, vision_cls = FAMILIES[arch.family]
    siglip = arch.family == "siglip"
    tower = dict(hidden_size=arch.width, intermediate_size=4 * arch.width, num_hidden_layers=arch.layers,
                 num_attention_heads=arch.heads)
    projection = {} if siglip else dict(projection_dim=arch.projection_dim)  # SigLIP's head is its projection
    config = config_cls(
        text_config=text_cls(**tower, **projection, vocab_size=tokenizer.vocab_size,
                             max_position_embeddings=arch.context_length, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=vision_cls(**tower, **projection, image_size=arch.image_size, patch_size=arch.patch_size),
        **({} if siglip else dict(projection_dim=arch.projection_dim, logit_scale_init_value=math.log(1 / 0.07))))
    torch.manual_seed(seed)
    model = CLIP(config)
    init_weights(model)
    # the family's preprocessing (SigLIP: mean = std = 0.5); the scenes are rendered at the model's size
    model.tokenizer, model.processor = tokenizer, ImageProcessor.from_dict(config.default_processor())
    return model


@torch.no_grad()
def init_weights(model: CLIP) -> None:
    """OpenAI's CLIP initialisation: normal with std width^-0.5 for attention inputs, embeddings of
    the image tower and projections; residual outputs scaled down by (2 * layers)^-0.5; biases zero.
    A pooling head (SigLIP's) is initialised as one more block, its probe as an embedding."""
    for tower in (model.vision, model.text):
        width, n = tower.config.hidden_size, len(tower.blocks)
        attn_std, out_std, fc_std = width ** -0.5, width ** -0.5 * (2 * n) ** -0.5, (2 * width) ** -0.5
        for block in [*tower.blocks, *([tower.head] if getattr(tower, "head", None) is not None else [])]:
            for linear, std in ((block.attn.q_proj, attn_std), (block.attn.k_proj, attn_std),
                                (block.attn.v_proj, attn_std), (block.attn.out_proj, out_std),
                                (block.mlp.fc1, fc_std), (block.mlp.fc2, out_std)):
                linear.weight.normal_(std=std)
                linear.bias.zero_()
        if tower.proj is not None:
            tower.proj.weight.normal_(std=width ** -0.5)
            if tower.proj.bias is not None:
                tower.proj.bias.zero_()
    model.text.token_embedding.weight.normal_(std=0.02)
    model.text.position_embedding.weight.normal_(std=0.01)
    vision = model.vision
    width = vision.config.hidden_size
    for embedding in (vision.class_embedding, vision.head.probe if vision.head is not None else None):
        if embedding is not None:
            embedding.normal_(std=width ** -0.5)
    vision.position_embedding.weight.normal_(std=width ** -0.5)
    if vision.patch_embedding.bias is not None:
        vision.patch_embedding.bias.zero_()


# --- objective and evaluation --------------------------------------------------------------------

def caption_hot(captions: list[str]) -> torch.Tensor:
    """Multi-hot [len(captions), classes] of the colour-shape pairs each caption names."""
    out = torch.zeros(len(captions), len(shapes.COLORS) * len(shapes.SHAPES))
    for i, caption in enumerate(captions):
        out[i, [shapes.class_index(c, s) for c, s in shapes.named(caption)]] = 1
    return out


def true_of(contents: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Bool [images, captions]: the image holds every colour-shape pair the caption names."""
    hot = caption_hot(captions)
    return (contents @ hot.T) == hot.sum(1)


def sigmoid_loss(logits_per_image: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: each pair a binary question, positive on the diagonal and wherever the caption is
    true of the image; summed over the pairs, averaged over the images."""
    n = logits_per_image.shape[0]
    positive = true | torch.eye(n, dtype=torch.bool)
    signs = positive.to(logits_per_image.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits_per_image).sum() / n


def contrastive_loss(logits_per_image: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy, pairs (i, i) positive; pairs (i, j) that are true as well are no negatives."""
    n = logits_per_image.shape[0]
    diagonal = torch.eye(n, dtype=torch.bool)
    logits = logits_per_image.masked_fill(true & ~diagonal, float("-inf"))
    target = torch.arange(n)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Single-object images against all colour x shape captions ("a red circle")."""
    tok = model.tokenize(shapes.class_names())
    text = F.normalize(model.encode_text(tok.input_ids, tok.attention_mask), dim=-1)
    image = torch.cat([F.normalize(model.encode_image(p), dim=-1) for p in pixels.split(250)])
    return ((image @ text.T).argmax(1) == labels).float().mean().item()


def single_object_set(n: int, seed: int, model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out single-object scenes, preprocessed for `model`: pixel_values and their class indices."""
    data = shapes.ShapesDataset(n, seed, split="test", n_objects=1, size=model.config.vision_config.image_size,
                                image_processor=model.processor)
    scenes = [data.scene(i) for i in range(n)]
    pixels = torch.stack([data.processor(sc.image)[0] for sc in scenes])
    return pixels, torch.tensor([shapes.class_index(sc.objects[0].color, sc.objects[0].shape) for sc in scenes])


@torch.no_grad()
def two_object_retrieval(model: CLIP, n: int, seed: int, batch: int = 100) -> float:
    """Held-out two-object scenes, each captioned "<one> and <other>": the share of images whose
    best caption among the batch's is true of them (another scene with the same pair counts too)."""
    data = shapes.ShapesDataset(n, seed + 1, split="test", n_objects=2, size=model.config.vision_config.image_size)
    hits = 0
    for start in range(0, n, batch):
        scenes = [data.scene(i) for i in range(start, min(start + batch, n))]
        captions = [f"{shapes.describe(sc.objects[0])} and {shapes.describe(sc.objects[1])}" for sc in scenes]
        tok = model.tokenize(captions)
        logits = model(pixel_values=model.preprocess([sc.image for sc in scenes]),
                       input_ids=tok.input_ids, attention_mask=tok.attention_mask).logits_per_image
        true = true_of(torch.stack([shapes.contents(sc.objects) for sc in scenes]), captions)
        hits += int(true[torch.arange(len(scenes)), logits.argmax(1)].sum())
    return hits / n


def evaluate(model: CLIP, seed: int, n: int = 1000) -> dict[str, float]:
    model.eval()
    pixels, labels = single_object_set(n, seed, model)
    return {"zero_shot_single_object": zero_shot_accuracy(model, pixels, labels),
            "two_object_retrieval": two_object_retrieval(model, n, seed)}


# --- training --------------------------------------------------------------------------------------

def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)))


def train(recipe: Recipe = Recipe(), arch: Architecture = Architecture(), progress: bool = True) -> Result:
    model = build_model(arch, train_tokenizer(arch.context_length), recipe.seed)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]  # not gains, biases, class embedding, temperature
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    sigmoid_from = recipe.contrastive_steps if model.config.scoring == "sigmoid" else recipe.steps + 1
    data = shapes.ShapesDataset(recipe.steps * recipe.batch, recipe.seed, size=arch.image_size, with_contents=True,
                                image_processor=model.processor)
    held_out = single_object_set(recipe.eval_scenes, recipe.seed, model) if recipe.eval_every else None

    result = Result(model, [], 0.0)
    start = time.perf_counter()
    bar = tqdm(DataLoader(data, batch_size=recipe.batch), total=recipe.steps, disable=not progress, desc="training")
    for step, (pixels, captions, contents) in enumerate(bar, 1):
        tok = model.tokenize(list(captions))
        out = model(pixel_values=pixels, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        objective = sigmoid_loss if step > sigmoid_from else contrastive_loss
        loss = objective(out.logits_per_image, true_of(contents, list(captions)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100))
        result.losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if held_out is not None and (step % recipe.eval_every == 0 or step == recipe.steps):
            model.eval()
            accuracy = zero_shot_accuracy(model, *held_out)
            model.train()
            result.history.append((step, accuracy))
            if progress:
                tqdm.write(f"step {step}: loss {loss.item():.3f}, held-out zero-shot accuracy {accuracy:.3f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


# --- saving ----------------------------------------------------------------------------------------

def model_card(recipe: Recipe, arch: Architecture, result: Result, scores: dict[str, float], command: str,
               threads: int) -> str:
    params = sum(p.numel() for p in result.model.parameters())
    grid = arch.image_size // arch.patch_size
    history = "\n".join(f"| {step} | {accuracy:.3f} |" for step, accuracy in result.history)
    counts = {1: "one object", 2: "two", 3: "three"}
    mix = ", ".join(f"{p:.0%} {counts[n]}" for n, p in zip(shapes.OBJECT_COUNTS, shapes.OBJECT_COUNT_P))
    siglip = arch.family == "siglip"
    if siglip:
        name, demo, peer = "shapes-siglip", "demo-siglip", "SiglipModel"
        vision_readout = "no class token; pooled by an attention-pooling head (a learned probe over the tokens, then an MLP)"
        text = (f"bidirectional transformer, {arch.layers} layers, width {arch.width}, {arch.heads} heads, captions padded "
                f"to {arch.context_length} positions (the padding is input), pooled at the last position through a linear head")
        joint = "cosine x exp(scale) + bias (init 10 and -10, scale clamped at 100), a sigmoid per pair; gelu (tanh)"
        objective = ("SigLIP's sigmoid loss: every image-caption pair of the batch a binary question, positive on the "
                     "diagonal and where the caption is true of the image")
        if recipe.contrastive_steps:
            objective = (f"the softmax contrastive loss for the first {recipe.contrastive_steps} steps (alone, the "
                         f"sigmoid loss stalls at colours at this scale: see `clipx.demo.training`), then {objective}")
    else:
        name, demo, peer = "shapes-clip", "demo", "CLIPModel"
        vision_readout = "pooled at the class token"
        text = (f"causal transformer, {arch.layers} layers, width {arch.width}, {arch.heads} heads, "
                f"{arch.context_length} positions, pooled at the first EOS")
        joint = f"projection to {arch.projection_dim}, learnable temperature (init 1/0.07, clamped at 100), quick_gelu"
        objective = "symmetric cross-entropy; captions true of another image of the batch are left out of its negatives"
    return f"""# {name}: a clipx demo model

A {params / 1e6:.2f}M-parameter {"SigLIP" if siglip else "CLIP"} trained from scratch by clipx on synthetic scenes of
`clipx.shapes` (1-3 flat-coloured shapes on flat, noisy or textured backgrounds, objects with
exact masks). It loads offline with `clipx.load("{demo}")` through the same code path as a hub
checkpoint, and transformers' `{peer}.from_pretrained` reads the folder too.

## Held-out scores

Fresh scenes (`ShapesDataset(..., split="test")`, never seen in training), seed {recipe.seed}:

| test | score |
|---|---|
| zero-shot accuracy, 1,000 single-object scenes, among all {len(shapes.COLORS) * len(shapes.SHAPES)} colour x shape captions ("a red circle") | {scores["zero_shot_single_object"]:.3f} |
| two-object scenes, 1,000 in batches of 100, captioned "<one> and <other>": the best caption among the batch's is true of the image | {scores["two_object_retrieval"]:.3f} |

## Model

| | |
|---|---|
| vision | ViT, {arch.image_size} px images, {arch.patch_size} px patches ({grid}x{grid} grid), {arch.layers} layers, width {arch.width}, {arch.heads} heads, {vision_readout} |
| text | {text} |
| joint | {joint} |
| tokenizer | byte-level BPE ({result.model.tokenizer.vocab_size} tokens) trained with `tokenizers` on the caption grammar, CLIP's conventions: NFC, lowercase, CLIP's split, `</w>` word ends, `<|startoftext|>` / `<|endoftext|>` added, padding with `<|endoftext|>` |
| preprocessing | {"SigLIP's (resize without crop, mean = std = 0.5)" if siglip else "CLIP's (resize, centre crop, OpenAI mean/std)"} at {arch.image_size} px |

## Training

```
{command}
```

- data: a fresh scene for every example ({recipe.steps} steps x batch {recipe.batch} = {recipe.steps * recipe.batch:,} scenes):
  {mix}, {shapes.OVERLAP_P:.0%} of them with occlusion; captions name one object
  ("a red circle", "a picture with ...", "there is ..."), two objects and their relation
  ("... left of / right of / above / below ..."), or several objects ("... and ...").
- objective: {objective}.
- optimiser: AdamW (lr {recipe.lr}, betas 0.9 / 0.98, eps 1e-6, weight decay {recipe.weight_decay} on matrices),
  {recipe.warmup} warmup steps, cosine decay to zero; OpenAI's initialisation; seed {recipe.seed}.
- hardware: CPU, {threads} threads; wall time {result.seconds / 60:.1f} min ({result.seconds / recipe.steps:.2f} s/step),
  final training loss {sum(result.losses[-50:]) / len(result.losses[-50:]):.3f} (mean of the last 50 steps).

Held-out zero-shot accuracy during training ({recipe.eval_scenes} single-object scenes):

| step | accuracy |
|---|---|
{history}
"""


def save(result: Result, folder: Path, recipe: Recipe, arch: Architecture, command: str, threads: int) -> dict:
    """Write the model in the hub's layout, then score the written folder itself and add the model card."""
    from ..io.loading import load

    result.model.save_pretrained(folder)
    scores = evaluate(load(folder), recipe.seed)
    (folder / "README.md").write_text(model_card(recipe, arch, result, scores, command, threads), encoding="utf-8")
    return scores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clipx.demo.training", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    for name, default in asdict(Recipe()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    for name, default in asdict(Architecture()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = vars(p.parse_args(argv))
    torch.set_num_threads(args["threads"])
    recipe = Recipe(**{k: args[k] for k in asdict(Recipe())})
    arch = Architecture(**{k: args[k] for k in asdict(Architecture())})
    result = train(recipe, arch)
    defaults = {**asdict(Recipe()), **asdict(Architecture())}
    shown = {"out": args["out"], "steps": recipe.steps, "batch": recipe.batch, "seed": recipe.seed,
             **{k: args[k] for k in defaults if args[k] != defaults[k]}}
    # on a shared machine OpenMP threads that spin-wait slow each other down several times over
    env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_WAIT_POLICY",) if k in os.environ)
    command = env + "python -m clipx.demo.training " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in shown.items())
    scores = save(result, args["out"], recipe, arch, command, args["threads"])
    print(json.dumps({**scores, "minutes": round(result.seconds / 60, 1)}))


if __name__ == "__main__":
    main()
