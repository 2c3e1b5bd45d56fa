"""Command line: one subcommand per pipeline stage.

    python -m mmldm phantom    --subjects 20 --out data/raw/phantom
    python -m mmldm preprocess --source data/raw/phantom --out data/processed/phantom.h5 --size 64

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
