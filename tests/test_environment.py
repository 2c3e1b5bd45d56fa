"""environment.yml (conda) and pyproject.toml must list the same packages, pinned alike."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _conda() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip}


def test_same_packages_in_pyproject_and_environment():
    assert _pyproject() == _conda()


def test_torch_is_pinned():
    # An unpinned torch pulls a multi-GB CUDA build; the CPU wheel of 2.13.0 is what we test on.
    assert _pyproject()["torch"] == "torch==2.13.0"


def test_required_packages_present():
    need = {
        "torch",
        "jupyterlab",
        "h5py",
        "nibabel",
        "matplotlib",
        "ipywidgets",
        "papermill",
        "torchmetrics",
        "seaborn",
        "tqdm",
        "pyyaml",
        "pytest",
    }
    assert need <= set(_pyproject())
    assert any(n.startswith("opencv-python") for n in _pyproject())
