"""Derive clipx/data/clip-bpe/{vocab.json, merges.txt} from OpenAI's `bpe_simple_vocab_16e6.txt.gz`.

The vocabulary is built exactly as OpenAI's `simple_tokenizer.py` builds it, and written in the
layout of Hugging Face's openai/clip-vit-* repositories. The .gz ships inside PyPI packages:

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -j /tmp/oc/*.whl '*bpe_simple*' -d /tmp/oc
    python tools/make_clip_bpe.py /tmp/oc/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

# OpenAI keeps this many merges: with 512 byte symbols (plain and with "</w>") and 2 specials, 49,408 tokens
N_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]
OUT_DIR = Path(__file__).resolve().parent.parent / "clipx" / "data" / "clip-bpe"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (its order fixes the first 256 ids)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is a header
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + SPECIAL_TOKENS
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49408, len(vocab)
    return vocab, merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    vocab, merges = build(args.bpe_gz)
    args.out.mkdir(parents=True, exist_ok=True)
    # compact, unescaped JSON: byte for byte what `tokenizers` writes, as in the hub repositories
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    (args.out / "vocab.json").write_text(vocab_json, encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
