"""Exponential moving average (EMA) of a model's weights, the weights diffusion models sample with.

After every optimiser step, each EMA weight moves a little towards the live weight:

    shadow <- decay_n * shadow + (1 - decay_n) * param

With ``warmup`` the decay grows with the number n of updates already made,

    decay_n = min(decay, (1 + n) / (10 + n))        (0.1, 0.18, 0.25, ... -> decay)

as in CompVis' LitEma (latent diffusion), so the average is not dominated for thousands of steps
by the random initial weights (with decay 0.9999 the plain EMA remembers the first weights with
weight 0.9999^n, still 37 % after 10,000 steps). Without warm-up decay_n = decay throughout.

Only floating-point parameters are averaged (keyed by name; pass the bare model, not a DDP
wrapper, whose names gain a ``module.`` prefix). Buffers are left alone. The shadow weights are
kept in float32 whatever the model's dtype.

Sampling with the EMA weights and then training on::

    with ema.swapped_in(model):
        images = sample(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class EMAConfig:
    """EMA settings (``paper`` profile: LDM's 0.9999 with LitEma's warm-up)."""

    decay: float = 0.9999
    warmup: bool = True


class EMA:
    """EMA of ``model``'s floating-point parameters; call :meth:`update` after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().to(torch.float32, copy=True) for name, p in self._params(model)
        }

    @classmethod
    def from_config(cls, model: nn.Module, cfg: EMAConfig) -> EMA:
        return cls(model, decay=cfg.decay, warmup=cfg.warmup)

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        for name, p in model.named_parameters():
            if p.is_floating_point():
                yield name, p

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * param, with d = :meth:`current_decay`."""
        d = self.current_decay()
        for name, p in self._params(model):
            shadow = self.shadow[name]
            shadow.lerp_(p.detach().to(shadow.device, torch.float32), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the EMA weights (cast to each parameter's dtype)."""
        for name, p in self._params(model):
            p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the EMA weights; its own weights come back afterwards."""
        backup = {name: p.detach().clone() for name, p in self._params(model)}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._params(model):
                    p.copy_(backup[name])

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow weights (e.g. next to the model, so updates stay on the GPU)."""
        self.shadow = {name: s.to(device) for name, s in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {name: s.clone() for name, s in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; the parameter names must match this model's."""
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        unexpected = sorted(set(state["shadow"]) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, s in state["shadow"].items():
            self.shadow[name].copy_(s.to(torch.float32))
