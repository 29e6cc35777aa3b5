"""The `clipx` command."""

from __future__ import annotations

import argparse
import sys

from .errors import CheckpointError, CheckpointNotFoundError


def score(args: argparse.Namespace) -> None:
    import torch

    from .loading import load

    model = load(args.model, attention=args.attention)
    pixel_values = model.preprocess([args.image])
    tok = model.tokenize(args.captions)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=tok.input_ids,
                       attention_mask=tok.attention_mask).logits_per_image[0]
    probs = logits.softmax(-1)
    width = max(len(c) for c in args.captions)
    print(f"{'caption':<{width}}  {'logit':>8}  {'prob':>6}")
    for caption, logit, prob in sorted(zip(args.captions, logits.tolist(), probs.tolist()), key=lambda r: -r[1]):
        print(f"{caption:<{width}}  {logit:8.3f}  {prob:6.3f}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipx", description="Explainability kit for CLIP.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score captions against an image")
    s.add_argument("image", help="an image file")
    s.add_argument("captions", nargs="+", help="one or more captions")
    s.add_argument("--model", required=True, help="a hub id (openai/clip-vit-base-patch32), a folder or a state-dict file")
    s.add_argument("--attention", default="sdpa", choices=["eager", "sdpa", "flash"])
    s.set_defaults(run=score)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (CheckpointError, CheckpointNotFoundError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"clipx {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
