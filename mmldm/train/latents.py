"""The latent cache: the training set encoded once by the frozen VQVAE, so LDM epochs skip the encoder.

    <ldm run>/latents.h5
      /latents   (N, C, h, w) float32   VQVAE.encode_to_latent of training item i (quantised latent)
      /index     (N,) int64             the item's row in the store (checks the pairing)
      attrs: key, vqvae_hash, store, version

Row i is item i of ``CardiacSliceDataset(store, split="train")``; the condition maps and the view
are not copied, :class:`LatentDataset` reads them from the store (two small gzip chunks per item,
cheaper than the latent UNet's step by far). The cache is keyed to the VQVAE's weights (their
hash), to the store file (path, size, modification time) and to the rows it covers, and is
rebuilt when any of those changes. It is written atomically (temporary name, then rename).

Latent normalisation (``latent_norm``) lives in :mod:`mmldm.diffusion.latent_norm`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmldm import atomic
from mmldm.data.condition import mask_edges
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.diffusion.latent_norm import normalize
from mmldm.models.vqvae import VQVAE
from mmldm.progress import tqdm

CACHE_VERSION = 1


def cache_key(vqvae_hash: str, store: str | Path, indices: np.ndarray) -> str:
    """What the cache depends on: the VQVAE weights, the store file, the rows encoded."""
    store = Path(store).resolve()
    st = store.stat()
    h = hashlib.sha256(f"v{CACHE_VERSION}|{vqvae_hash}|{store}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(np.asarray(indices, np.int64).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_dataset(
    vqvae: VQVAE, slices: CardiacSliceDataset, batch_size: int, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """Every item's quantised latent, in item order: (N, C, h, w) float32 on the CPU."""
    vqvae.eval()
    loader = DataLoader(slices, batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    for batch in tqdm(loader, desc="encode latents", unit="batch", disable=not progress, leave=False):
        out.append(vqvae.encode_to_latent(batch["image"].to(device)).float().cpu())
    return torch.cat(out)


def read_cache(path: str | Path, key: str) -> torch.Tensor | None:
    """The cached latents if ``path`` exists and carries ``key``; None if absent, stale or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key:
                return None
            return torch.from_numpy(f["latents"][()])
    except (OSError, KeyError):
        return None


def write_cache(
    path: str | Path, latents: torch.Tensor, indices: np.ndarray, key: str, vqvae_hash: str, store: str | Path
) -> Path:
    """Write the cache atomically."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("latents", data=latents.numpy().astype(np.float32))
            f.create_dataset("index", data=np.asarray(indices, np.int64))
            f.attrs.update(key=key, vqvae_hash=vqvae_hash, store=str(Path(store).resolve()), version=CACHE_VERSION)

    return atomic.write_atomic(path, write)


def ensure_cache(
    path: str | Path,
    vqvae: VQVAE,
    vqvae_hash: str,
    slices: CardiacSliceDataset,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, bool]:
    """The training latents from ``path``, encoding and writing them first if missing or stale.

    Returns ``(latents, rebuilt)``. Under torchrun only rank 0 should call this with write
    access; the others wait at a barrier and then :func:`read_cache` (see the LDM trainer).
    """
    key = cache_key(vqvae_hash, slices.path, slices.indices)
    latents = read_cache(path, key)
    if latents is not None:
        return latents, False
    latents = encode_dataset(vqvae, slices, batch_size, device, progress)
    write_cache(path, latents, slices.indices, key, vqvae_hash, slices.path)
    return latents, True


# ---------------------------------------------------------------------------------------------
# What the LDM trainer iterates over
# ---------------------------------------------------------------------------------------------


class LatentDataset(Dataset):
    """Item i: ``latent`` (C, h, w) (normalised with ``stats``), ``cond`` (5, H, W), ``view``; with
    ``mask_edges_from`` (a ``data`` config: its Canny settings) also ``mask_edge`` (1, H, W), the
    edges drawn from the slice's label map (:func:`mmldm.data.condition.mask_edges`), which
    mask-first training puts in the edge channel of a share of the samples."""

    def __init__(self, slices: CardiacSliceDataset, latents: torch.Tensor, stats: dict, mask_edges_from=None):
        if len(latents) != len(slices):
            raise ValueError(f"{len(latents)} latents for {len(slices)} slices")
        self.slices = slices
        self.latents = normalize(latents.float(), stats).contiguous()
        self.data_cfg = mask_edges_from

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        item = self.slices[i]
        out = {"latent": self.latents[i], "cond": item["cond"], "view": item["view"]}
        if self.data_cfg is not None:
            edge = mask_edges(item["label"].numpy(), self.data_cfg)
            out["mask_edge"] = torch.from_numpy(edge).float()[None]
        return out
