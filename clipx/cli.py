"""The `clipx` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def score(args: argparse.Namespace) -> None:
    import torch

    from .loading import load
    from .processing import open_image

    image = open_image(args.image)  # a bad image fails before the model loads
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
    from .loading import load
    from .processing import open_image
    from .views.render import overlay

    # everything the user gave is checked before the model loads and runs
    method_options(args.method)
    out = Path(args.out)
    _check_writable(out)
    if Path(args.image).is_dir():
        return explain_folder(args)
    original = open_image(args.image)  # upright and RGB, exactly what the processor sees
    model = load(args.model)
    exp = run_explain(model, [original], args.captions, method=args.method)
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  overlay")
    for j, caption in enumerate(args.captions):
        path = out / f"{j:02d}-{_slug(caption)}.png"
        # one full-size map at a time: a big photo's maps for every caption would not fit in memory
        overlay(original, exp.pixel_maps(original=True, text=j)[0][0]).save(path)
        print(f"{caption:<{width}}  {exp.scores[0, j]:8.3f}  {path}")


def explain_folder(args: argparse.Namespace) -> None:
    """Every image of a folder, as a resumable run of shards in --out (the same command resumes it; under
    torchrun each process takes its share)."""
    from .explain_run import explain_dataset, image_files
    from .loading import load

    image_files(args.image)  # a folder without images fails before the model loads
    result = explain_dataset(load(args.model), args.image, args.out, args.captions, method=args.method,
                             shard_size=args.shard_size, batch_size=args.batch_size)
    errors = result.errors
    print(f"{len(result) - len(errors)} of {len(result)} images explained into {args.out} "
          f"({result.manifest.n_shards} shards; read them with clipx.RunResult({str(args.out)!r}))")
    for path, error in errors:
        print(f"failed: {path}: {error}")


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


def list_methods(args: argparse.Namespace) -> None:
    from .explain import method_options, methods

    for name in methods():
        options = ", ".join(f"{k}={v!r}" for k, v in method_options(name).items())
        print(f"{name:<22} {options}")


def lab(args: argparse.Namespace) -> None:
    import subprocess
    from pathlib import Path

    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    raise SystemExit(subprocess.call([sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebooks}"]))


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:40] or "caption"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipx", description="Explainability kit for CLIP.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score captions against an image")
    s.add_argument("image", help="an image file")
    s.add_argument("captions", nargs="+", help="one or more captions")
    s.add_argument("--model", required=True, help="a hub id (openai/clip-vit-base-patch32), a folder or a state-dict file")
    s.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "flash"])
    s.set_defaults(run=score)
    e = sub.add_parser("explain", help="write one relevance overlay per caption and print the scores; for a "
                       "folder, a resumable run of map shards (under torchrun, split across processes)")
    e.add_argument("image", help="an image file, or a folder of images")
    e.add_argument("captions", nargs="+", help="one or more captions")
    e.add_argument("--model", default="demo", help="demo (shipped), a hub id, a folder or a state-dict file")
    e.add_argument("--method", default="relevance", help="an explanation method (clipx methods lists them)")
    e.add_argument("--out", default="clipx-out", help="folder for the overlay PNGs, or for a folder's run")
    e.add_argument("--shard-size", type=int, default=256, help="a folder's run: images per shard")
    e.add_argument("--batch-size", type=int, default=8, help="a folder's run: images per explain call")
    e.set_defaults(run=explain)
    sub.add_parser("methods", help="list the explanation methods and their options").set_defaults(run=list_methods)
    sub.add_parser("lab", help="start JupyterLab in the tutorial notebooks").set_defaults(run=lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
