"""Vector quantisation: replace every latent pixel by its nearest codebook vector.

The VQ-VAE (van den Oord et al., 2017) encoder outputs ``z_e`` of shape (B, D, h, w). Each of
its h*w vectors is replaced by the nearest of K codebook vectors ``e_k`` (K = 16,384, D = 3 in
the paper)::

    k*(i) = argmin_k || z_e(i) - e_k ||          z_q(i) = e_{k*(i)}

argmin has no gradient, so training uses three tricks:

- **straight-through estimator**: the decoder sees ``z_e + (z_q - z_e).detach()``, whose value is
  ``z_q`` and whose gradient flows to ``z_e`` unchanged;
- **codebook loss** ``|| sg[z_e] - e ||^2`` pulls the chosen codes towards the encoder outputs;
- **commitment loss** ``|| z_e - sg[e] ||^2`` (weighted by beta = 0.2 in the paper) keeps the
  encoder from drifting away from the codes.

Two optional improvements (both off in the ``paper`` profile):

- **EMA codebook** (``ema=True``, van den Oord et al. 2017 appendix; Razavi et al. 2019): instead
  of the codebook loss, each code becomes the running mean of the encoder outputs assigned to
  it. Per training step, with n_k the number of vectors assigned to code k and s_k their sum::

      N_k <- decay * N_k + (1 - decay) * n_k          (cluster size)
      m_k <- decay * m_k + (1 - decay) * s_k          (cluster sum)
      N_k' = (N_k + eps) / (sum N + K eps) * sum N     (Laplace smoothing: no division by 0)
      e_k  = m_k / N_k'

  N_k starts at 1 and m_k at e_k, and only the codes chosen in a step are rewritten, so a code
  that is not chosen stays where it is (the plain formula would shrink it towards 0 once its
  N_k has decayed below eps).
- **dead-code restarts** (``restart_after=N > 0``): a code unused for N consecutive training
  steps is moved onto a random encoder output of the current batch, so it will be used again.
  With a 16,384-entry codebook most codes would otherwise never be chosen.

Every forward returns usage statistics: the fraction of the codebook used by the batch and the
perplexity exp(H(p)) of the code histogram (= K for uniform use, 1 when a single code is used).

Under ``torch.distributed`` the EMA statistics and the restart choices are summed / broadcast
across processes, so every replica keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Distances are computed for at most this many (vector, code) pairs at a time (64 MB of floats).
_MAX_PAIRS = 1 << 24


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``dim``, and the nearest-code lookup."""

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_after: int = 0,
    ):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_after = restart_after
        init = torch.randn(num_codes, dim)  # N(0, 1), as nn.Embedding in the seed
        if ema:
            # Updated by running averages, not by the optimiser: buffers, not parameters.
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("cluster_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Training steps since each code was last chosen (drives the dead-code restarts).
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))

    # -- lookup --------------------------------------------------------------------------------

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D) -> (N,) long.

        Distances are exact differences (not ``|a|^2 - 2ab + |b|^2``), so a code maps to itself
        and re-quantising an already-quantised latent is the identity.
        """
        codebook = self.codebook.detach().float()
        flat = flat.detach().float()
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        rows = max(1, _MAX_PAIRS // self.num_codes)
        for start in range(0, flat.shape[0], rows):
            chunk = flat[start : start + rows]
            d = torch.cdist(chunk, codebook, compute_mode="donot_use_mm_for_euclid_dist")
            out[start : start + rows] = d.argmin(dim=1)
        return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for an index map (B, h, w) -> latent (B, D, h, w)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def quantize_exact(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_q, indices) with no straight-through, no losses and no codebook update."""
        b, d, h, w = z.shape
        indices = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)
        return self.lookup(indices).to(z.dtype), indices

    # -- training forward ----------------------------------------------------------------------

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Quantise ``z_e`` (B, D, h, w).

        Returns ``(z_q, info)``: ``z_q`` carries straight-through gradients to ``z_e``; ``info``
        holds ``indices`` (B, h, w), ``codebook_loss`` (0 with EMA), ``commitment_loss``,
        ``usage`` (fraction of codes used by this batch), ``perplexity`` and, in training mode,
        ``restarted`` (number of dead codes re-initialised this step).
        """
        b, d, h, w = z_e.shape
        if d != self.dim:
            raise ValueError(f"quantizer: expected {self.dim} latent channels, got {d}")
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat)
        z_q = F.embedding(indices, self.codebook).to(z_e.dtype)

        commitment = F.mse_loss(flat, z_q.detach())
        codebook = z_e.new_zeros(()) if self.ema else F.mse_loss(z_q, flat.detach())

        counts = torch.bincount(indices, minlength=self.num_codes).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        info = {
            "indices": indices.view(b, h, w),
            "codebook_loss": codebook,
            "commitment_loss": commitment,
            "usage": (counts > 0).float().mean(),
            "perplexity": perplexity,
        }
        if self.training:
            info["restarted"] = self._update(flat.detach().float(), indices, counts)

        # Straight-through estimator: value of z_q, gradient of z_e.
        z_q = flat + (z_q - flat).detach()
        return z_q.view(b, h, w, d).permute(0, 3, 1, 2).contiguous(), info

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> int:
        """EMA update and dead-code restarts for one training step; returns #codes restarted."""
        if _distributed():
            counts = counts.clone()
            dist.all_reduce(counts)
        if self.ema:
            sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat)
            if _distributed():
                dist.all_reduce(sums)
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.cluster_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
            used = counts > 0
            self.codebook[used] = self.cluster_sum[used] / smoothed[used, None]

        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after <= 0:
            return 0
        dead = (self.steps_unused >= self.restart_after).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        # Each dead code jumps onto a random encoder output of this batch (rank 0's, if DDP).
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        fresh = flat[pick].to(self.codebook.dtype)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebook.data[dead] = fresh
        if self.ema:
            self.cluster_size[dead] = 1.0
            self.cluster_sum[dead] = fresh
        self.steps_unused[dead] = 0
        return int(dead.numel())
