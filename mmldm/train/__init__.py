"""Training: the VQVAE and LDM trainers, checkpoints, distributed helpers and the EMA of weights."""
