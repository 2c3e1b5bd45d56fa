"""The networks: the VQ-VAE (image <-> latent) and the conditional UNet (denoiser on the latent).

blocks.py         ResBlock, self-attention, Down/Mid/Up stages, time embedding, param counts
quantizer.py      vector quantiser (straight-through, optional EMA codebook + dead-code restarts)
vqvae.py          VQVAEConfig, VQVAE, and the autoencoder's losses
discriminator.py  PatchGAN + least-squares GAN losses
perceptual.py     optional perceptual loss from a local feature network (never downloaded)
conditioning.py   how the edge + label condition reaches the latent (nearest, hint encoder, pyramid)
spade.py          SPADE normalisation (the condition modulates every ResBlock)
unet.py           UNetConfig, UNet: eps = unet(x, t, cond, view)
"""

from mmldm.models.blocks import param_count, param_table
from mmldm.models.unet import UNet, UNetConfig
from mmldm.models.vqvae import VQVAE, VQVAEConfig

__all__ = ["UNet", "UNetConfig", "VQVAE", "VQVAEConfig", "param_count", "param_table"]
