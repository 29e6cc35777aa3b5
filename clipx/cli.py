"""The `clipx` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .version import DISTRIBUTION, __version__


def score(args: argparse.Namespace) -> None:
    import torch

    from .io.loading import load
    from .preprocess.image import open_image

    image = open_image(_image(args.image))  # a bad image fails before the model loads
    model = load(args.model)
    try:
        model.set_attention(args.attention)
    except RuntimeError as e:  # flash where it cannot run: a choice the user can change, not a bug
        raise ValueError(f"--attention {args.attention}: {e}") from None
    pixel_values = model.preprocess([image])
    tok = model.tokenize(args.captions)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=tok.input_ids,
                       attention_mask=tok.attention_mask).logits_per_image[0]
    probs = model.probabilities(logits[None])[0]
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  {'prob':>6}")
    for caption, logit, prob in sorted(zip(args.captions, logits.tolist(), probs.tolist()), key=lambda r: -r[1]):
        print(f"{caption:<{width}}  {logit:8.3f}  {prob:6.3f}")


def explain(args: argparse.Namespace) -> None:
    from .explain import explain as run_explain
    from .explain import method_options
    from .io.loading import load
    from .preprocess.image import open_image
    from .runs.sources import SHARD_SUFFIXES

    # everything the user gave is checked before the model loads and runs
    args.image = _image(args.image)
    method_options(args.method)
    out = Path(args.out)
    _check_writable(out)
    if args.split is not None and not args.hf_dataset:
        raise ValueError("--split picks a split of an --hf-dataset")
    if args.hf_dataset or Path(args.image).is_dir() or args.image.endswith(SHARD_SUFFIXES):
        return explain_run(args)
    if args.image_column is not None or args.caption_column is not None:
        raise ValueError("--image-column and --caption-column are for a run over a dataset or shards, not one image")
    if not args.captions:
        raise ValueError("give one or more captions to explain the image against")
    original = open_image(args.image)  # upright and RGB, exactly what the processor sees
    model = load(args.model)
    exp = run_explain(model, [original], args.captions, method=args.method)
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  overlay")
    for j, caption in enumerate(args.captions):
        path = out / f"{j:02d}-{_slug(caption)}.png"
        _write_overlay(original, exp, 0, j, path)
        print(f"{caption:<{width}}  {exp.scores[0, j]:8.3f}  {path}")


def explain_run(args: argparse.Namespace) -> None:
    """A folder's images, WebDataset shards or a saved Hugging Face dataset, as a resumable run of shards in
    --out (the same command resumes it; under torchrun each process takes its share)."""
    from .runs.explain_dataset import explain_dataset
    from .io.loading import load
    from .runs.runner import init_distributed
    from .runs.sources import as_source

    init_distributed()  # under torchrun: this entry point joins the process group

    images = _saved_dataset(args.image, args.split) if args.hf_dataset else args.image
    # read before the model loads: a folder without images, a shard that is no tar, a column not there
    source = as_source(images, args.image_column, args.caption_column)
    result = explain_dataset(load(args.model), source, args.out, args.captions or None, method=args.method,
                             shard_size=args.shard_size, batch_size=args.batch_size)
    errors = result.errors
    print(f"{len(result) - len(errors)} of {len(result)} images explained into {args.out} "
          f"({result.manifest.n_shards} shards; read them with clipx.RunResult({str(args.out)!r}))")
    for item, error in errors:
        print(f"failed: {item}: {error}")


def _saved_dataset(path: str, split: str | None):
    """The dataset `save_to_disk` wrote into `path`: a Dataset, or a DatasetDict's `split`."""
    from .extras import require

    datasets = require("datasets", "--hf-dataset", "datasets")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--hf-dataset: no such folder: {path}")
    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None and len(dataset) == 1:
            split = next(iter(dataset))
        if split not in dataset:
            raise ValueError(f"{path} holds the splits {', '.join(dataset)}: pick one with --split"
                             + ("" if split is None else f" ({split} is not one of them)"))
        return dataset[split]
    if split is not None and split != str(dataset.split):
        raise ValueError(f"--split {split}: {path} holds one dataset (split {dataset.split}), not a DatasetDict")
    return dataset


def _write_overlay(original, exp, i: int, j: int, path: Path) -> None:
    """Image i's map for caption j over the original image, as a PNG."""
    from .files import write_bytes
    from .views.render import overlay, to_png

    # one caption's full-size maps at a time: a big photo's maps for every caption would not fit in memory
    write_bytes(to_png(overlay(original, exp.pixel_maps(original=True, text=j)[i][0])), path)  # whole or not at all


def _check_writable(out: Path) -> None:
    """Fails unless the overlays can be written into folder `out` (made later), writing nothing."""
    import tempfile

    existing = next(p for p in (out, *out.parents) if p.exists())  # "." at the latest
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file; --out names a folder for the overlays")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {existing} ({e.strerror or e}); "
                         "choose a folder you can write to") from None


def classify(args: argparse.Namespace) -> None:
    from .io.loading import load
    from .preprocess.image import open_image
    from .apps.zeroshot import prompts, zeroshot

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    templates = _templates(args.templates)
    prompts(classes, templates)  # bad classes or templates fail before the model loads
    images = [open_image(_image(path)) for path in args.images]
    result = zeroshot(load(args.model), images, classes, templates)
    # probs: a softmax over the classes, or each class's own sigmoid for a sigmoid-scoring model (SigLIP)
    image_width, class_width = max(len(p) for p in args.images), max(len(c) for c in classes)
    print(f"{'image':<{image_width}}  {'class':<{class_width}}  {'logit':>8}  {'prob':>6}")
    for i, path in enumerate(args.images):
        for name, logit, prob in result.top(i, args.top):
            print(f"{path:<{image_width}}  {name:<{class_width}}  {logit:8.3f}  {prob:6.3f}")


def _templates(spec: str | None) -> list[str] | None:
    """--templates: a name of clipx.templates, or a file with one template per line."""
    from .apps.templates import NAMED

    if spec is None:
        return None
    if spec in NAMED:
        return list(NAMED[spec])
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--templates {spec}: neither {', '.join(NAMED)} nor a file of templates (one per line)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def index(args: argparse.Namespace) -> None:
    from .apps.index import MANIFEST, Index
    from .io.loading import load

    out = Path(args.out)
    if (out / MANIFEST).exists():  # resume: only new and changed files are embedded
        idx = Index.load(out, model=load(args.model), model_name=args.model, check=False)
        if idx.source != os.path.abspath(args.folder):
            raise ValueError(f"--out {out} holds an index of {idx.source}, not of {args.folder}; choose another --out")
        change = idx.update(batch_size=args.batch_size)
        done = f"updated: {len(change['added'])} added, {len(change['changed'])} changed, {len(change['removed'])} removed"
    else:
        _check_writable(out)
        idx = Index.build(load(args.model), args.folder, model_name=args.model, batch_size=args.batch_size)
        done = "built"
    idx.save(out)
    print(f"{out}: {len(idx)} images, {len(idx.skipped)} skipped ({done})")


def search(args: argparse.Namespace) -> None:
    from .apps.index import Index
    from .io.loading import load
    from .preprocess.image import open_image

    from .explain import method_options

    if args.explain is not None:  # checked before the model loads
        method_options(args.method)
        _check_writable(Path(args.explain))
    idx = Index.load(args.index, model=None if args.model is None else load(args.model), model_name=args.model)
    hits = idx.search(args.caption, k=args.k, backend=args.backend)
    exp = hits.explain(method=args.method) if args.explain is not None and len(hits) else None
    print(f"{'rank':>4}  {'logit':>8}  {'path'}" + ("  overlay" if exp else ""))
    for i, hit in enumerate(hits):
        overlay_path = ""
        if exp is not None:
            overlay_path = Path(args.explain) / f"{hit.rank:02d}-{_slug(Path(hit.path).stem)}.png"
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            _write_overlay(open_image(hit.path), exp, i, 0, overlay_path)
        print(f"{hit.rank:>4}  {hit.score:8.3f}  {hit.path}" + (f"  {overlay_path}" if exp else ""))


def list_methods(args: argparse.Namespace) -> None:
    from .explain import method_options, methods

    for name in methods():
        options = ", ".join(f"{k}={v!r}" for k, v in method_options(name).items())
        print(f"{name:<22} {options}")


def lab(args: argparse.Namespace) -> None:
    import subprocess

    jupyter_args = args.jupyter_args
    # the tutorials when clipx runs from a checkout; an installed package has none, so JupyterLab starts here
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    if notebooks.is_dir() and not any(a.startswith(("--notebook-dir", "--ServerApp.root_dir")) for a in jupyter_args):
        jupyter_args = [f"--notebook-dir={notebooks}", *jupyter_args]
    raise SystemExit(subprocess.call([sys.executable, "-m", "jupyterlab", *jupyter_args]))


def _image(arg: str) -> str:
    """An image argument: a path, or demo:NAME for an image shipped with clipx (works from any folder)."""
    from .assets import DEMO_IMAGE_PREFIX, demo_image

    return str(demo_image(arg)) if arg.startswith(DEMO_IMAGE_PREFIX) and not Path(arg).exists() else arg


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:40] or "caption"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipx", description="Explainability kit for CLIP.")
    p.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score captions against an image")
    s.add_argument("image", help="an image file, or a shipped one: demo:shapes-scene")
    s.add_argument("captions", nargs="+", help="one or more captions")
    s.add_argument("--model", required=True, help="a hub id (openai/clip-vit-base-patch32), a folder or a state-dict file")
    s.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "flash"])
    s.set_defaults(run=score)
    e = sub.add_parser("explain", help="write one relevance overlay per caption and print the scores; for a "
                       "folder, a resumable run of map shards (under torchrun, split across processes)")
    e.add_argument("image", help="an image file (a shipped one: demo:shapes-scene); or for a run: a folder of images, WebDataset shards "
                   "(shards-{000..009}.tar) or, with --hf-dataset, a folder written by datasets' save_to_disk")
    e.add_argument("captions", nargs="*", help="one or more captions (a run over shards or a dataset may omit "
                   "them: each image's own, from its txt member or --caption-column)")
    e.add_argument("--model", default="demo", help="demo (shipped), a hub id, a folder or a state-dict file")
    e.add_argument("--method", default="relevance", help="an explanation method (clipx methods lists them)")
    e.add_argument("--out", default="clipx-out", help="folder for the overlay PNGs, or for a run")
    e.add_argument("--shard-size", type=int, default=256, help="a run: images per shard")
    e.add_argument("--batch-size", type=int, default=8, help="a run: images per explain call")
    e.add_argument("--hf-dataset", action="store_true", help="IMAGE is a Hugging Face dataset saved with save_to_disk")
    e.add_argument("--split", help="--hf-dataset: the split of a saved DatasetDict")
    e.add_argument("--image-column", help="--hf-dataset: the image column (default image); shards: the image "
                   "member's extension (default the first of jpg, jpeg, png, webp, ...)")
    e.add_argument("--caption-column", help="--hf-dataset: the caption column; shards: the caption member's "
                   "extension (default txt)")
    e.set_defaults(run=explain)
    c = sub.add_parser("classify", help="zero-shot: each image's best classes among --classes")
    c.add_argument("images", nargs="+", help="one or more image files (or shipped ones: demo:shapes-scene)")
    c.add_argument("--classes", required=True, help="class names, comma-separated: cat,dog,a red circle")
    c.add_argument("--templates", help="openai (80), default (7), shapes (the demo's), or a file of templates with "
                                       "{} (one a line); without it, the class names as they are")
    c.add_argument("--model", default="demo", help="demo (shipped), a hub id, a folder or a state-dict file")
    c.add_argument("--top", type=int, default=5, help="classes shown per image")
    c.set_defaults(run=classify)
    x = sub.add_parser("index", help="embed every image of a folder for search (again: only new and changed files)")
    x.add_argument("folder", help="a folder of images (searched recursively)")
    x.add_argument("--out", required=True, help="folder for the index (embeddings.safetensors, index.json)")
    x.add_argument("--model", default="demo", help="demo (shipped), a hub id, a folder or a state-dict file")
    x.add_argument("--batch-size", type=int, default=64)
    x.set_defaults(run=index)
    q = sub.add_parser("search", help="the images of an index that best match a caption")
    q.add_argument("index", help="a folder written by clipx index")
    q.add_argument("caption")
    q.add_argument("--k", type=int, default=10, help="how many hits")
    q.add_argument("--model", help="the model the index was built with (default: the one it names)")
    q.add_argument("--explain", metavar="DIR", help="write one overlay PNG per hit into DIR")
    q.add_argument("--method", default="relevance", help="the explanation method for --explain")
    q.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss"],
                   help="exact search with torch, or with FAISS (pip install clipx-lens[faiss]); auto: torch")
    q.set_defaults(run=search)
    sub.add_parser("methods", help="list the explanation methods and their options").set_defaults(run=list_methods)
    sub.add_parser("lab", help="start JupyterLab in the tutorial notebooks (from a checkout; elsewhere in the current "
                   "folder); other arguments go to JupyterLab: clipx lab --allow-root --port 8890").set_defaults(run=lab)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # JupyterLab's own options pass through `clipx lab`; any other command refuses what it does not know
    args, unknown = p.parse_known_args(argv)
    if unknown and args.command != "lab":
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.jupyter_args = unknown
    try:
        args.run(args)
    # the errors clipx's checks raise (CheckpointError is a ValueError, CheckpointNotFoundError an
    # OSError); anything else, torch's RuntimeErrors included, is a bug and keeps its traceback
    except (OSError, ValueError, TypeError) as e:
        print(f"clipx {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
