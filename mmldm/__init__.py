"""mmldm: mask- and edge-conditioned latent diffusion for cardiac MRI.

The package holds all model and pipeline logic; the notebooks in ``notebooks/`` only narrate
and plot. The flow, one sub-package per stage:

    data/       raw NIfTI -> canonical slices -> HDF5 store -> torch Dataset
    models/     VQVAE, conditional UNet, discriminator, segmenter
    diffusion/  noise schedules, DDPM / DDIM / DPM-Solver++ samplers, guidance
    train/      trainers, checkpoints, EMA
    evaluate/   metrics, FID, anatomy compliance, report
    viz/        plots and notebook widgets
"""

__version__ = "0.1.0"

from mmldm.errors import install_warning_format  # noqa: E402

install_warning_format()
