"""Sparse autoencoders on the residual stream: the autoencoder, training one on hooked activations,
splicing it into the model, and reading its features."""
