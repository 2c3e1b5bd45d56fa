"""The whole run: make the data, then execute the numbered notebooks headless with papermill.

``./run_all.sh [--profile laptop] [--source DIR] [--name NAME] [--force] [--publish]`` calls
:func:`main`. Each stage is one notebook. A run keeps to itself: the executed copies go to
``runs/<run>/notebooks/`` and its figures and report to ``runs/<run>/`` (``<run>`` is
``<kind>_<profile>``, e.g. ``acdc_laptop``, ``phantom_smoke``, or ``--name``; all git-ignored), so
the committed notebooks stay output-free and the tracked ``report/`` changes only with
``--publish``. A stage is skipped only when its record (``runs/<run>/stamps/<stage>.json``,
:mod:`mmldm.stage_record`) says it finished with the same notebook and settings, and every file it
read (the outputs of the stages before it, the source folder) and wrote still has the content it
recorded: a changed store or checkpoint re-runs everything downstream, whichever command changed it,
and a failed, interrupted or damaged stage is never up to date. ``--force`` re-runs the selected
stages (the trainers resume a checkpoint of the same model: a finished one trains no further);
``--retrain`` also starts the training stages from scratch, setting their old checkpoints aside in
``<run>/<stage>/replaced/``.
While a stage runs, what its notebook prints is shown (indented), the trainers' progress lines
(step / total, images/s, ETA) and the other stages' bars as lines (``mmldm.progress``) among it.
The first failure stops the run and names the notebook, the cell and its error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmldm.atomic import copy_file, write_text
from mmldm.config import REPO_ROOT, load_config, to_dict
from mmldm.data.source import ensure_source
from mmldm.errors import MMLDMError, Terminated, quiet_broken_pipe, terminate_as_interrupt
from mmldm.lock import run_lock
from mmldm.report import report_dir
from mmldm.stage_record import forget, record_path, why_stale, write_record

NOTEBOOKS = REPO_ROOT / "notebooks"


@dataclass
class Stage:
    notebook: str  # file name in notebooks/
    outputs: tuple[str, ...] = ()  # files it must leave behind (config-relative names resolved at run time)


STAGES = [
    Stage("01_data_exploration.ipynb", outputs=("{figures}/01_overlay_grid.png",)),
    Stage("02_preprocessing.ipynb", outputs=("{store}",)),
    Stage(
        "03_vqvae_training.ipynb",
        outputs=("{runs}/vqvae/last.pt", "{runs}/vqvae/recon_metrics.json", "{figures}/03_reconstructions.png"),
    ),
    Stage("04_ldm_training.ipynb", outputs=("{runs}/ldm/last.pt", "{figures}/04_samples.png")),
    # The report goes into the folder above the figures (the run folder with the default
    # paths.figures: see mmldm.report.report_dir).
    Stage(
        "05_evaluation.ipynb",
        outputs=(
            "{runs}/evaluation/metrics.json",
            "{figures}/../report.md",
            "{figures}/../metrics.json",
            "{figures}/05_generated_vs_real.png",
        ),
    ),
    # Headless, the interactive notebook still runs end to end and saves its denoising strip.
    Stage("06_interactive.ipynb", outputs=("{figures}/06_trajectory.png",)),
]


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def run(
    profile: str,
    source: str | None = None,
    force: bool = False,
    only: list[str] | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    publish: str | Path | None = None,
    retrain: bool = False,
) -> None:
    overrides = list(overrides or [])
    if source is not None:
        overrides.append(f"paths.source={source}")
    if name is not None:
        overrides.append(f"paths.name={name}")
    cfg = load_config(profile, overrides=overrides)
    run_dir = cfg.run_dir
    with run_lock(run_dir, "run_all.sh"):  # one pipeline per run folder (the trainers lock their own folders)
        record = _check_source(cfg, run_dir)
        _run(cfg, profile, run_dir, force or retrain, select(only), overrides, record, retrain)
        if publish is not None:
            written = publish_report(report_dir(cfg), Path(publish))
            print(f"[publish] {len(written)} files copied into {publish}", flush=True)


def select(only: list[str] | None) -> list[Stage]:
    """The stages ``--only`` names (all without it; none for ``--only none``, which makes the data
    only). A name that starts no stage's notebook is refused, listing the stages."""
    if not only:
        return list(STAGES)
    if only == ["none"]:
        return []
    unknown = [o for o in only if not any(s.notebook.startswith(o) for s in STAGES)]
    if unknown:
        names = ", ".join(s.notebook.removesuffix(".ipynb") for s in STAGES)
        raise MMLDMError(f"--only {' '.join(unknown)}: no such stage (the stages: {names}; or none)")
    return [s for s in STAGES if any(s.notebook.startswith(o) for o in only)]


def _check_source(cfg, run_dir: Path) -> tuple[Path, str]:
    """Two folders of the same kind would share ``runs/<kind>_<profile>``: refuse the second one.

    The run folder records the data it was made from (``source.txt``); the phantom is one source
    whatever its settings (the stamps redo what a changed setting touches)."""
    record = run_dir / "source.txt"
    current = "phantom" if cfg.paths.is_phantom else str(cfg.source_dir.resolve())
    if record.exists():
        before = record.read_text().strip()
        if before and before != current:
            raise MMLDMError(
                f"{run_dir} holds a run on {before}, not {current}; give this one its own folder with "
                f"--name NAME (or remove {run_dir} and {cfg.store_path} to start over)"
            )
    return record, current


class _Indented:
    """A file-like that writes what a notebook prints to ``stream`` as it comes, each line indented."""

    def __init__(self, stream, prefix: str = "    "):
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self.at_start:
                out.append(self.prefix)
            out.append(piece)
            self.at_start = piece.endswith(("\n", "\r"))
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _run(
    cfg,
    profile: str,
    run_dir: Path,
    force: bool,
    selected: list[Stage],
    overrides: list[str],
    record: tuple[Path, str],
    retrain: bool = False,
) -> None:
    import papermill as pm

    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    stamps = run_dir / "stamps"
    stamps.mkdir(exist_ok=True)
    cfg_bytes = json.dumps(to_dict(cfg), sort_keys=True).encode()
    # The trainers print a progress line per log row (step / total, images/s, ETA) instead of a
    # notebook widget bar, which a headless run would never show (the kernel inherits this).
    os.environ["MMLDM_PROGRESS"] = "lines"

    t_all = time.time()
    t0 = time.time()
    source = ensure_source(cfg)
    what = f"phantom, {cfg.paths.phantom_subjects} subjects" if cfg.paths.is_phantom else "real data"
    if not record[0].exists():  # recorded once the data is there (a mistyped folder is not remembered)
        write_text(record[0], record[1] + "\n")
    print(f"[00 data] {source} ({what}, {time.time() - t0:.1f} s); run folder {run_dir}", flush=True)

    # The notebooks 03 and 04 take ``resume``: "auto" continues a checkpoint of the same model,
    # "replace" sets old checkpoints aside and trains from scratch.
    params = {"profile": profile, "overrides": overrides, "resume": "replace" if retrain else "auto"}
    upstream: list[Path] = [Path(source)]  # what a stage may have read: the source and every earlier output
    for stage in STAGES:
        name = stage.notebook.removesuffix(".ipynb")
        nb = NOTEBOOKS / stage.notebook
        outputs = [Path(o.format(store=cfg.store_path, runs=run_dir, figures=cfg.figures_dir)) for o in stage.outputs]
        inputs, upstream = list(upstream), upstream + outputs
        if stage not in selected:
            continue
        k = f"{selected.index(stage) + 1}/{len(selected)}"
        stamp = _hash(nb.read_bytes(), cfg_bytes)
        rec = record_path(stamps, name)
        reason = "--retrain" if retrain else "--force" if force else why_stale(rec, stamp, inputs, outputs)
        if reason is None:
            print(f"[{name}] up to date, skipped (use --force to redo)", flush=True)
            continue
        forget(rec)  # from here until it finishes, the stage is not up to date
        out_nb = run_dir / "notebooks" / stage.notebook
        t0 = time.time()
        print(f"[{name}] running (stage {k}; {reason}) ...", flush=True)
        try:
            pm.execute_notebook(
                str(nb),
                str(out_nb),
                parameters=params,
                kernel_name="python3",
                cwd=str(NOTEBOOKS),
                progress_bar=False,
                log_output=False,
                stdout_file=_Indented(sys.stdout),
                stderr_file=_Indented(sys.stderr),
                kernel_manager_class=_quiet_kernel_manager(run_dir / "notebooks" / f"{name}.kernel.log"),
                shutdown_kernel="immediate",  # Ctrl-C or an error: the kernel stops at once
            )
        except pm.PapermillExecutionError as e:
            error = "\n".join(line for line in (e.evalue or "").splitlines() if line.strip())
            raise MMLDMError(
                f"notebook {stage.notebook} failed in cell {e.exec_count} ({e.ename}: {error}); "
                f"executed copy with the traceback: {out_nb}"
            ) from None
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise MMLDMError(f"notebook {stage.notebook} finished but did not write {', '.join(missing)}")
        write_record(rec, stamp, inputs, outputs)
        print(f"[{name}] done in {time.time() - t0:.1f} s", flush=True)
    print(
        f"[all] finished in {time.time() - t_all:.1f} s; executed notebooks in {run_dir / 'notebooks'}, "
        f"report in {report_dir(cfg)}"
    )


def _quiet_kernel_manager(log: Path):
    """A kernel manager whose kernel writes its own log (ipykernel's start-up warnings, "KeyboardInterrupt
    caught in kernel") to ``log`` instead of the user's terminal. What the cells print still comes
    through papermill (shown indented); a failing cell is reported from the executed notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:  # the kernel holds its own copy of the descriptor
                kw["stderr"] = f
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def publish_report(src: Path, dest: Path) -> list[Path]:
    """Copy a run's report (``report.md``, ``metrics.json`` and the files the report links to)
    into ``dest`` (``report/`` for ``--publish``), each file atomically. Linked files go to
    ``dest/figures/`` and the links are rewritten to match; nothing else in ``dest`` is touched."""
    report, metrics = src / "report.md", src / "metrics.json"
    for f in (report, metrics):
        if not f.exists():
            raise MMLDMError(f"--publish: {f} does not exist (run stage 05 first)")
    text = report.read_text()
    written: list[Path] = []

    def relink(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("#", "/")):
            return m.group(0)
        path = (src / target).resolve()
        if not path.is_file():
            return m.group(0)
        new = f"figures/{path.name}"
        written.append(copy_file(path, dest / new))
        return m.group(1) + new + m.group(3)

    dest.mkdir(parents=True, exist_ok=True)
    text = _LINK.sub(relink, text)
    written.append(copy_file(metrics, dest / "metrics.json"))
    written.append(write_text(dest / "report.md", text))  # last: the report never names a missing figure
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n")[0])
    p.add_argument(
        "--profile",
        default=os.environ.get("MMLDM_PROFILE", "laptop"),
        help="paper (GPU), laptop (default, CPU) or smoke (seconds, for tests)",
    )
    p.add_argument("--source", help="a real dataset folder (M&Ms-2, M&Ms or ACDC) instead of the phantom")
    p.add_argument(
        "--force",
        action="store_true",
        help="redo the stages even when up to date (training resumes a checkpoint of the same model)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="like --force, and train the VQ-VAE and the LDM from scratch (old checkpoints are set "
        "aside in <run>/<stage>/replaced/, never deleted)",
    )
    p.add_argument(
        "--only",
        nargs="*",
        help="run only the stages whose notebook name starts with these (01 ... 06; none: the data only)",
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument(
        "--name",
        help="the run folder's name (runs/NAME, data/processed/NAME.h5) instead of "
        "<kind>_<profile> (acdc_laptop, mnms2_paper, phantom_laptop...)",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="at the end, copy the run's report.md, metrics.json and figures into report/ (tracked)",
    )
    p.add_argument("--publish-to", metavar="DIR", help="with --publish: copy there instead of report/")
    args = p.parse_args(argv)
    if args.publish_to and not args.publish:
        p.error("--publish-to needs --publish")
    publish = (Path(args.publish_to) if args.publish_to else REPO_ROOT / "report") if args.publish else None
    if argv is None:  # the real command line: SIGTERM cleans up (temporary files, the lock) like Ctrl-C
        terminate_as_interrupt()
    try:
        run(
            args.profile,
            source=args.source,
            force=args.force,
            only=args.only,
            overrides=args.set,
            name=args.name,
            publish=publish,
            retrain=args.retrain,
        )
    except MMLDMError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_all: interrupted; the stage that was running is not marked done", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except Terminated:
        print("run_all: terminated (SIGTERM)", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
