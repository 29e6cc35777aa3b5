"""Turning images and captions into model inputs: the image processor (`image.py`), the text tokenizers
behind one `Encoding` (`text.py`: what they share; `bpe.py`, `sentencepiece.py`), and which tokenizer a
checkpoint folder needs (`auto.py`)."""
