"""Noise schedules, training objectives, the DDPM / DDIM / DPM-Solver++ samplers and guidance.

schedule     betas (linear, scaled_linear, cosine), alphas_cumprod, add_noise, eps/x0/v, SNR
objectives   training target per prediction type, loss with optional min-SNR-gamma weights
ddpm         ancestral sampling, Ho et al. 2020 (1,000 steps or respaced)
ddim         Song et al. 2021, any number of steps, eta
dpm_solver   DPM-Solver++(2M), Lu et al. 2022
guidance     condition dropout for training; two-condition classifier-free guidance
sample       the sampling loop, the shared sampler base, SamplerConfig and make_sampler
"""

from mmldm.diffusion.base_sampler import Sampler, SamplerConfig, StepOutput
from mmldm.diffusion.ddim import DDIMSampler
from mmldm.diffusion.ddpm import DDPMSampler
from mmldm.diffusion.dpm_solver import DPMSolverSampler
from mmldm.diffusion.guidance import GuidanceConfig, drop_conditions, guidance_terms, guided_model_fn
from mmldm.diffusion.objectives import diffusion_loss, min_snr_weight, training_target
from mmldm.diffusion.sampling_loop import make_sampler, sample
from mmldm.diffusion.schedule import DiffusionConfig, NoiseSchedule, inference_timesteps, make_betas

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "DiffusionConfig",
    "GuidanceConfig",
    "NoiseSchedule",
    "Sampler",
    "SamplerConfig",
    "StepOutput",
    "diffusion_loss",
    "drop_conditions",
    "guidance_terms",
    "guided_model_fn",
    "inference_timesteps",
    "make_betas",
    "make_sampler",
    "min_snr_weight",
    "sample",
    "training_target",
]
