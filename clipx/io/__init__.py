"""Checkpoints in and out: finding a checkpoint's files (`hub.py`: hub ids, local folders, the demos),
reading and checking its weights (`weights.py`), `clipx.load` (`loading.py`: model, processor and
tokenizer together), and `verify.verify` (files against their hub blob names and a saved folder's manifest)."""
