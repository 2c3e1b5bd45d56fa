"""What the evaluation runs: the sampler / condition variants and the ``evaluation`` config section.

Kept apart from :mod:`mmldm.evaluate.run` so that :mod:`mmldm.config` can compose
:class:`EvaluationConfig` into a profile without importing the whole evaluation.

Each **variant** samples the same trained model one way, relative to the profile's sampler and
guidance (:func:`mmldm.evaluate.run.variant_settings` turns a name into settings). The
``evaluation`` section says how many held-out slices each measure uses::

    evaluation:
      n: 96            # held-out slices for the paired metrics and the variants (null: all)
      n_ddpm: 16       # of those, how many the slow full-chain DDPM variant generates
      variants: [...]  # names from VARIANTS
      main: ddim50_both
      realism_n: 512   # generated images for FID / KID / spectrum: held-out masks x realism_seeds
      realism_seeds: 2 # distinct seeds per held-out mask in the realism set
      batch_size: 32
      precision: fp32  # the LDM's sampling: fp32, bf16 or auto (bf16 where native, mmldm/precision.py)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mmldm.precision import PRECISIONS


@dataclass(frozen=True)
class Variant:
    """How one ablation row samples, relative to the profile's sampler and guidance."""

    sampler: str  # ddpm | ddim | dpm_solver
    steps: int | None  # None: every training timestep (the full DDPM chain); capped at it anyway
    mode: str = "both"  # guidance mode: each row names its own, whatever the profile samples with
    plain: bool = False  # guidance scales 1 / 1: the plain conditional model, one pass a step
    subset: bool = False  # slow: run on ``n_ddpm`` of the slices
    edges: str = "image"  # the edge channel: the real slice's edges, drawn from the mask, or none


VARIANTS = {
    # Mask + the real slice's edges: the reference study's setting, a reconstruction benchmark.
    "ddim50_both": Variant("ddim", 50),
    "dpm20_both": Variant("dpm_solver", 20),
    "ddpm1000_both": Variant("ddpm", None, subset=True),  # the seed's sampler
    "ddim50_mask_only": Variant("ddim", 50, mode="mask_only"),
    "ddim50_edges_only": Variant("ddim", 50, mode="edges_only"),
    "ddim50_no_guidance": Variant("ddim", 50, plain=True),
    # What a user with a label map alone gets: no edges, or edges drawn from the mask.
    "dpm20_mask_only": Variant("dpm_solver", 20, mode="mask_only", edges="none"),
    "dpm20_mask_edges": Variant("dpm_solver", 20, edges="mask"),
}
MAIN = "ddim50_both"


@dataclass
class EvaluationConfig:
    """How much the held-out evaluation (``python -m mmldm evaluate``, notebook 05) measures.

    ``n`` evenly spread held-out slices get the paired metrics, Dice and the sampler / condition
    variants (``None``: every slice of the split); ``n_ddpm`` of them the 1,000-step DDPM. The
    **realism** set, for FID, KID and the power spectrum, is bigger: ``realism_n`` generated
    images, made from ``ceil(realism_n / realism_seeds)`` held-out masks (capped by the split)
    with ``realism_seeds`` different seeds each, by the ``main`` variant.
    """

    n: int | None = 96
    n_ddpm: int = 16
    variants: list[str] = dataclasses.field(default_factory=lambda: list(VARIANTS))
    main: str = MAIN
    realism_n: int = 512
    realism_seeds: int = 2
    batch_size: int = 32
    # The LDM's sampling and decoding (mmldm/precision.py); the judge and the FID networks stay fp32.
    precision: str = "fp32"

    def __post_init__(self):
        if self.n is not None and self.n < 1:
            raise ValueError(f"evaluation.n must be at least 1 (or null for every slice), not {self.n}")
        for key in ("n_ddpm", "realism_seeds", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"evaluation.{key} must be at least 1, not {getattr(self, key)}")
        if self.realism_n < 2:
            raise ValueError(f"evaluation.realism_n must be at least 2 (FID needs two images), not {self.realism_n}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(
                f"unknown evaluation variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"evaluation.precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not self.variants:
            raise ValueError("evaluation.variants is empty")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"evaluation.variants lists a name twice: {self.variants}")
        if self.main not in self.variants:
            raise ValueError(f"evaluation.main ({self.main!r}) must be one of evaluation.variants {self.variants}")

    @property
    def realism_masks(self) -> int:
        """Held-out masks the realism set asks for (before the split caps them)."""
        return -(-self.realism_n // self.realism_seeds)
