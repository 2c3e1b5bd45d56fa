"""Train the anatomy judge (models/segmenter.py) on the real training split of a store.

Self-contained on purpose (it does not use the diffusion trainer): a plain loop of epochs over
``CardiacSliceDataset(split="train")``, Adam, and the loss

    loss = ce_weight * cross-entropy + dice_weight * (1 - soft Dice)     (models/segmenter.py)

Only real training slices are seen, never the held-out ones, so its Dice on held-out real images
is an honest ceiling for the Dice of generated images (evaluate/anatomy.py).

The checkpoint ``<out_dir>/segmenter.pt`` is a dict::

    {"model": state_dict, "config": the SegmenterConfig as a dict, "losses": mean loss per epoch,
     "steps": optimiser steps, "seconds": wall time, "store": the store path, "n_train": slices}

written atomically (:mod:`mmldm.atomic`: a temporary name, then ``os.replace``), so a crash
never leaves half a file where a checkpoint was. ``load_segmenter``
rebuilds the network from it.

    result = train_segmenter(load_config("laptop"), cfg.store_path, cfg.run_dir / "segmenter")
    model = load_segmenter(result.checkpoint)

:func:`fit_segmenter` is the loop itself, over any dataset of compact items (``image`` (1, H, W)
in [-1, 1], ``label`` (H, W) canonical, ``edge`` (1, H, W)), for a number of epochs or of
optimiser steps, in fp32 or bf16 (:mod:`mmldm.precision`): the downstream-utility benchmark
(benchmarks/utility.py) trains it on real, synthetic and mixed sets with it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from mmldm import atomic
from mmldm.data.dataset import CardiacSliceDataset, expand_batch
from mmldm.models.segmenter import CHECKPOINT_NAME, Segmenter, SegmenterConfig, segmentation_loss
from mmldm.precision import autocast, resolve_precision
from mmldm.progress import tqdm


@dataclass
class SegmenterRun:
    """What :func:`train_segmenter` returns: the trained model (eval mode) and where it was saved."""

    model: Segmenter
    checkpoint: Path
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    step_losses: list[float] = field(default_factory=list)  # loss of every optimiser step
    seconds: float = 0.0


def train_segmenter(
    cfg,
    store_path: str | Path,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = False,
    name: str = CHECKPOINT_NAME,
) -> SegmenterRun:
    """Train a :class:`Segmenter` on the ``train`` split of ``store_path``; save it to
    ``out_dir/name`` (``segmenter.pt`` by default).

    ``cfg`` is a whole :class:`~mmldm.config.Config` (its ``segmenter`` section is used) or a
    :class:`SegmenterConfig`. Seeded by ``cfg.seed``: the same config, store and device give the
    same model. ``cfg.cpu_threads`` (when set) applies for the duration of the call only.
    """
    cfg: SegmenterConfig = getattr(cfg, "segmenter", cfg)
    threads = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train(cfg, Path(store_path), Path(out_dir) / name, device, progress)
    finally:
        torch.set_num_threads(threads)


def fit_segmenter(
    cfg: SegmenterConfig,
    data: Dataset,
    steps: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "segmenter",
) -> tuple[Segmenter, list[float]]:
    """A :class:`Segmenter` trained on ``data`` (compact items, see the module docstring) for
    ``cfg.epochs`` passes, or exactly ``steps`` optimiser steps (the loader cycles); seeded by
    ``cfg.seed``. Returns the model (eval mode) and the loss of every step."""
    torch.manual_seed(cfg.seed)
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=cfg.num_workers > 0,
    )
    total = steps if steps is not None else cfg.epochs * len(loader)
    precision = resolve_precision(precision, device)
    model = Segmenter(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step_losses: list[float] = []
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)
    model.train()
    while len(step_losses) < total:
        for batch in loader:
            batch = expand_batch(batch, device)
            with autocast(precision, device):
                logits = model(batch["image"])
            loss = segmentation_loss(logits.float(), batch["label"], cfg.ce_weight, cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{step_losses[-1]:.3f}")
            if len(step_losses) == total:
                break
    bar.close()
    return model.eval(), step_losses


def _train(cfg: SegmenterConfig, store_path: Path, target: Path, device, progress: bool) -> SegmenterRun:
    start = time.perf_counter()
    data = CardiacSliceDataset(store_path, split="train", augment=cfg.augment, in_memory=cfg.in_memory, expand=False)
    model, step_losses = fit_segmenter(cfg, data, device=device, precision=cfg.precision, progress=progress)
    per_epoch = -(-len(data) // cfg.batch_size)
    losses = [
        sum(chunk) / len(chunk)
        for chunk in (step_losses[i : i + per_epoch] for i in range(0, len(step_losses), per_epoch))
    ]
    data.close()

    seconds = time.perf_counter() - start
    path = atomic.torch_save(
        {
            "model": model.state_dict(),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
            "losses": losses,
            "steps": len(step_losses),
            "seconds": seconds,
            "store": str(store_path),
            "n_train": len(data),
        },
        target,
    )
    return SegmenterRun(model=model, checkpoint=path, losses=losses, step_losses=step_losses, seconds=seconds)
