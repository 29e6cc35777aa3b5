"""Sparse autoencoders on the residual stream: the autoencoder, training one on hooked activations,
splicing it into the model, reading its features, and the files of SAEs trained by SAELens, saev and
ViT-Prisma."""
