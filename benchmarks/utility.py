"""Downstream utility: does a segmenter learn more from real + synthetic slices than from real alone?

    python benchmarks/utility.py --run runs/acdc_laptop --store data/processed/acdc_laptop.h5

The question researchers make synthetic MRI for. The same segmenter (the run's anatomy judge,
models/segmenter.py, with the run's ``segmenter`` settings) is trained from scratch on three arms,

    real        the real training slices of the regime's subjects
    real+synth  those slices and a synthetic set made from the same subjects' masks
    synth       the synthetic set alone

for each regime (``--subjects``: the first n of a fixed shuffle of the store's training subjects,
nested, so the 5 are among the 20; ``all`` is every training subject) and each ``--seeds`` (the
segmenter's initialisation and data order). Every arm of a regime gets the same number of
optimiser steps of the same batch size (``--steps``, one per regime), the same dihedral +
intensity-jitter augmentation, and is scored on the same held-out real slices: the store's
``val`` split, the subjects the evaluation holds out, never seen by the generator. The score is
the Dice of each class (LV, MYO, RV) per held-out slice (NaN where a class is in neither map),
averaged over slices, and the mean foreground Dice.

The synthetic set of a regime is ``mmldm synthesize`` on the regime's subjects' training masks
(store rows): each mask, and ``--augment-masks`` warped copies of it (data/mask_augment.py; a
regime listed in ``--full-augment`` uses ``--augment-masks-full``), ``--per-mask`` samples each,
with the profile's sampler and guidance and ``--precision``. Its audit (read-back Dice,
memorisation) is kept beside it.

Caveat, said in the report too: the generator itself was trained on every training subject's
images, so in the low-data regimes the synthetic arm carries image statistics from subjects the
real arm does not see (only their masks are the regime's). A stricter study retrains the
generator per regime.

Writes under ``--out`` (default ``<run>/utility``): ``synthetic/<regime>/`` (nnU-Net sets),
``results/<regime>_<arm>_s<seed>.json`` (one per trained segmenter, atomically; a re-run skips
those finished with the same steps and training set), ``utility.json`` (settings, regimes, every
row, mean and standard deviation per regime and arm), ``utility.csv`` and ``utility.png``, after
every regime. The report (``write_report``) shows them when present in the run folder.
Benchmarks print; they never assert.

Log (ACDC, ``laptop`` run of session 4, 2-core CPU, bf16): 100 optimiser steps of 32 left the
5-subject real arm at mean foreground Dice 0.40 (seed 0), barely trained; 250 / 300 / 300 steps
(5 / 20 / all subjects) is what fitted one session, about 3-4 minutes per segmenter. The full
regime uses the source masks only (``--augment-masks-full 0``): 1,289 real + 1,289 synthetic.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm import atomic  # noqa: E402
from mmldm.checkpoint import load_checkpoint  # noqa: E402
from mmldm.config import Config, from_dict  # noqa: E402
from mmldm.data.dataset import dihedral_jitter  # noqa: E402
from mmldm.data.store import open_store, read_meta  # noqa: E402
from mmldm.evaluate.anatomy import anatomy_dice  # noqa: E402
from mmldm.inference import LatentDiffusion  # noqa: E402
from mmldm.synthesize import synthesize  # noqa: E402
from mmldm.train.segmenter import fit_segmenter  # noqa: E402

ARMS = ("real", "real+synth", "synth")
CLASSES = ("LV", "MYO", "RV", "fg")
FAILED_BELOW = 0.01  # mean foreground Dice of a segmenter whose training collapsed (see failed())


class Slices(Dataset):
    """Compact segmenter items from arrays: images (N, H, W) in [-1, 1], labels (N, H, W) canonical."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = True, jitter: float = 0.1):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images.astype(np.float32), labels.astype(np.uint8)
        self.augment, self.jitter = augment, jitter

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image, label = torch.from_numpy(self.images[i].copy()), self.labels[i]
        edge = np.zeros_like(label)
        if self.augment:
            image, label, edge = dihedral_jitter(image, label, edge, self.jitter)
        return {
            "image": image[None].contiguous(),
            "label": torch.from_numpy(np.array(label)),
            "edge": torch.from_numpy(np.array(edge))[None],
        }


def store_slices(store: Path, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (float32, [-1, 1]) and labels of the store rows where ``mask`` is true."""
    with open_store(store) as f:
        rows = np.flatnonzero(mask)
        return f["image"][rows].astype(np.float32), f["label"][rows]


def regime_subjects(meta: dict, regimes: list[str], seed: int) -> dict[str, list[str]]:
    """Each regime's training subjects: the first n of one seeded shuffle (nested), or all."""
    train = sorted({str(s) for s in meta["subject"][meta["split"] == "train"]})
    order = [train[i] for i in np.random.default_rng(seed).permutation(len(train))]
    out = {}
    for r in regimes:
        n = len(train) if r == "all" else int(r)
        if not 0 < n <= len(train):
            raise SystemExit(f"regime {r}: the store has {len(train)} training subjects")
        out[r] = sorted(order[:n])
    return out


def read_synthetic(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A synthesize folder's images (back to [-1, 1]) and canonical labels."""
    images, labels = [], []
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        name = path.name.removesuffix(".nii.gz")
        labels.append(np.asarray(nib.load(path).dataobj)[..., 0])
        images.append(np.asarray(nib.load(folder / "imagesTr" / f"{name}_0000.nii.gz").dataobj)[..., 0] * 2 - 1)
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.uint8)


def score(model, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean Dice per class over held-out slices (NaN-skipping), the mean foreground Dice last."""
    d = anatomy_dice(model, torch.from_numpy(images)[:, None], torch.from_numpy(labels).long())
    return {c: float(np.nanmean(d[f"dice_{c}"])) for c in CLASSES}


def failed(row: dict) -> bool:
    """A segmenter that found no foreground in any held-out slice: its training collapsed to
    background (seen once on ACDC, real arm, 20 subjects, seed 0: loss stuck at 0.96)."""
    return row["dice"]["fg"] < FAILED_BELOW


def summarise(rows: list[dict]) -> dict:
    """{regime: {arm: {class: {"mean", "std", "median", "n", "failed"}}}} over seeds (std with
    ddof 1; ``failed``: seeds whose training collapsed, counted in the mean as they are)."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["regime"], {}).setdefault(row["arm"], []).append(row)
    for arms in out.values():
        for arm, group in arms.items():
            arms[arm] = {
                c: {
                    "mean": float(np.mean([g["dice"][c] for g in group])),
                    "std": float(np.std([g["dice"][c] for g in group], ddof=1)) if len(group) > 1 else None,
                    "median": float(np.median([g["dice"][c] for g in group])),
                    "n": len(group),
                    "failed": sum(failed(g) for g in group),
                }
                for c in CLASSES
            }
    return out


def plot(summary: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary)
    colours = {"real": "tab:blue", "real+synth": "tab:green", "synth": "tab:orange"}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True)
    for ax, c in zip(axes, CLASSES):
        for k, arm in enumerate(ARMS):
            xs = np.arange(len(regimes)) + (k - 1) * 0.22
            for x, regime in zip(xs, regimes):
                s = summary[regime].get(arm)
                if s is None:
                    continue
                seeds = [r["dice"][c] for r in rows if r["regime"] == regime and r["arm"] == arm]
                ax.scatter([x] * len(seeds), seeds, s=10, color=colours[arm], alpha=0.5)
                ax.errorbar(x, s[c]["mean"], yerr=s[c]["std"] or 0, fmt="o", color=colours[arm], capsize=3,
                            label=arm if x == xs[0] else None)  # fmt: skip
        ax.set_xticks(range(len(regimes)), [f"{r} subj." for r in regimes])
        ax.set_title("mean foreground" if c == "fg" else c)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice on held-out real slices")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Segmenter trained on real, real + synthetic, synthetic slices (mean ± sd over seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(out: Path, settings: dict, regimes: dict, rows: list[dict]) -> dict:
    """utility.json, utility.csv and utility.png from the rows so far (after every regime)."""
    summary = summarise(rows)
    result = {"settings": settings, "regimes": regimes, "rows": rows, "summary": summary}
    atomic.write_text(out / "utility.json", json.dumps(result, indent=2, default=str) + "\n")
    with open(out / "utility.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["regime", "arm", "seed", "train_slices", "steps", *[f"dice_{c}" for c in CLASSES]])
        for r in rows:
            w.writerow(
                [r["regime"], r["arm"], r["seed"], r["train_slices"], r["steps"], *[r["dice"][c] for c in CLASSES]]
            )
    (out / "utility.csv.tmp").replace(out / "utility.csv")
    plot(summary, rows, out / "utility.png")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run folder with ldm/last.pt (e.g. runs/acdc_laptop)")
    p.add_argument("--store", help="the run's preprocessed store (default: the path its profile names)")
    p.add_argument("--out", help="default: <run>/utility")
    p.add_argument("--subjects", nargs="+", default=["5", "20", "all"], help="regimes (default 5 20 all)")
    p.add_argument("--steps", type=int, nargs="+", default=[250, 300, 300], help="optimiser steps per regime")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--subject-seed", type=int, default=0, help="the shuffle the regimes take subjects from")
    p.add_argument("--augment-masks", type=int, default=3, help="warped copies per mask (default 3)")
    p.add_argument("--augment-masks-full", type=int, default=0, help="the same for --full-augment regimes")
    p.add_argument("--full-augment", nargs="*", default=["all"], help="regimes that use --augment-masks-full")
    p.add_argument("--per-mask", type=int, default=1, help="samples per mask (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="segmenter batch (default: the profile's)")
    p.add_argument("--no-augment", action="store_true", help="train without dihedral/intensity augmentation")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--edges", choices=["auto", "none"], help="edge source (default: the checkpoint profile's)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to train (default all three)")
    args = p.parse_args(argv)
    if len(args.steps) != len(args.subjects):
        raise SystemExit(f"--steps needs one count per regime ({len(args.subjects)}), got {len(args.steps)}")
    torch.set_num_threads(args.threads)

    run = Path(args.run)
    checkpoint = run / "ldm" / "last.pt"
    cfg = from_dict(Config, load_checkpoint(checkpoint, stage="ldm")["config"], where=str(checkpoint))
    store = Path(args.store) if args.store else cfg.store_path
    out = Path(args.out) if args.out else run / "utility"
    (out / "results").mkdir(parents=True, exist_ok=True)
    seg_cfg = cfg.segmenter
    if args.batch_size:
        seg_cfg = dataclasses.replace(seg_cfg, batch_size=args.batch_size)

    with open_store(store) as f:
        meta = read_meta(f)
    subjects = regime_subjects(meta, args.subjects, args.subject_seed)
    held_images, held_labels = store_slices(store, meta["split"] == "val")
    print(f"held out: {len(held_images)} real slices of {len(set(meta['subject'][meta['split'] == 'val']))} subjects")

    settings = {
        **vars(args),
        "checkpoint": str(checkpoint),
        "ldm_weights": LatentDiffusion.from_checkpoint(checkpoint).weights,  # the report checks it is its model
        "store": str(store),
        "segmenter": {k: v for k, v in dataclasses.asdict(seg_cfg).items() if k != "seed"},
        "held_out_slices": len(held_images),
        "sampler": dataclasses.asdict(cfg.sampler),
        "guidance": dataclasses.asdict(cfg.guidance),
    }
    judge = run / "segmenter" / "segmenter.pt"  # the run's evaluation segmenter reads the sets back
    judge = judge if judge.exists() else None
    regimes, rows = {}, []
    for regime, steps in zip(args.subjects, args.steps):
        chosen = subjects[regime]
        real = store_slices(store, (meta["split"] == "train") & np.isin(meta["subject"].astype(str), chosen))
        m = args.augment_masks_full if regime in args.full_augment else args.augment_masks
        synth_dir = out / "synthetic" / f"{regime}_subjects"
        s = synthesize(
            checkpoint, store, synth_dir, split="train", subjects=chosen, per_mask=args.per_mask,
            augment_masks=m, edges=args.edges, precision=args.precision, dataset_name=f"Utility{regime}",
            train_store=store, segmenter=judge,
        )  # fmt: skip
        synth = read_synthetic(synth_dir)
        audit = json.loads((synth_dir / "audit.json").read_text()) if (synth_dir / "audit.json").exists() else {}
        regimes[regime] = {
            "subjects": chosen,
            "real_slices": len(real[0]),
            "synthetic_slices": len(synth[0]),
            "augment_masks": m,
            "steps": steps,
            "synthesis_seconds": s["seconds"],
            "synthesis_images_per_second": s["images_per_second"],
            "audit": {k: audit.get(k) for k in ("dice", "memorisation", "n_flagged") if k in audit},
        }
        print(f"regime {regime}: {len(chosen)} subjects, {len(real[0])} real + {len(synth[0])} synthetic slices")
        arms = {
            "real": real,
            "real+synth": (np.concatenate([real[0], synth[0]]), np.concatenate([real[1], synth[1]])),
            "synth": synth,
        }
        for seed in args.seeds:
            for arm in args.arms:
                path = out / "results" / f"{regime}_{arm}_s{seed}.json"
                if path.exists():
                    done = json.loads(path.read_text())
                    same = (done.get("steps"), done.get("train_slices"), done.get("ldm_weights"))
                    if same == (steps, len(arms[arm][0]), settings["ldm_weights"]):
                        rows.append(done)
                        continue
                start = time.perf_counter()
                model, losses = fit_segmenter(
                    dataclasses.replace(seg_cfg, seed=seed), Slices(*arms[arm], augment=not args.no_augment),
                    steps=steps, precision=args.precision, progress=True, desc=f"{regime} {arm} s{seed}",
                )  # fmt: skip
                row = {
                    "regime": regime,
                    "arm": arm,
                    "seed": seed,
                    "train_slices": len(arms[arm][0]),
                    "steps": steps,
                    "ldm_weights": settings["ldm_weights"],  # a resume with another model trains again
                    "final_loss": float(np.mean(losses[-10:])),
                    "seconds": round(time.perf_counter() - start, 1),
                    "dice": score(model, held_images, held_labels),
                }
                atomic.write_text(path, json.dumps(row, indent=2) + "\n")
                rows.append(row)
                d = row["dice"]
                print(f"  {arm:>10} s{seed}: LV {d['LV']:.3f} MYO {d['MYO']:.3f} RV {d['RV']:.3f} fg {d['fg']:.3f}")
        write_outputs(out, settings, regimes, rows)

    result = write_outputs(out, settings, regimes, rows)
    summary = result["summary"]
    print(f"{'regime':>7} {'arm':>10}  " + "  ".join(f"{c:>13}" for c in CLASSES))
    for regime, arms in summary.items():
        for arm, s in arms.items():
            cells = "  ".join(f"{s[c]['mean']:.3f} ± {s[c]['std'] or 0:.3f}" for c in CLASSES)
            print(f"{regime:>7} {arm:>10}  {cells}")
    print(f"wrote {out / 'utility.json'}, utility.csv, utility.png")
    return result


if __name__ == "__main__":
    main()
