"""Mechanistic tools on the hooks: decomposing embeddings into per-layer and per-head parts, ablating and
patching them, sweeping heads, describing heads in text (TextSpan), high-norm tokens, and sparse
autoencoders (`sae/`)."""
