"""Command line: one subcommand per pipeline stage.

    python -m mmldm phantom    --subjects 20 --out data/raw/phantom
    python -m mmldm preprocess --source data/raw/phantom --out data/processed/phantom.h5 --size 64
    python -m mmldm train-vqvae --config laptop [--resume]
    python -m mmldm train-ldm   --config laptop [--resume]
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
