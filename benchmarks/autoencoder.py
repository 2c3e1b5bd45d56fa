"""Which autoencoder limits realism least? Its ceiling, measured on held-out slices.

For each VQ-VAE checkpoint: paired SSIM / PSNR / NMSE of the held-out slices' reconstructions,
the high-frequency power ratio (reconstruction / real, above 0.25 cycles/pixel) and the power
ratio in each octave band (mmldm/evaluate/spectrum.py's BANDS), and the
reconstruction FID: FID(reconstructed training slices, real held-out slices) beside the
real-vs-real baseline FID(real training slices, real held-out slices) at the same n, and their
ratio. No generated image can be more realistic than this ceiling, so it ranks autoencoders
before any LDM is trained on them (the same numbers as the ``autoencoder`` entries of
metrics.json's realism block).

    python benchmarks/autoencoder.py --store data/processed/acdc_laptop.h5 \\
        --checkpoint f8=runs/acdc_laptop/vqvae/last.pt f4=runs/exp/vq_f4/last.pt --n 512 \\
        --out runs/benchmarks/autoencoder.json

Needs the Inception TorchScript file for FID (see mmldm/evaluate/fid.py); without it the FID
columns are empty and the rest is still measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmldm import atomic
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.evaluate.fid import load_inception
from mmldm.evaluate.metrics import paired_metrics
from mmldm.evaluate.paired import pick_indices
from mmldm.evaluate.reconstruction import reconstruct_images
from mmldm.evaluate.run import INCEPTION_LABEL, INCEPTION_NAME, fid_block, load_images, mean_std
from mmldm.evaluate.spectrum import compare_spectra
from mmldm.inference import load_vqvae


def split_size(store: Path, split: str) -> int:
    ds = CardiacSliceDataset(store, split=split, expand=False)
    try:
        return len(ds)
    finally:
        ds.close()


def measure(vqvae, held: torch.Tensor, train: torch.Tensor, inception, reason: str, batch_size: int) -> dict:
    rec_held = reconstruct_images(vqvae, held, batch_size)
    rec_train = reconstruct_images(vqvae, train, batch_size)
    paired = paired_metrics(rec_held, held)
    spectra = compare_spectra({"heldout": held, "reconstruction": rec_held}, reference="heldout")
    fid = fid_block(inception, reason, held, rec_train, train, INCEPTION_NAME, INCEPTION_LABEL, batch_size=batch_size)
    return {
        "ssim": mean_std(paired["ssim"]),
        "psnr": mean_std(paired["psnr"]),
        "nmse": mean_std(paired["nmse"]),
        "hf_ratio": spectra["hf_ratio"]["reconstruction"],
        "bands": spectra["bands"],
        "band_ratio": spectra["band_ratio"]["reconstruction"],
        "rfid": fid["fid"],
        "real_vs_real_fid": fid["real_vs_real_fid"],
        "ratio": fid["ratio"],
        "n_heldout": len(held),
        "n_train": len(train),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="preprocessed store with train and val splits")
    ap.add_argument("--checkpoint", nargs="+", required=True, metavar="NAME=PATH", help="VQ-VAE checkpoints")
    ap.add_argument("--n", type=int, default=512, help="held-out and training slices each (evenly spread)")
    ap.add_argument("--inception", default=None, help="Inception TorchScript file (default: the usual places)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/benchmarks/autoencoder.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = Path(args.store)
    held = load_images(store, "val", pick_indices(split_size(store, "val"), args.n))
    train = load_images(store, "train", pick_indices(split_size(store, "train"), len(held)))
    inception, reason = load_inception(args.inception)
    rows = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        t0 = time.time()
        vqvae, ref = load_vqvae(path or name)
        row = measure(vqvae, held, train, inception, reason, args.batch_size)
        row.update(
            checkpoint=path or name,
            seconds=round(time.time() - t0, 1),
            down_channels=list(vqvae.config.down_channels),
            latent_channels=vqvae.config.latent_channels,
            codebook=vqvae.config.codebook_size,
        )
        rows[name] = row
        fid = (
            "n/a" if row["rfid"] is None else f"{row['rfid']:.1f} / {row['real_vs_real_fid']:.1f} = {row['ratio']:.2f}"
        )
        print(
            f"{name:>16}  SSIM {row['ssim']['mean']:.3f}  PSNR {row['psnr']['mean']:.1f}  "
            f"NMSE {row['nmse']['mean']:.3f}  HF {row['hf_ratio']:.2f}x  "
            f"bands {' '.join(f'{r:.2f}' for r in row['band_ratio'])}  rFID {fid}  (n {len(held)})",
            flush=True,
        )
    atomic.write_text(args.out, json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
