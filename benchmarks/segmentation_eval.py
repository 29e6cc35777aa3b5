"""Explanation maps scored on the segmentation benchmarks of the explainability literature, read from your
own copy of the data: ImageNet-segmentation (`gtsegs_ijcv.mat`) and Pascal VOC 2012's segmentation masks.

    python benchmarks/segmentation_eval.py imagenet --mat gtsegs_ijcv.mat --model openai/clip-vit-base-patch16
        [--methods default legrad ...] [--limit N] [--out DIR] [--device cuda]
        [--classes imagenet | shapes | FILE] [--templates openai | default | shapes | "a photo of a {}." ...]
    python benchmarks/segmentation_eval.py voc --root VOCdevkit/VOC2012 --model ... [--split val]
    torchrun --standalone --nproc_per_node=8 benchmarks/segmentation_eval.py imagenet ...

ImageNet-segmentation as Chefer et al. (CVPR 2021) and TextSpan (Gandelsman et al., ICLR 2024) run it: the
image is resized to 224 x 224 (squashed, no crop) and its mask likewise by nearest neighbour, and the map
explains the model's own top class. For CLIP that is TextSpan's: the image classified zero-shot among the
1,000 ImageNet classes, each embedded through OpenAI's 80 templates, and the map explains the winning
class's embedding. Neither paper reads a class label from the file.

VOC: each class present in an image is one pair: the map explains "a photo of a {class}." (`--templates`)
and is scored against that class's pixels. Void pixels and the pixels the processor's centre crop cuts
off (the model never saw them) are not scored.

Scores (`clipx.segmentation`): pixel accuracy and mIoU (background, foreground) of the map binarised at its
mean, totalled over all pairs, and mAP, the mean of the pairs' average precisions; printed as percentages.
A random map and a centre prior on the methods' grid give the floor. Every image is an item of one
resumable run (`clipx.runs`) in `--out` (a temp folder if not given): killed, the same command resumes it;
under torchrun each process scores its share and rank 0 prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scoring import BASELINES, ROWS, baseline_maps, markdown_table, rows_named

import clipx
from clipx import segmentation, shapes, templates
from clipx.assets import IMAGENET_CLASSES
from clipx.runs.runner import init_distributed, run
from clipx.explain.embedding import explain_embedding
from clipx.model.inputs import embed_images, prepare_images, scores
from clipx.apps.zeroshot import zeroshot_classifier

SIZE = 224  # ImageNet-segmentation's input: image and mask squashed to 224 x 224
COLUMNS = ["pixel accuracy", "mIoU", "mAP"]


def on_image(exp, grid_map: torch.Tensor) -> torch.Tensor:
    """A map on the patch grid placed on the image as given, through the explanation's crop."""
    return dataclasses.replace(exp, image=grid_map[None, None]).pixel_maps(original=True)[0][0]


def score_pairs(model, image: Image.Image, pairs: list, rows: list, seed: int) -> dict[str, list[dict]]:
    """{row: [scores per pair]}; a pair is (class embedding, its name, bool mask, void pixels or None)."""
    results = defaultdict(list)
    for j, (embedding, label, mask, void) in enumerate(pairs):
        exps = {name: explain_embedding(model, [image], embedding, label, method, **options)
                for name, method, options in rows}
        first = next(iter(exps.values()))
        grid = tuple(first.image.shape[-2:])
        maps = {name: exp.pixel_maps(original=True)[0][0] for name, exp in exps.items()}
        maps.update({name: on_image(first, m) for name, m in baseline_maps(grid, 1000 * seed + j).items()})
        ignore = on_image(first, torch.ones(grid)) == 0  # outside the processor's crop: never seen
        if void is not None:
            ignore |= torch.from_numpy(void)
        for name, saliency in maps.items():
            results[name].append(segmentation.segmentation_scores(saliency, mask, ignore).to_json())
    return dict(results)


def imagenet_item(model, data, classifier, names: list[str], rows: list, index: int) -> dict:
    image, mask = data[index]
    image = image.resize((SIZE, SIZE), Image.BILINEAR)
    mask = np.array(Image.fromarray(mask).resize((SIZE, SIZE), Image.NEAREST))
    logits = scores(model, embed_images(model, prepare_images(model, [image])[0]), classifier)
    top = int(logits.argmax())
    return {"classes": [names[top]], **score_pairs(model, image, [(classifier[top], names[top], mask, None)],
                                                   rows, index)}


def voc_item(model, data, classifier, names: list[str], rows: list, index: int) -> dict:
    item = data[index]
    ids = [segmentation.VOC_CLASSES.index(c) for c in item.classes]  # class id - 1: the row of names, classifier
    pairs = [(classifier[k], names[k], item.mask(c), item.void) for k, c in zip(ids, item.classes)]
    return {"classes": [names[k] for k in ids], **score_pairs(model, item.image, pairs, rows, index)}


def class_names(spec: str | None, dataset: str) -> list[str]:
    """The classes' names in class-id order: the dataset's own (None), a named list, or a file of one a line."""
    voc = segmentation.VOC_CLASSES
    if spec is None and dataset == "voc":
        names = list(voc)
    elif spec in (None, "imagenet"):
        names = IMAGENET_CLASSES.read_text().splitlines()
    elif spec == "shapes":
        names = shapes.class_names()
    elif Path(spec).is_file():
        names = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    else:
        raise FileNotFoundError(f"--classes {spec}: neither 'imagenet', 'shapes' nor a file of class names")
    if dataset == "voc" and len(names) != len(voc):
        raise ValueError(f"--classes {spec}: VOC needs {len(voc)} names (its class ids 1..20 in order: "
                         f"{', '.join(voc)}), got {len(names)}")
    return names


def template_list(specs: list[str]) -> list[str]:
    """Named template sets (clipx.templates.NAMED) and literal templates, in order."""
    return [t for spec in specs for t in templates.NAMED.get(spec, [spec])]


def evaluate(model, name: str, args, folder: Path) -> tuple[dict[str, dict[str, float]], int]:
    """({row: {column: fraction}}, number of pairs), the images scored as one resumable run in `folder`."""
    rows = rows_named(args.methods)
    names = class_names(args.classes, args.dataset)
    prompts = template_list(args.templates or (["openai"] if args.dataset == "imagenet" else ["a photo of a {}."]))
    if args.dataset == "imagenet":
        data, item, source = segmentation.read_imagenet_segmentation(args.mat), imagenet_item, args.mat
    else:
        data, item, source = segmentation.read_voc_segmentation(args.root, args.split), voc_item, args.root
    n = len(data) if args.limit is None else min(args.limit, len(data))
    config = {"task": "segmentation_eval", "dataset": args.dataset, "source": str(Path(source).resolve()),
              "split": getattr(args, "split", None), "model": name, "fingerprint": model.fingerprint(),
              "rows": [[r, o] for r, _, o in rows], "classes": names, "templates": prompts,
              "size": SIZE if args.dataset == "imagenet" else None}

    @functools.cache  # once per process, and only in one that has images left to score
    def classifier() -> torch.Tensor:
        # one embedding per distinct name (OpenAI's ImageNet list repeats two), then one row per class id
        distinct = list(dict.fromkeys(names))
        return zeroshot_classifier(model, distinct, prompts)[[distinct.index(c) for c in names]]

    def process(batch):
        return [item(model, data, classifier(), names, rows, index) for index in batch]

    result = run(folder, list(range(n)), process, config, shard_size=50, batch_size=1)
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} images failed, the first: {result.errors[0]}")
    pairs = {row: [] for row in [r for r, _, _ in rows] + list(BASELINES)}
    for _, values, _ in result.results():
        for row, scored in pairs.items():
            scored += [segmentation.SegmentationScores.from_json(d) for d in values.get(row, [])]
    n_pairs = len(pairs[BASELINES[0]])
    if n_pairs == 0:
        raise ValueError(f"{source}: no pair to score among the first {n} images (no object class in any mask)")
    return {row: segmentation.aggregate(scored) for row, scored in pairs.items()}, n_pairs


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="dataset", required=True)
    imagenet = sub.add_parser("imagenet", help="ImageNet-segmentation, from gtsegs_ijcv.mat")
    imagenet.add_argument("--mat", type=Path, required=True, help="your copy of gtsegs_ijcv.mat")
    voc = sub.add_parser("voc", help="Pascal VOC 2012 segmentation")
    voc.add_argument("--root", type=Path, required=True, help="the VOC2012 folder (ImageSets/, JPEGImages/, ...)")
    voc.add_argument("--split", default="val")
    for p in (imagenet, voc):
        p.add_argument("--model", required=True, help="a hub id, a local checkpoint, or demo")
        p.add_argument("--methods", nargs="+", default=[r for r, _ in ROWS],
                       help="rows, default all: " + ", ".join(r for r, _ in ROWS))
        p.add_argument("--limit", type=int, help="only the first N images")
        p.add_argument("--out", type=Path, help="run folder; rerun to resume")
        p.add_argument("--device", help="default: cuda (this process's LOCAL_RANK under torchrun) where there is one")
        p.add_argument("--classes", help="class names: imagenet, shapes, or a file with one a line "
                                         "(VOC: its 20 classes in id order, to word the captions otherwise)")
        p.add_argument("--templates", nargs="+", help="openai, default, shapes, or templates with {} "
                                                      "(default: openai for imagenet, 'a photo of a {}.' for voc)")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be at least 1, got {args.limit}")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Scores every row and prints the table (rank 0); returns {row: {column: fraction}}."""
    args = parse(argv)
    init_distributed()
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    model = clipx.load(args.model, device=device)
    with tempfile.TemporaryDirectory() as temp:
        results, n_pairs = evaluate(model, args.model, args, args.out or Path(temp))
    if int(os.environ.get("RANK", "0")) == 0:
        what = "images, each explaining the model's top class" if args.dataset == "imagenet" else \
            "(image, class present) pairs"
        print(f"\n{args.dataset}: {n_pairs} {what}; {args.model}; percentages\n")
        print(markdown_table(["method", *COLUMNS], [[row] + [f"{100 * results[row][c]:.2f}" for c in COLUMNS]
                                                    for row in [*args.methods, *BASELINES]]))
    return results


if __name__ == "__main__":
    main()
