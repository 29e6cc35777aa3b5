"""What users build on explanations and embeddings: zero-shot classification, prompt templates, and a
searchable image index."""
