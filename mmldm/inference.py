"""A trained model, loaded once, that makes images: the one way anything in mmldm generates.

    from mmldm.inference import LatentDiffusion
    ldm = LatentDiffusion.from_checkpoint("runs/acdc_laptop/ldm/last.pt")
    images = ldm.sample(cond, view, seed=0)               # (B, 5, H, W), (B,) -> (B, 1, H, W) in [-1, 1]

Like a diffusers pipeline it holds everything sampling needs (the UNet with its EMA weights, the
VQ-VAE the UNet was trained on, the latent statistics and the profile) and nothing about
training; ``mmldm/train/`` is never imported to make an image. One call of :meth:`sample`::

    sampler = make_sampler(sampler_cfg, schedule, prediction_type)    profile's, or the one given
    model_fn = guided_model_fn(unet, cond, view, guidance)             classifier-free guidance
    z       ~ sample(model_fn, sampler, (B, C, H/f, W/f), seed)        the reverse process, in latent space
    image   = vqvae.decode(denormalize(z, latent_stats))               back to pixels, clamped to [-1, 1]

The condition ``cond`` is the 5-channel map of :mod:`mmldm.data.condition` (edge, then one-hot
background / LV / myocardium / RV) at image size; ``view`` 0 for short axis, 1 for long axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmldm.checkpoint import CheckpointError, load_checkpoint, weights_hash
from mmldm.config import Config, from_dict
from mmldm.data.store import check_same_size
from mmldm.diffusion.base_sampler import Callback, SamplerConfig
from mmldm.diffusion.guidance import GuidanceConfig, guided_model_fn
from mmldm.diffusion.latent_norm import denormalize, normalize
from mmldm.diffusion.sampling_loop import make_sampler, sample
from mmldm.diffusion.schedule import NoiseSchedule
from mmldm.models.unet import UNet
from mmldm.models.vqvae import VQVAE, VQVAEConfig
from mmldm.precision import autocast, resolve_precision


def load_vqvae(path: str | Path, device: torch.device | str = "cpu") -> tuple[VQVAE, dict]:
    """The frozen VQVAE of a ``vqvae`` checkpoint (eval mode, no gradients) and its reference
    ``{"path", "hash", "config", "size"}`` (``size``: the image side it was trained at)."""
    ckpt = load_checkpoint(path, stage="vqvae")
    config = ckpt["config"]["vqvae"]
    vqvae = VQVAE(from_dict(VQVAEConfig, config, where=f"{path}: config.vqvae"))
    vqvae.load_state_dict(ckpt["model"])
    vqvae.eval().requires_grad_(False).to(device)
    return vqvae, {
        "path": str(Path(path).resolve()),
        "hash": weights_hash(vqvae.state_dict()),
        "config": config,
        "size": int(ckpt["config"]["data"]["size"]),
    }


def resolve_clipping(sampler_cfg: SamplerConfig, stats: dict) -> SamplerConfig:
    """``clip_to_latents`` made concrete: ``clip_x0`` = the range the normalised training latents
    spanned (kept in the checkpoint). x0_hat may not leave it: a measured fix for small models
    whose samples otherwise blow out to all-white or all-black images."""
    if sampler_cfg.clip_to_latents and sampler_cfg.clip_x0 is None:
        return dataclasses.replace(sampler_cfg, clip_x0=(float(stats["min"]), float(stats["max"])))
    return sampler_cfg


def default_device(device: str | None = None) -> str:
    """``device`` when given, else ``cuda`` if torch sees a GPU, else ``cpu``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _copy_ema_weights(unet: UNet, ema_state: dict, path) -> None:
    """Overwrite the UNet's parameters with the EMA's shadow weights (a ``train.ema.EMA`` state)."""
    shadow = ema_state["shadow"]
    params = dict(unet.named_parameters())
    missing = sorted(n for n, p in params.items() if p.is_floating_point() and n not in shadow)
    unexpected = sorted(set(shadow) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            path, f"EMA weights do not match the UNet: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, s in shadow.items():
            params[name].copy_(s.to(params[name].dtype))


@dataclass
class Trajectory:
    """One reverse run, step by step: at step i (timestep t), the latent x_t entering it and the
    model's estimate x0_hat of the clean latent (both normalised latents, on the CPU), and the final
    images. :meth:`LatentDiffusion.decode` turns any of them into pictures."""

    steps: list[int]  # step index i of each kept frame
    timesteps: list[int]  # the timestep t of each kept frame
    x_t: list[torch.Tensor]  # each (B, C, h, w)
    x0_hat: list[torch.Tensor]  # each (B, C, h, w)
    images: torch.Tensor  # (B, 1, H, W) in [-1, 1]: the sample, the same as sample() gives
    sampler: SamplerConfig
    guidance: GuidanceConfig

    def __len__(self) -> int:
        return len(self.steps)


class LatentDiffusion:
    """A conditional latent diffusion model ready to sample (see the module docstring).

    Build it with :meth:`from_checkpoint`, or directly from modules (the trainer does, to draw
    its progress grids with the weights it is training). Attributes: ``config`` (the profile it
    was trained with), ``unet``, ``vqvae``, ``latent_stats``, ``step``, ``device`` and
    ``precision``: ``fp32`` (the default: what every measurement in the report used) or ``bf16``
    (the UNet and the VQ-VAE decoder run under bf16 autocast, the sampler's arithmetic stays
    fp32), given as ``fp32``, ``bf16`` or ``auto`` (:mod:`mmldm.precision`).
    """

    def __init__(
        self,
        config: Config,
        unet: UNet,
        vqvae: VQVAE,
        latent_stats: dict,
        step: int = 0,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ):
        self.config, self.unet, self.vqvae = config, unet, vqvae
        self.latent_stats, self.step, self.device = latent_stats, int(step), torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.schedule = NoiseSchedule.from_config(config.diffusion)

    @property
    def weights(self) -> str:
        """The hash of the UNet weights this model samples with (EMA ones when loaded so): which
        model a result came from, recorded beside it (metrics.json, benchmarks/utility.py)."""
        return weights_hash(self.unet.state_dict())

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        use_ema: bool = True,
        vqvae_ckpt: str | Path | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> LatentDiffusion:
        """Load an LDM checkpoint: its UNet (EMA weights if kept and ``use_ema``, eval mode), the
        VQVAE it names (or ``vqvae_ckpt``; a VQVAE whose weights differ from the one trained on is
        an error), the latent statistics and the profile."""
        ckpt = load_checkpoint(path, stage="ldm")
        cfg = from_dict(Config, ckpt["config"], where=f"{path}: config")
        ref = ckpt["extra"]["vqvae"]
        vqvae, vq_ref = load_vqvae(vqvae_ckpt or ref["path"], device)
        if vq_ref["hash"] != ref["hash"]:
            raise CheckpointError(
                path, f"was trained on VQVAE weights {ref['hash']}, but {vq_ref['path']} holds {vq_ref['hash']}"
            )
        check_same_size(
            {f"LDM {path}": cfg.data.size, f"VQVAE {vq_ref['path']}": vq_ref["size"]},
            "this LDM was not trained on this VQVAE's images",
        )
        unet = UNet(cfg.unet)
        unet.load_state_dict(ckpt["model"])
        if use_ema and ckpt["ema"] is not None:
            _copy_ema_weights(unet, ckpt["ema"], path)
        unet.eval().requires_grad_(False).to(device)
        model = cls(cfg, unet, vqvae, ckpt["extra"]["latent_stats"], int(ckpt["step"]), device, precision)
        model.vqvae_ref = vq_ref
        return model

    # -- settings -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The image side the model makes (and its conditions must have)."""
        return int(self.config.data.size)

    def sampler_config(self, name: str | None = None, steps: int | None = None, **changes) -> SamplerConfig:
        """The profile's sampler with ``name`` / ``steps`` / other fields replaced."""
        if name is not None:
            changes["name"] = name
        if steps is not None:
            changes["num_inference_steps"] = int(steps)
        return dataclasses.replace(self.config.sampler, **changes)

    def guidance_config(
        self, mode: str | None = None, scale_mask: float | None = None, scale_edge: float | None = None
    ) -> GuidanceConfig:
        """The profile's guidance with the given fields replaced."""
        changes = {
            k: v for k, v in (("mode", mode), ("scale_mask", scale_mask), ("scale_edge", scale_edge)) if v is not None
        }
        return dataclasses.replace(self.config.guidance, **changes)

    def make_sampler(self, sampler: SamplerConfig | None = None):
        """The sampler object for ``sampler`` (default: the profile's), x0 clipping resolved."""
        cfg = resolve_clipping(sampler or self.config.sampler, self.latent_stats)
        return make_sampler(cfg, self.schedule, self.config.diffusion.prediction_type)

    def model_fn(self, cond: torch.Tensor, view: torch.Tensor, guidance: GuidanceConfig | None = None):
        """``model_fn(x_t, t)``: the UNet's guided output for conditions ``cond`` and views ``view``."""
        g = guidance or self.config.guidance
        fn = guided_model_fn(self.unet, cond.to(self.device), view.to(self.device), g.scale_mask, g.scale_edge, g.mode)
        if self.precision == "fp32":
            return fn

        def low_precision_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return fn(x_t, t).float()

        return low_precision_fn

    def autocast(self):
        """The context the networks run in: bf16 autocast when ``precision`` is bf16, else a no-op."""
        return autocast(self.precision, self.device)

    # -- latents <-> images ---------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [-1, 1] -> normalised latents (B, C, h, w): what the UNet sees."""
        z = self.vqvae.encode_to_latent(images.to(self.device))
        return normalize(z.float(), self.latent_stats)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 1, H, W) in [-1, 1], on the CPU."""
        out = []
        for chunk in latents.split(batch_size):
            with self.autocast():
                image = self.vqvae.decode_latent(denormalize(chunk.to(self.device), self.latent_stats))
            out.append(image.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latents(
        self,
        cond: torch.Tensor,
        view: torch.Tensor,
        sampler: SamplerConfig | None = None,
        guidance: GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        callback: Callback | None = None,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised latents (B, C, h, w) sampled for ``cond`` (B, 5, H, W) and ``view`` (B,).

        ``seed`` seeds the starting noise and every stochastic step (no global random state is
        touched). A list of B seeds gives row b the starting noise that ``seed=seeds[b]`` gives a
        batch of one, so with a deterministic sampler (DDIM eta 0, DPM-Solver) an image does not
        depend on its batch; stochastic steps draw from ``seeds[0]``. ``callback(i, t, x_t, x0_hat)``
        sees every step (:func:`~mmldm.diffusion.sampling_loop.sample`). The UNet's training mode
        comes back afterwards."""
        factor = self.vqvae.config.downsample_factor
        b, _, h, w = cond.shape
        if h % factor or w % factor:
            raise ValueError(f"condition is {h}x{w}, not a multiple of the VQ-VAE's downsampling factor {factor}")
        shape = (b, self.config.unet.latent_channels, h // factor, w // factor)
        if not isinstance(seed, int):
            seeds = [int(s) for s in seed]
            if len(seeds) != b:
                raise ValueError(f"{len(seeds)} seeds for a batch of {b}")
            if x_T is None:
                x_T = torch.cat(
                    [torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(s)) for s in seeds]
                )
            seed = seeds[0]
        was_training = self.unet.training
        self.unet.eval()
        try:
            return sample(
                self.model_fn(cond, view, guidance),
                self.make_sampler(sampler),
                shape,
                torch.Generator().manual_seed(int(seed)),
                callback=callback,
                x_T=x_T,
                device=self.device,
            )
        finally:
            self.unet.train(was_training)

    def sample(
        self,
        cond: torch.Tensor,
        view: torch.Tensor,
        sampler: SamplerConfig | None = None,
        guidance: GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Images (B, 1, H, W) in [-1, 1] on the CPU for conditions ``cond`` (B, 5, H, W) and views
        ``view`` (B,), with ``sampler`` and ``guidance`` (default: the profile's)."""
        return self.decode(self.sample_latents(cond, view, sampler, guidance, seed, callback))

    __call__ = sample

    def trajectory(
        self,
        cond: torch.Tensor,
        view: torch.Tensor,
        sampler: SamplerConfig | None = None,
        guidance: GuidanceConfig | None = None,
        seed: int = 0,
        frames: int | None = None,
    ) -> Trajectory:
        """Sample once and keep the steps: all of them, or ``frames`` evenly spaced ones (the first
        and last step included). Its ``images`` are exactly what :meth:`sample` gives for this seed."""
        sampler = sampler or self.config.sampler
        guidance = guidance or self.config.guidance
        n = len(self.make_sampler(sampler))
        if frames is None or frames >= n:
            keep = set(range(n))
        else:
            keep = {round(k * (n - 1) / max(frames - 1, 1)) for k in range(frames)}
        traj = Trajectory([], [], [], [], torch.empty(0), sampler, guidance)

        def catch(i, t, x_t, x0_hat):
            if i in keep:
                traj.steps.append(int(i))
                traj.timesteps.append(int(t))
                traj.x_t.append(x_t.detach().cpu().clone())
                traj.x0_hat.append(x0_hat.detach().cpu().clone())

        traj.images = self.sample(cond, view, sampler, guidance, seed, callback=catch)
        return traj
