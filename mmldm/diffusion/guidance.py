"""Classifier-free guidance with two conditions: the label mask and the edge map.

Training side (Ho & Salimans 2022): :func:`drop_conditions` zeroes the edge channel and the mask
channels of the (B, 5, H, W) condition independently per sample (each with probability 0.1 in
the reference study), so one network learns m(mask, edge), m(mask, 0), m(0, edge) and m(0, 0). A
dropped condition is all zeros in its channels (see ``mmldm.data.schema.COND_CHANNELS``).

**Mask-first training** (``p_mask_edge > 0``): a user making new data has a label map, not the
real image's edges. So a share of the samples gets, in the edge channel, the boundaries drawn
from the mask itself (:func:`mmldm.data.condition.mask_edges`, exactly what ``generate --edges
auto`` gives), and a larger share none at all. Per sample, one uniform number u decides::

    u <  p_drop_edge                        edge channel zero            (mask alone)
    u <  p_drop_edge + p_mask_edge          edges drawn from the mask    (what a user has)
    else                                    the real image's Canny edges (reconstruction)

Sampling side: :func:`guided_model_fn` turns the conditional UNet into the ``model_fn(x_t, t)``
the samplers call. It uses the compositional form of InstructPix2Pix (Brooks et al. 2023,
"classifier-free guidance for two conditionings"), with the mask as the outer and the edges as
the inner condition (the image and the instruction there):

    out = m(0, 0)
        + s_mask * (m(mask, 0)    - m(0, 0))         how much the mask pulls away from unconditional
        + s_edge * (m(mask, edge) - m(mask, 0))      how much the edges add on top of the mask

where m(c_mask, c_edge) = model(x_t, t, cond with the other channels zeroed, view) and 0 a
dropped condition. Expanded, the output is a weighted sum of forward passes,

    out = (1 - s_mask) m(0, 0) + (s_mask - s_edge) m(mask, 0) + s_edge m(mask, edge),

and only passes with a non-zero weight run, batched into one model call (concatenated along the
batch). ``mode`` chooses which conditions are used at all; an unused one is dropped (zeros):

    "both"        the formula above; s_mask = s_edge = 1 is one plain conditional pass
    "mask_only"   edges dropped:   m(0,0) + s_mask (m(mask,0) - m(0,0))     (s_edge unused)
    "edges_only"  mask dropped:    m(0,0) + s_edge (m(0,edge) - m(0,0))     (s_mask unused)
    "none"        m(0, 0): the unconditional model, one pass

A scale of 1 means "conditional, no extra guidance"; > 1 extrapolates away from the weaker
condition; 0 ignores that condition.

The formula is the same for every prediction type (eps, v and x0 are all linear in the score
estimate at fixed x_t), so the samplers need not know guidance is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mmldm.data.schema import EDGE_CHANNEL, MASK_CHANNELS

GuidanceMode = Literal["both", "mask_only", "edges_only", "none"]
MODES = ("both", "mask_only", "edges_only", "none")


@dataclass
class GuidanceConfig:
    """Condition dropout in training and the two guidance scales at sampling (``paper`` profile)."""

    p_drop_edge: float = 0.1
    p_drop_mask: float = 0.1
    scale_mask: float = 1.0
    scale_edge: float = 1.0
    mode: GuidanceMode = "both"
    p_mask_edge: float = 0.0  # share of samples trained with the mask's own edges (mask-first)

    def __post_init__(self):
        if not (0.0 <= self.p_drop_edge <= 1.0 and 0.0 <= self.p_drop_mask <= 1.0):
            raise ValueError(f"drop probabilities must be in [0, 1], got {self.p_drop_edge}, {self.p_drop_mask}")
        if not (0.0 <= self.p_mask_edge <= 1.0 - self.p_drop_edge):
            raise ValueError(
                f"guidance.p_mask_edge must be in [0, 1 - p_drop_edge] = [0, {1.0 - self.p_drop_edge:g}], "
                f"got {self.p_mask_edge}"
            )
        if self.mode not in MODES:
            raise ValueError(f"guidance mode must be one of {MODES}, got {self.mode!r}")


def drop_conditions(
    cond: Tensor,
    p_edge: float = 0.1,
    p_mask: float = 0.1,
    generator: torch.Generator | None = None,
    mask_edge: Tensor | None = None,
    p_mask_edge: float = 0.0,
) -> Tensor:
    """Zero the edge channel and the mask channels of ``cond`` (B, 5, H, W) independently per sample;
    with ``mask_edge`` (B, 1, H, W), the edges drawn from each mask, put them in the edge channel of
    a further ``p_mask_edge`` share of the samples (see the module docstring for the rule).

    Returns a new tensor; ``cond`` is untouched. The per-sample numbers are drawn on the
    generator's device (CPU if none), so a CPU generator is reproducible on any device; the same
    two numbers per sample are drawn whatever ``p_mask_edge`` is.
    """
    if not (0.0 <= p_edge <= 1.0 and 0.0 <= p_mask <= 1.0):
        raise ValueError(f"drop probabilities must be in [0, 1], got p_edge={p_edge}, p_mask={p_mask}")
    if not 0.0 <= p_mask_edge <= 1.0 - p_edge:
        raise ValueError(f"p_mask_edge must be in [0, 1 - p_edge], got {p_mask_edge} with p_edge={p_edge}")
    if p_mask_edge > 0 and mask_edge is None:
        raise ValueError("p_mask_edge > 0 needs the mask-drawn edges (mask_edge)")
    b = cond.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((2, b), generator=generator, device=device).to(cond.device)
    keep_edge = (u[0] >= p_edge).to(cond.dtype).view(b, 1, 1, 1)
    keep_mask = (u[1] >= p_mask).to(cond.dtype).view(b, 1, 1, 1)
    out = cond.clone()
    if p_mask_edge > 0:
        if mask_edge.shape != out[:, EDGE_CHANNEL : EDGE_CHANNEL + 1].shape:
            raise ValueError(f"mask_edge {tuple(mask_edge.shape)} does not fit the condition {tuple(cond.shape)}")
        from_mask = ((u[0] >= p_edge) & (u[0] < p_edge + p_mask_edge)).view(b, 1, 1, 1)
        out[:, EDGE_CHANNEL : EDGE_CHANNEL + 1] = torch.where(
            from_mask, mask_edge.to(out.device, out.dtype), out[:, EDGE_CHANNEL : EDGE_CHANNEL + 1]
        )
    out[:, EDGE_CHANNEL : EDGE_CHANNEL + 1] *= keep_edge
    out[:, MASK_CHANNELS] *= keep_mask
    return out


def guidance_terms(mode: str, scale_mask: float = 1.0, scale_edge: float = 1.0) -> list[tuple[bool, bool, float]]:
    """The forward passes guidance needs, as (use_mask, use_edge, weight), zero weights left out.

    The weights always sum to 1 (the combination is an affine one of model outputs).
    """
    if mode == "both":
        terms = [(False, False, 1.0 - scale_mask), (True, False, scale_mask - scale_edge), (True, True, scale_edge)]
    elif mode == "mask_only":
        terms = [(False, False, 1.0 - scale_mask), (True, False, scale_mask)]
    elif mode == "edges_only":
        terms = [(False, False, 1.0 - scale_edge), (False, True, scale_edge)]
    elif mode == "none":
        terms = [(False, False, 1.0)]
    else:
        raise ValueError(f"guidance mode must be one of {MODES}, got {mode!r}")
    return [term for term in terms if term[2] != 0.0]


def _select(cond: Tensor, use_mask: bool, use_edge: bool) -> Tensor:
    """``cond`` with the unused conditions zeroed (dropped)."""
    if use_mask and use_edge:
        return cond
    out = cond.clone()
    if not use_edge:
        out[:, EDGE_CHANNEL] = 0
    if not use_mask:
        out[:, MASK_CHANNELS] = 0
    return out


def guided_model_fn(
    model: nn.Module | Callable[..., Tensor],
    cond: Tensor,
    view: Tensor | None = None,
    scale_mask: float = 1.0,
    scale_edge: float = 1.0,
    mode: str = "both",
) -> Callable[[Tensor, Tensor], Tensor]:
    """``model_fn(x_t, t)`` for the samplers: guided ``model(x_t, t, cond=..., view=...)``.

    ``cond`` is (B, 5, H, W) for a batch of B samples (channel 0 edges, 1-4 one-hot mask);
    ``view`` is None or a (B,) tensor, repeated for each pass. All passes with a non-zero weight
    (see :func:`guidance_terms`) go through the model in one call of batch k*B. A model with a
    ``prepare_condition(cond, x)`` method (the UNet) has the condition prepared at the first step
    and reused by every later one, since it does not change while x_t does.
    """
    terms = guidance_terms(mode, scale_mask, scale_edge)
    conds = torch.cat([_select(cond, use_mask, use_edge) for use_mask, use_edge, _ in terms])
    views = None if view is None else torch.cat([view] * len(terms))
    weights = [w for _, _, w in terms]
    b = cond.shape[0]
    prepare = getattr(model, "prepare_condition", None)
    prepared = {}  # the condition as the UNet's first layers make it, computed at the first step

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        if x_t.shape[0] != b:
            raise ValueError(f"x_t has batch {x_t.shape[0]} but cond has batch {b}")
        k = len(weights)
        x_in = x_t if k == 1 else torch.cat([x_t] * k)
        c = conds
        if prepare is not None:
            key = (tuple(x_in.shape), x_in.dtype, x_in.device)
            if key not in prepared:
                prepared.clear()
                prepared[key] = prepare(conds, x_in)
            c = prepared[key]
        if k == 1 and weights[0] == 1.0:
            return model(x_t, t, cond=c, view=views)
        out = model(x_in, torch.cat([t] * k), cond=c, view=views)
        chunks = out.chunk(k)
        guided = weights[0] * chunks[0]
        for w, chunk in zip(weights[1:], chunks[1:]):
            guided = guided + w * chunk
        return guided

    return model_fn
