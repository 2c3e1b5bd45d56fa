"""The dependency rule of docs/architecture.md, checked on the source: data flows one way.

Every ``import mmldm...`` of every module (top level or inside a function) is read with ``ast``;
no module is imported, so the test is fast and cannot be fooled by lazy imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmldm"


def imports_of(path: Path) -> set[str]:
    """The mmldm modules ``path`` imports (``from mmldm.x import y`` counts as mmldm.x and mmldm.x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mmldm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmldm"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def importers_of(prefix: str) -> dict[str, set[str]]:
    return {
        m: {i for i in imps if i == prefix or i.startswith(prefix + ".")}
        for m, imps in MODULES.items()
        if any(i == prefix or i.startswith(prefix + ".") for i in imps)
    }


def test_the_scan_sees_the_package():
    assert {"mmldm.inference", "mmldm.train.ldm", "mmldm.data.condition", "mmldm.viz.widgets"} <= set(MODULES)
    assert "mmldm.inference" in MODULES["mmldm.train.ldm"]  # the trainer draws its samples through it


def test_nothing_outside_train_imports_train_to_generate():
    allowed = {
        "mmldm.cli": "the train-vqvae / train-ldm commands",
        "mmldm.config": "the training sections' config dataclasses (EMAConfig, TrainConfig)",
        "mmldm.evaluate.run": "trains the judge segmenter when the run has none (training, not generating)",
    }
    offenders = {
        m: sorted(i)
        for m, i in importers_of("mmldm.train").items()
        if not m.startswith("mmldm.train") and m not in allowed
    }
    assert not offenders, f"modules outside train/ import train/: {offenders}"
    assert importers_of("mmldm.train")["mmldm.evaluate.run"] <= {
        "mmldm.train.segmenter",
        "mmldm.train.segmenter.train_segmenter",
    }


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        (
            "mmldm.data",
            ("mmldm.models", "mmldm.diffusion", "mmldm.train", "mmldm.inference", "mmldm.evaluate", "mmldm.viz"),
        ),
        ("mmldm.models", ("mmldm.diffusion", "mmldm.train", "mmldm.inference", "mmldm.evaluate", "mmldm.viz")),
        (
            "mmldm.diffusion",
            ("mmldm.models", "mmldm.train", "mmldm.inference", "mmldm.evaluate", "mmldm.viz", "mmldm.checkpoint"),
        ),
        ("mmldm.inference", ("mmldm.train", "mmldm.evaluate", "mmldm.viz")),
        ("mmldm.viz", ("mmldm.train", "mmldm.evaluate")),
    ],
)
def test_lower_layers_never_import_higher_ones(layer, forbidden):
    bad = {
        m: sorted(i for i in imps if i.startswith(forbidden))
        for m, imps in MODULES.items()
        if (m == layer or m.startswith(layer + ".")) and any(i.startswith(forbidden) for i in imps)
    }
    assert not bad, f"{layer} imports a higher layer: {bad}"


def test_samplers_import_their_base_not_the_loop():
    for name in ("ddpm", "ddim", "dpm_solver"):
        imps = MODULES[f"mmldm.diffusion.{name}"]
        assert "mmldm.diffusion.base_sampler" in imps and "mmldm.diffusion.sampling_loop" not in imps, name
    assert not any(
        i.startswith(("mmldm.diffusion.ddpm", "mmldm.diffusion.ddim", "mmldm.diffusion.dpm_solver"))
        for i in MODULES["mmldm.diffusion.base_sampler"]
    )


def test_no_two_modules_share_a_file_name_for_different_jobs():
    # generate / sample / pipeline each meant two things once; a newcomer finds a piece by its name.
    stems: dict[str, list[str]] = {}
    for m in MODULES:
        stems.setdefault(m.rsplit(".", 1)[-1], []).append(m)
    shared = {s: ms for s, ms in stems.items() if len(ms) > 1 and s not in {"__init__", "mmldm"}}
    # data/phantom (package) and phantom as a stem elsewhere would be fine; these pairs are the same idea
    expected = {
        "segmenter": ["mmldm.models.segmenter", "mmldm.train.segmenter"],
        "vqvae": ["mmldm.models.vqvae", "mmldm.train.vqvae"],
    }
    assert {
        s: sorted(ms)
        for s, ms in shared.items()
        if s not in {"data", "evaluate", "viz", "train", "models", "diffusion", "readers", "phantom"}
    } == expected
    for name in ("sample", "pipeline", "generate"):
        assert name not in stems, f"a module named {name}.py is back: {stems[name]}"
