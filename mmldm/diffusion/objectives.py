"""What the denoiser is trained to predict, and the (optionally min-SNR weighted) loss.

For a clean latent x0, noise eps and timestep t, the network sees x_t = add_noise(x0, eps, t) and
regresses one of three targets (see :mod:`mmldm.diffusion.schedule`):

    "epsilon"  eps                                   (Ho et al. 2020, eq. 14: the "simple" loss)
    "v"        sqrt(a_t) eps - sqrt(1 - a_t) x0      (Salimans & Ho 2022)
    "sample"   x0

Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy"). Written as an x0 error, each target's squared error is the x0 squared error times a
factor of SNR(t) = a_t / (1 - a_t):

    ||eps - eps_hat||^2 = SNR(t)       * ||x0 - x0_hat||^2
    ||v   - v_hat||^2   = (SNR(t) + 1) * ||x0 - x0_hat||^2
    ||x0  - x0_hat||^2  = 1            * ||x0 - x0_hat||^2

so the plain eps loss weights timesteps by SNR(t) in x0 terms, a weight that explodes at low noise.
Min-SNR clamps the x0-space weight to min(SNR(t), gamma); in each target's own space:

    epsilon: min(SNR, gamma) / SNR        v: min(SNR, gamma) / (SNR + 1)        sample: min(SNR, gamma)

gamma = 5 is the paper's choice; ``None`` gives the unweighted MSE (the seed's loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmldm.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule


def training_target(schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor, prediction_type: str) -> Tensor:
    """The regression target for ``prediction_type`` at x_t = add_noise(x0, noise, t)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v":
        return schedule.velocity(x0, noise, t)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def min_snr_weight(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample loss weight of Hang et al. 2023 for a target of ``prediction_type`` (see above)."""
    clamped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clamped / snr
    if prediction_type == "v":
        return clamped / (snr + 1.0)
    if prediction_type == "sample":
        return clamped
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def diffusion_loss(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x0: Tensor,
    noise: Tensor,
    t: Tensor,
    prediction_type: str = "epsilon",
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Mean squared error to the target, per sample weighted by min-SNR-gamma if given; a scalar.

    The squared error is averaged over each sample's elements, weighted, then averaged over the
    batch (with no weighting this equals ``F.mse_loss(model_output, target)``).
    """
    target = training_target(schedule, x0, noise, t, prediction_type)
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        snr = schedule.snr[torch.as_tensor(t).reshape(-1).long().cpu()]  # float64: SNR spans ~1e-9..1e3
        weight = min_snr_weight(snr, min_snr_gamma, prediction_type)
        per_sample = per_sample * weight.to(device=per_sample.device, dtype=per_sample.dtype)
    return per_sample.mean()
