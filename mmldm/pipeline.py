"""The whole run: make the data, then execute the numbered notebooks headless with papermill.

``./run_all.sh [--profile laptop] [--source DIR] [--force]`` calls :func:`main`. Each stage is
one notebook; executed copies go to ``runs/<profile>/notebooks/`` (git-ignored), so the committed
notebooks stay output-free. A stage is skipped when its stamp (a hash of the notebook, the
config and the stamps of the stages before it) matches and its outputs exist, so a second run
only redoes what changed. The first failure stops the run and names the notebook and the cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmldm.config import REPO_ROOT, load_config, to_dict
from mmldm.data.source import ensure_source
from mmldm.errors import MMLDMError, Terminated, terminate_as_interrupt
from mmldm.lock import run_lock

NOTEBOOKS = REPO_ROOT / "notebooks"


@dataclass
class Stage:
    notebook: str  # file name in notebooks/
    outputs: tuple[str, ...] = ()  # files it must leave behind (config-relative names resolved at run time)


STAGES = [
    Stage("01_data_exploration.ipynb"),
    Stage("02_preprocessing.ipynb", outputs=("{store}",)),
    Stage("03_vqvae_training.ipynb", outputs=("{runs}/vqvae/last.pt", "{runs}/vqvae/recon_metrics.json",
                                              "{figures}/03_reconstructions.png")),
    Stage("04_ldm_training.ipynb", outputs=("{runs}/ldm/last.pt", "{figures}/04_samples.png")),
    # The report goes into the folder above the figures (report/ for paper and laptop, the run
    # folder for smoke: see mmldm.report.report_dir).
    Stage("05_evaluation.ipynb", outputs=("{runs}/evaluation/metrics.json", "{figures}/../report.md",
                                          "{figures}/../metrics.json", "{figures}/05_generated_vs_real.png")),
    # Headless, the interactive notebook still runs end to end and saves its denoising strip.
    Stage("06_interactive.ipynb", outputs=("{figures}/06_trajectory.png",)),
]


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def run(profile: str, source: str | None = None, force: bool = False, only: list[str] | None = None,
        overrides: list[str] | None = None) -> None:
    overrides = list(overrides or [])
    if source is not None:
        overrides.append(f"paths.source={source}")
    cfg = load_config(profile, overrides=overrides)
    run_dir = cfg.run_dir
    with run_lock(run_dir, "run_all.sh"):  # one pipeline per run folder (the trainers lock their own folders)
        _run(cfg, profile, run_dir, force, only, overrides)


def _run(cfg, profile: str, run_dir: Path, force: bool, only: list[str] | None, overrides: list[str]) -> None:
    import papermill as pm

    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    stamps = run_dir / "stamps"
    stamps.mkdir(exist_ok=True)
    cfg_bytes = json.dumps(to_dict(cfg), sort_keys=True).encode()

    t_all = time.time()
    t0 = time.time()
    source = ensure_source(cfg)
    what = f"phantom, {cfg.paths.phantom_subjects} subjects" if cfg.paths.is_phantom else "real data"
    print(f"[00 data] {source} ({what}, {time.time() - t0:.1f} s)", flush=True)

    previous = b""
    params = {"profile": profile, "overrides": overrides}
    for stage in STAGES:
        name = stage.notebook.removesuffix(".ipynb")
        nb = NOTEBOOKS / stage.notebook
        stamp = _hash(nb.read_bytes(), cfg_bytes, previous)
        previous += stamp.encode()  # the chain is the same with or without --only
        if only and not any(name.startswith(o) for o in only):
            continue
        outputs = [Path(o.format(store=cfg.store_path, runs=run_dir, figures=cfg.figures_dir)) for o in stage.outputs]
        stamp_file = stamps / f"{name}.stamp"
        if (not force and stamp_file.exists() and stamp_file.read_text() == stamp
                and all(o.exists() for o in outputs)):
            print(f"[{name}] up to date, skipped (use --force to redo)", flush=True)
            continue
        out_nb = run_dir / "notebooks" / stage.notebook
        t0 = time.time()
        print(f"[{name}] running ...", flush=True)
        try:
            pm.execute_notebook(str(nb), str(out_nb), parameters=params, kernel_name="python3",
                                cwd=str(NOTEBOOKS), progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            raise MMLDMError(
                f"notebook {stage.notebook} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                f"executed copy with the traceback: {out_nb}"
            ) from None
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise MMLDMError(f"notebook {stage.notebook} finished but did not write {', '.join(missing)}")
        stamp_file.write_text(stamp)
        print(f"[{name}] done in {time.time() - t0:.1f} s", flush=True)
    print(f"[all] finished in {time.time() - t_all:.1f} s; executed notebooks in {run_dir / 'notebooks'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=os.environ.get("MMLDM_PROFILE", "laptop"),
                   help="paper (GPU), laptop (default, CPU) or smoke (seconds, for tests)")
    p.add_argument("--source", help="a real dataset folder (M&Ms-2, M&Ms or ACDC) instead of the phantom")
    p.add_argument("--force", action="store_true", help="redo stages even when up to date")
    p.add_argument("--only", nargs="*", help="run only stages whose notebook name starts with these")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    if argv is None:  # the real command line: SIGTERM cleans up (temporary files, the lock) like Ctrl-C
        terminate_as_interrupt()
    try:
        run(args.profile, source=args.source, force=args.force, only=args.only, overrides=args.set)
    except MMLDMError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("run_all: terminated (SIGTERM)", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
