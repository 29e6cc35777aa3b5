"""Deterministic awkward captions, many of them, for comparing tokenizers with transformers'."""

from __future__ import annotations

import random

# fragments that exercise each step: NFC (decomposed accents), whitespace collapse, lowercase,
# the split regex (contractions, digits, punctuation runs), byte-level (CJK, emoji), special tokens
FRAGMENTS = [
    "a photo of a cat", "A PHOTO of A Dog", "MiXeD CaSe", "café", "cafe\u0301", "Ångström", "A\u030angstro\u0308m",
    "naïve façade", "crème brûlée", "über", "ñandú", "Straße", "ǅemal", "İstanbul", "ﬁne ligature",
    "東京タワー", "北京欢迎你", "한국어 문장", "Москва", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย",
    "🐱", "🐈‍⬛", "👩‍👩‍👧", "🇫🇷", "👍🏽", "❤️", "☕", "∑∫√", "™©®", "½ ¾", "…", "—", "«quoted»", "“smart”",
    "don't", "I'M", "we're", "they've", "you'll", "he'd", "it's", "'s'", "rock'n'roll", "o'clock",
    "123", "3.14159", "1,000,000", "2024-01-31", "#1", "$9.99", "50%", "x²", "٣", "Ⅻ",
    "https://example.com/a/b?c=d&e=f#g", "www.openai.com", "user@mail.org", "C:\\path\\file.txt", "snake_case_name",
    "!!!", "?!", "...", "(parenthesised)", "[brackets]", "{braces}", "<html>", "a-b-c", "\"quotes\"", "`code`",
    "\t", "\n", "  ", "\r\n", "\u00a0", "\u3000", "\u200b", "\x00", "\u0301",
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "</w>", "a</w>b",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", " \n\t ", ", ", "-"]


def varied_strings(n: int = 1200, seed: int = 0) -> list[str]:
    """Deterministic captions: joined fragments, random case and spacing, some empty, some over-long."""
    rng = random.Random(seed)
    out = ["", " ", "\n\t", "a", "x" * 300, "a cat " * 80, "🐱" * 100, "東京" * 60, " ".join(FRAGMENTS)]
    while len(out) < n:
        parts = rng.choices(FRAGMENTS, k=rng.choice([1, 2, 3, 5, 8, 20, 40]))
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        if rng.random() < 0.2:
            text = text.upper() if rng.random() < 0.5 else text.swapcase()
        if rng.random() < 0.1:
            text = rng.choice(SEPARATORS) + text
        out.append(text)
    return out
