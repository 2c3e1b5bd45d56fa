"""The noise schedule: betas, alphas_cumprod, the forward process and the eps / x0 / v algebra.

Notation (Ho et al. 2020, "DDPM"): ``beta_t`` is the variance added at step t, ``alpha_t = 1 -
beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s`` (``alphas_cumprod``). Timesteps are integers
0 .. T-1 as in diffusers (the paper counts 1 .. T). The forward process in closed form (eq. 4):

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,      eps ~ N(0, I)

Three ways for a network to parameterise the reverse process, all linear in (x_t, x0, eps):

    "epsilon"  predict eps                            (Ho et al. 2020)
    "sample"   predict x0                             (the "x0" parameterisation)
    "v"        predict v = sqrt(a) * eps - sqrt(1-a) * x0,  a = alpha_bar_t   (Salimans & Ho 2022)

and SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021), which the min-SNR loss weights
use (see :mod:`mmldm.diffusion.objectives`).

Beta schedules (names as in diffusers, so the peer test can configure it the same way):

    "linear"         betas = linspace(beta_start, beta_end, T)                   (Ho et al. 2020)
    "scaled_linear"  betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2  (CompVis LDM)
    "cosine"         alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),
                     betas = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta)      (Nichol & Dhariwal
                     2021, eq. 17; diffusers' "squaredcos_cap_v2")

The seed (explainingai-code/StableDiffusion-PyTorch, ``scheduler/linear_noise_scheduler.py``)
calls its schedule "linear" but computes ``linspace(beta_start**0.5, beta_end**0.5, T) ** 2``
with beta 0.0015 -> 0.0195 over 1,000 steps: that is CompVis' "linear", which diffusers (and we)
call "scaled_linear". It is the default here, as in the ``paper`` profile.

Everything is computed in float64 on the CPU; :meth:`NoiseSchedule.at` hands out values in the
dtype and device of the tensor they multiply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "v", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
PREDICTION_TYPES = ("epsilon", "v", "sample")


@dataclass
class DiffusionConfig:
    """The training-side diffusion settings (defaults: the ``paper`` profile = the seed's)."""

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "scaled_linear"  # the seed's "linear" (see module docstring)
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    cosine_s: float = 0.008  # cosine offset s (Nichol & Dhariwal 2021), unused by linear schedules
    max_beta: float = 0.999  # cosine clip, keeps beta_T < 1
    prediction_type: PredictionType = "epsilon"
    min_snr_gamma: float | None = None  # None = plain MSE (the seed); 5.0 in Hang et al. 2023

    def __post_init__(self):
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> Tensor:
    """The T betas of a named schedule, float64."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if beta_schedule == "cosine":

        def f(t: float) -> float:  # alpha_bar up to the constant f(0), which cancels in the ratio
            return math.cos((t / T + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2

        betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use linear, scaled_linear or cosine")


def inference_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str = "trailing",
    steps_offset: int = 0,
) -> Tensor:
    """The descending training timesteps a sampler visits (Lin et al. 2023, Table 2).

    ``"trailing"`` (our default) starts at T-1, the noise level training ended at, and steps down
    by T/n: with T=1000, n=50 -> 999, 979, ..., 19. It is computed the same way by diffusers'
    DDPM, DDIM and DPM-Solver schedulers, and with few steps it is the one that does not start
    sampling from a less noisy level than pure noise. ``"leading"`` is diffusers' DDIM default
    (Stable Diffusion adds ``steps_offset=1``): 0, T//n, 2T//n, ... (+ offset), reversed: 980, ...,
    0 for n=50. ``"linspace"``: round(linspace(0, T-1, n)), reversed. With n = T all three give
    T-1, ..., 0.

    Every sampler steps from ``timesteps[i]`` to ``timesteps[i+1]``, and from the last one to
    "clean" (alpha_bar = 1).
    """
    T, n = num_train_timesteps, num_inference_steps
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in 1..{T} (num_train_timesteps), got {n}")
    if spacing == "trailing":
        ts = np.round(T - np.arange(n) * (T / n)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; use leading, trailing or linspace")
    if ts.max() > T - 1 or ts.min() < 0 or np.any(np.diff(ts) >= 0):
        raise ValueError(
            f"timesteps {ts.tolist()} are not strictly descending in 0..{T - 1} "
            f"(spacing={spacing!r}, steps_offset={steps_offset})"
        )
    return torch.from_numpy(ts.copy())


class NoiseSchedule:
    """betas, alphas, alphas_cumprod and SNR for T steps; the forward process and the conversions.

    ``t`` in every method is either a Python int (one timestep for the whole batch) or an integer
    tensor of shape (B,) (one per sample).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
    ):
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, cosine_s, max_beta)
        if not (torch.all(self.betas > 0) and torch.all(self.betas < 1)):
            raise ValueError(f"betas must lie in (0, 1); check beta_start={beta_start}, beta_end={beta_end}")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> NoiseSchedule:
        return cls(cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.cosine_s, cfg.max_beta)

    def __len__(self) -> int:
        return self.num_train_timesteps

    # -- gathering per-timestep values -----------------------------------------------------------

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a float; t = -1 means "clean data" (alpha_bar = 1), the samplers' end."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def at(self, values: Tensor, t: int | Tensor, like: Tensor) -> Tensor | float:
        """``values[t]`` ready to multiply ``like``: a float for an int t, else shape (B, 1, ...)."""
        if isinstance(t, int):
            return float(values[t])
        t = torch.as_tensor(t).reshape(-1).long().cpu()
        out = values[t].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def _ab(self, t: int | Tensor, like: Tensor):
        a = self.at(self.alphas_cumprod, t, like)
        if isinstance(a, float):
            return math.sqrt(a), math.sqrt(1.0 - a)
        return a.sqrt(), (1.0 - a).sqrt()

    # -- forward process -------------------------------------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """q(x_t | x0) sampled with the given noise: sqrt(a) x0 + sqrt(1-a) eps (Ho et al. eq. 4)."""
        sa, s1a = self._ab(t, x0)
        return sa * x0 + s1a * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho 2022, section 4)."""
        sa, s1a = self._ab(t, x0)
        return sa * noise - s1a * x0

    # -- conversions (each pair of (x0, eps, v) determines the third, given x_t) ------------------

    def eps_to_x0(self, eps: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1-a) eps) / sqrt(a)   (Ho et al. 2020, eq. 15)."""
        sa, s1a = self._ab(t, x_t)
        return (x_t - s1a * eps) / sa

    def x0_to_eps(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """eps = (x_t - sqrt(a) x0) / sqrt(1-a)."""
        sa, s1a = self._ab(t, x_t)
        return (x_t - sa * x0) / s1a

    def v_to_x0(self, v: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """x0 = sqrt(a) x_t - sqrt(1-a) v."""
        sa, s1a = self._ab(t, x_t)
        return sa * x_t - s1a * v

    def v_to_eps(self, v: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """eps = sqrt(1-a) x_t + sqrt(a) v."""
        sa, s1a = self._ab(t, x_t)
        return s1a * x_t + sa * v

    def predict_x0_eps(
        self, model_output: Tensor, x_t: Tensor, t: int | Tensor, prediction_type: str
    ) -> tuple[Tensor, Tensor]:
        """The network's (x0, eps) estimate, whatever it was trained to predict."""
        if prediction_type == "epsilon":
            return self.eps_to_x0(model_output, x_t, t), model_output
        if prediction_type == "v":
            return self.v_to_x0(model_output, x_t, t), self.v_to_eps(model_output, x_t, t)
        if prediction_type == "sample":
            return model_output, self.x0_to_eps(model_output, x_t, t)
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
