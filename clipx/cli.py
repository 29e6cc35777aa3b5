"""The `clipx` command."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    # a softmax over the captions (CLIP) or each caption's own sigmoid (SigLIP): the header says which
    scoring = model.config.scoring
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  {scoring:>7}")
    for caption, logit, prob in zip(args.captions, logits.tolist(), probs.tolist()):  # in the order given
        print(f"{caption:<{width}}  {logit:8.3f}  {prob:7.3f}")


def explain(args: argparse.Namespace) -> None:
    from .runs.sources import SHARD_SUFFIXES

    # everything the user gave is checked before the model loads and runs
    args.image = _image(args.image)
    if args.method is not None:
        _options(args.opt, args.method)
    if args.split is not None and not args.hf_dataset:
        raise ValueError("--split picks a split of an --hf-dataset")
    many = args.hf_dataset or Path(args.image).is_dir() or args.image.endswith(SHARD_SUFFIXES)
    if args.png and not many:
        raise ValueError("--png is for a folder, shards or a dataset: one image always gives PNGs")
    args.out = Path(args.out or ("clipx-run" if many and not args.png else "clipx-out"))
    _check_writable(args.out)
    if many:
        return explain_pngs(args) if args.png else explain_run(args)
    if args.image_column is not None or args.caption_column is not None:
        raise ValueError("--image-column and --caption-column are for a run over a dataset or shards, not one image")
    if not args.captions:
        raise ValueError("give one or more captions to explain the image against")
    explain_one(args)


def explain_one(args: argparse.Namespace) -> None:
    from .explain import explain as run_explain
    from .io.loading import load
    from .preprocess.image import open_image

    original = open_image(args.image)  # upright and RGB, exactly what the processor sees
    model = load(args.model)
    method, options = _method(args, model)
    exp = run_explain(model, [original], args.captions, method=method, **options)
    args.out.mkdir(parents=True, exist_ok=True)
    print(_described(exp))
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  overlay")
    for caption, logit, path in _write_overlays(original, exp, args.out, model.config.scoring, args.bare):
        print(f"{caption:<{width}}  {logit:8.3f}  {path}")


def explain_pngs(args: argparse.Namespace) -> None:
    """--png: each image of a folder, shards or a saved dataset explained against the captions (or its own),
    one overlay PNG per image and caption in --out/<image>/; an image that fails is reported, the rest go on."""
    from .explain import explain as run_explain
    from .explain import method_options
    from .io.loading import load
    from .runs.sources import as_source, caption_list

    source = as_source(_saved_dataset(args.image, args.split) if args.hf_dataset else args.image,
                       args.image_column, args.caption_column)
    if not args.captions and not source.has_captions:
        raise ValueError(f"no captions given, and {args.image} has none of its own: give captions after the images")
    model = load(args.model)
    method, options = _method(args, model)
    print(f"{len(source.items)} images; {method}: {_listed(method_options(method, options))}")
    print("image  caption  logit  overlay")
    failed, written = [], 0
    root = Path(args.image) if Path(args.image).is_dir() and not args.hf_dataset else None
    for item in source.items:
        name = _item_name(item, root)
        try:
            sample = source.load(item)
            captions = args.captions or caption_list(sample.captions, f"the captions of {name}")
            exp = run_explain(model, [sample.image], captions, method=method, **options)
        except (OSError, ValueError, TypeError) as e:  # this image's fault: report it, go on with the rest
            failed.append((name, e))
            continue
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for caption, logit, path in _write_overlays(sample.image, exp, args.out / name, model.config.scoring, args.bare):
            written += 1
            print(f"{name}  {caption}  {logit:.3f}  {path}")
    print(f"{len(source.items) - len(failed)} of {len(source.items)} images explained: {written} PNGs in {args.out}")
    for name, error in failed:
        print(f"failed: {name}: {error}")


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
    model = load(args.model)
    method, options = _method(args, model)
    result = explain_dataset(model, source, args.out, args.captions or None, method=method,
                             shard_size=args.shard_size, batch_size=args.batch_size, **options)
    errors = result.errors
    print(f"{len(result) - len(errors)} of {len(result)} images explained into {args.out} with {method} "
          f"({result.manifest.n_shards} shards; read them with clipx.RunResult({str(args.out)!r}))")
    for item, error in errors:
        print(f"failed: {item}: {error}")


def _method(args: argparse.Namespace, model) -> tuple[str, dict[str, Any]]:
    """The method --method names, or the model's default, and the options --opt gives it."""
    from .explain import default_method

    method = args.method or default_method(model)
    return method, _options(args.opt, method)


def _options(specs: list[str], method: str) -> dict[str, Any]:
    """--opt NAME=VALUE, each VALUE a Python literal (0, -1, 1.5, None, True, (2, 2), 'text'; a bare word is
    a string: variant=maskclip) -> the options for `method`; an error names the --opt at fault and lists
    the method's options."""
    import ast

    from .explain import method_options

    allowed = method_options(method)
    listed = f"{method}'s options are: {_listed(allowed) or 'none'}"
    options: dict[str, Any] = {}
    for spec in specs:
        name, eq, text = (part.strip() for part in spec.partition("="))
        if not eq or not name:
            raise ValueError(f"--opt {spec}: write an option as NAME=VALUE, e.g. start_layer=0; {listed}")
        if name not in allowed:
            raise ValueError(f"--opt {spec}: {method} has no option {name!r}; {listed}")
        if name in options:
            raise ValueError(f"--opt {spec}: {name} is given twice")
        try:
            options[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if not text.isidentifier():
                raise ValueError(f"--opt {spec}: {text!r} is not a Python literal (a number, None, True, "
                                 f"(2, 2), 'text'); {listed}") from None
            options[name] = text
    return options


def _listed(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _described(exp) -> str:
    """The method an Explanation ran and every option it ran with, as it recorded them."""
    return f"{exp.method}: {_listed(exp.options) or 'no options'}"


def _item_name(item: Any, root: Path | None) -> str:
    """A relative path for an item's overlays: an image file's path under the folder `root`, its suffix
    kept apart (a.png -> a_png: a.jpg beside it is another image); a WebDataset key; a dataset's row. Parts
    that could leave --out ("..", "/") become "_"."""
    if isinstance(item, int):
        return f"row-{item:06d}"
    if isinstance(item, (list, tuple)):  # [shard, key]
        name = Path(item[1])
    else:
        name = Path(item).relative_to(root) if root is not None else Path(Path(item).name)
        name = name.with_name(name.name.replace(".", "_"))
    parts = ["".join(c if c.isalnum() or c in "-_." else "_" for c in part) for part in name.parts]
    return str(Path(*[part if part.strip(".") else "_" for part in parts]))


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


def _write_overlays(original, exp, folder: Path, scoring: str | None = None,
                    bare: bool = False) -> Iterator[tuple[str, float, Path]]:
    """The one image's overlay for each caption into `folder` (NN-caption.png): (caption, logit, path) of each."""
    for j, caption in enumerate(exp.texts):
        path = folder / f"{j:02d}-{_slug(caption)}.png"
        _write_overlay(original, exp, 0, j, path, scoring, bare)
        yield caption, exp.scores[0, j].item(), path


def _write_overlay(original, exp, i: int, j: int, path: Path, scoring: str | None = None, bare: bool = False) -> None:
    """Image i's map for caption j over the original image, as a PNG: titled with the caption, its score (and
    probability by `scoring`) and the method with its options, the crop the model saw outlined, the colour
    bar beneath; `bare`: the overlay alone, the size of the original."""
    from .explain.legend import image_scale
    from .files import write_bytes
    from .views.render import explanation_card, overlay, to_png

    if bare:  # one caption's full-size maps at a time: a big photo's maps for every caption would not fit in memory
        picture = overlay(original, exp.pixel_maps(original=True, text=j)[i][0], scale=image_scale(exp))
    else:
        picture = explanation_card(original, exp, i, j, scoring)
    write_bytes(to_png(picture), path)  # whole or not at all


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
    model = load(args.model)
    result = zeroshot(model, images, classes, templates)
    # a softmax over the classes, or each class's own sigmoid for a sigmoid-scoring model (SigLIP)
    scoring = model.config.scoring
    image_width, class_width = max(len(p) for p in args.images), max(len(c) for c in classes)
    print(f"{'image':<{image_width}}  {'class':<{class_width}}  {'logit':>8}  {scoring:>7}")
    for i, path in enumerate(args.images):  # the images in the order given, each one's best classes first
        for name, logit, prob in result.top(i, args.top):
            print(f"{path:<{image_width}}  {name:<{class_width}}  {logit:8.3f}  {prob:7.3f}")


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

    if args.explain is not None:  # checked before the model loads
        if args.method is not None:
            _options(args.opt, args.method)
        _check_writable(Path(args.explain))
    elif args.method is not None or args.opt:
        raise ValueError("--method and --opt choose how --explain DIR draws its overlays: give --explain DIR")
    idx = Index.load(args.index, model=None if args.model is None else load(args.model), model_name=args.model)
    hits = idx.search(args.caption, k=args.k, backend=args.backend)
    exp = None
    if args.explain is not None and len(hits):
        method, options = _method(args, idx.model)
        exp = hits.explain(method=method, **options)
        print(_described(exp))
    print(f"{'rank':>4}  {'logit':>8}  {'path'}" + ("  overlay" if exp else ""))
    for i, hit in enumerate(hits):
        overlay_path = ""
        if exp is not None:
            overlay_path = Path(args.explain) / f"{hit.rank:02d}-{_slug(Path(hit.path).stem)}.png"
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            _write_overlay(open_image(hit.path), exp, i, 0, overlay_path, idx.model.config.scoring)
        print(f"{hit.rank:>4}  {hit.score:8.3f}  {hit.path}" + (f"  {overlay_path}" if exp else ""))


def list_methods(args: argparse.Namespace) -> None:
    from .explain import default_method, method_options, methods
    from .io.loading import load

    default = default_method(load(args.model))
    for name in methods():
        print(f"{name:<22} {_listed(method_options(name))}")
    print(f"\n{args.model}'s default: {default} (relevance where a class token reads the image out, as in CLIP; "
          "integrated_gradients where an attention-pooling head does, as in SigLIP)")


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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every option's default, where there is one to show and the help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


MODEL_HELP = "demo (shipped), demo-siglip, a hub id (openai/clip-vit-base-patch32), a folder or a state-dict file"
METHOD_HELP = ("an explanation method (clipx methods lists them); default: the model's own, relevance through all "
               "layers for CLIP, integrated_gradients for SigLIP (default_method in clipx.explain)")
OPT_HELP = ("an option of the method as NAME=VALUE, VALUE a Python literal (a bare word is a string); repeat for "
            "more: --opt start_layer=-1 --opt exclude_high_norm=3.0 (clipx methods lists each method's options)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipx", description="Explainability kit for CLIP.", formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, description: str | None = None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=description or help, formatter_class=_Help)
        c.set_defaults(run=run)
        return c

    s = command("score", score, "score captions against an image (a softmax over them for CLIP, a sigmoid each "
                                "for SigLIP), in the order given")
    s.add_argument("image", help="an image file, or a shipped one: demo:shapes-scene")
    s.add_argument("captions", nargs="+", help="one or more captions")
    s.add_argument("--model", default="demo", help=MODEL_HELP)
    s.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "flash"], help="the attention backend")
    e = command("explain", explain, "explain an image against captions: one overlay PNG per caption, and the "
                "scores; for a folder, shards or a dataset, a resumable run of map shards (under torchrun, split "
                "across processes), or with --png one overlay per image and caption")
    e.add_argument("image", help="an image file (a shipped one: demo:shapes-scene); or a folder of images, WebDataset "
                   "shards (shards-{000..009}.tar) or, with --hf-dataset, a folder written by datasets' save_to_disk")
    e.add_argument("captions", nargs="*", help="one or more captions (shards or a dataset may omit them: each "
                   "image's own, from its txt member or --caption-column)")
    e.add_argument("--model", default="demo", help=MODEL_HELP)
    e.add_argument("--method", help=METHOD_HELP)
    e.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help=OPT_HELP)
    e.add_argument("--out", help="folder for the overlay PNGs (default clipx-out), or for a run of shards "
                                 "(default clipx-run)")
    e.add_argument("--png", action="store_true", help="a folder, shards or a dataset: one overlay PNG per image "
                   "and caption, in --out/<image>/, instead of a run of shards")
    e.add_argument("--bare", action="store_true", help="write each overlay alone, the size of the image: no "
                   "title, colour bar or crop outline")
    e.add_argument("--shard-size", type=int, default=256, help="a run: images per shard")
    e.add_argument("--batch-size", type=int, default=8, help="a run: images per explain call")
    e.add_argument("--hf-dataset", action="store_true", help="IMAGE is a Hugging Face dataset saved with save_to_disk")
    e.add_argument("--split", help="--hf-dataset: the split of a saved DatasetDict")
    e.add_argument("--image-column", help="--hf-dataset: the image column (default image); shards: the image "
                   "member's extension (default the first of jpg, jpeg, png, webp, ...)")
    e.add_argument("--caption-column", help="--hf-dataset: the caption column; shards: the caption member's "
                   "extension (default txt)")
    c = command("classify", classify, "zero-shot: each image's best classes among --classes")
    c.add_argument("images", nargs="+", help="one or more image files (or shipped ones: demo:shapes-scene)")
    c.add_argument("--classes", required=True, help="class names, comma-separated: cat,dog,a red circle")
    c.add_argument("--templates", help="openai (80), default (7), shapes (the demo's), or a file of templates with "
                                       "{} (one a line); without it, the class names as they are")
    c.add_argument("--model", default="demo", help=MODEL_HELP)
    c.add_argument("--top", type=int, default=5, help="classes shown per image")
    x = command("index", index, "embed every image of a folder for search (again: only new and changed files)")
    x.add_argument("folder", help="a folder of images (searched recursively)")
    x.add_argument("--out", required=True, help="folder for the index (embeddings.safetensors, index.json)")
    x.add_argument("--model", default="demo", help=MODEL_HELP)
    x.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    q = command("search", search, "the images of an index that best match a caption")
    q.add_argument("index", help="a folder written by clipx index")
    q.add_argument("caption")
    q.add_argument("--k", type=int, default=10, help="how many hits")
    q.add_argument("--model", help="the model the index was built with (default: the one it names, demo unless "
                                   "the index was built with another)")
    q.add_argument("--explain", metavar="DIR", help="write one overlay PNG per hit into DIR")
    q.add_argument("--method", help="--explain: " + METHOD_HELP)
    q.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="--explain: " + OPT_HELP)
    q.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss"],
                   help="exact search with torch, or with FAISS (pip install clipx-lens[faiss]); auto: torch")
    m = command("methods", list_methods, "list the explanation methods, their options and the model's default one")
    m.add_argument("--model", default="demo", help="the model whose default method to name: " + MODEL_HELP)
    command("lab", lab, "start JupyterLab in the tutorial notebooks (from a checkout; elsewhere in the current "
            "folder); other arguments go to JupyterLab: clipx lab --allow-root --port 8890")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # JupyterLab's own options pass through `clipx lab`; any other command refuses what it does not know
    args, unknown = p.parse_known_args(argv)
    if unknown and args.command != "lab":
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.jupyter_args = unknown
    try:
        with warnings.catch_warnings():
            # a warning is about the user's input: its message alone, not the line of clipx that raised it
            warnings.showwarning = lambda message, *_, **__: print(f"clipx {args.command}: warning: {message}",
                                                                   file=sys.stderr)
            args.run(args)
    # the errors clipx's checks raise (CheckpointError is a ValueError, CheckpointNotFoundError an
    # OSError); anything else, torch's RuntimeErrors included, is a bug and keeps its traceback
    except (OSError, ValueError, TypeError) as e:
        print(f"clipx {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
