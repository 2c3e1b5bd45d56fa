"""The repository's housekeeping: licence, citation, Python version, hooks, a README that stays short.

Each of these drifts silently (a version bumped in one file only, a README that grows a section
at a time), so each is checked against the one place that states it (pyproject.toml).
"""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO

README_SECTION_MAX_LINES = 80  # a newcomer reads the README in five minutes; details go to docs/


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _sections(markdown: str) -> dict[str, int]:
    """Lines per top-level section (``#`` or ``##`` heading to the next one), code fences skipped."""
    sizes: dict[str, int] = {}
    name, fenced = "(before the first heading)", False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,2} ", line):
            name = line
        sizes[name] = sizes.get(name, 0) + 1
    return sizes


def _links(markdown: str) -> list[str]:
    """Targets of inline markdown links ``[text](target)``, external ones left out."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", markdown) if not re.match(r"[a-z]+:", t)]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


# ---------------------------------------------------------------------------------------------
# The helpers themselves: a check that cannot fail checks nothing.
# ---------------------------------------------------------------------------------------------


def test_helpers_see_long_sections_links_and_anchors():
    text = "# T\nintro\n## Short\na\n## Long\n" + "x\n" * 100 + "```\n## not a heading\n```\n"
    sizes = _sections(text)
    assert sizes["## Short"] == 2 and sizes["## Long"] > README_SECTION_MAX_LINES
    assert "## not a heading" not in sizes
    assert _links("[a](docs/x.md#y) [b](https://e.org) [c](../b.md)") == ["docs/x.md#y", "../b.md"]
    anchors = _anchors("## Notebook 06's widgets\n### Stages, notebooks: outputs\n")
    assert anchors == {"notebook-06s-widgets", "stages-notebooks-outputs"}


# ---------------------------------------------------------------------------------------------
# Licence, citation, Python
# ---------------------------------------------------------------------------------------------


def test_license_is_mit_as_pyproject_declares():
    assert _pyproject()["project"]["license"] == {"text": "MIT"}
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text
    assert re.search(r"Copyright \(c\) \d{4} the mmldm contributors", text)


def test_citation_cff_is_cff_1_2_0_with_pyproject_version():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert str(cff["version"]) == _pyproject()["project"]["version"]
    assert cff["license"] == "MIT"
    for key in ("message", "title", "authors", "date-released", "abstract", "keywords"):
        assert cff.get(key), key
    assert all(a.get("name") or a.get("family-names") for a in cff["authors"])


def test_requires_python_3_11_everywhere():
    # tomllib (used by the tests) is 3.11+; environment.yml and the README must say the same.
    assert _pyproject()["project"]["requires-python"] == ">=3.11"
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    readme = (REPO / "README.md").read_text()
    assert "Python ≥ 3.11" in readme and not re.search(r"Python\s*(≥|>=)?\s*3\.10", readme)


# ---------------------------------------------------------------------------------------------
# Lint, format, notebook hygiene
# ---------------------------------------------------------------------------------------------


def test_pre_commit_runs_ruff_and_nbstripout_at_pinned_revs():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    repos = {r["repo"].rstrip("/").rsplit("/", 1)[-1]: r for r in config["repos"]}
    assert {"ruff-pre-commit", "nbstripout"} <= set(repos)
    hooks = {h["id"] for r in config["repos"] for h in r["hooks"]}
    assert {"ruff-check", "ruff-format", "nbstripout"} <= hooks
    for repo in config["repos"]:
        assert re.fullmatch(r"v?\d+(\.\d+)+", str(repo["rev"])), f"{repo['repo']}: pin a release, not {repo['rev']}"
    # pre-commit and ./run_tests.sh must format alike: the same ruff.
    pins = [r for r in _pyproject()["project"]["optional-dependencies"]["test"] if r.startswith("ruff")]
    assert len(pins) == 1 and pins[0].startswith("ruff=="), pins
    assert repos["ruff-pre-commit"]["rev"].lstrip("v") == pins[0].removeprefix("ruff==")


def test_ruff_configured_and_run_before_pytest():
    ruff = _pyproject()["tool"]["ruff"]
    assert ruff["line-length"] == 120 and ruff["target-version"] == "py311"
    assert {"E", "F", "W", "I", "B", "UP"} <= set(ruff["lint"]["select"])
    script = (REPO / "run_tests.sh").read_text()
    check, fmt, pytest = (script.find(s) for s in ("ruff check .", "ruff format --check .", 'pytest "$@"'))
    assert -1 < check < pytest and -1 < fmt < pytest, "run_tests.sh must run ruff check and format before pytest"
    assert "ruff format . && ruff check --fix ." in script  # the hint printed on failure


# ---------------------------------------------------------------------------------------------
# The README: a five-minute read that points to the rest
# ---------------------------------------------------------------------------------------------


def test_readme_sections_stay_short():
    sizes = _sections((REPO / "README.md").read_text())
    long = {name: n for name, n in sizes.items() if n > README_SECTION_MAX_LINES}
    assert not long, f"README sections over {README_SECTION_MAX_LINES} lines (move details to docs/): {long}"


def test_readme_links_architecture_and_benchmarks():
    links = {t.split("#")[0] for t in _links((REPO / "README.md").read_text())}
    assert {"docs/architecture.md", "benchmarks/README.md"} <= links


def test_relative_links_in_the_docs_resolve():
    pages = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in _links(page.read_text()):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken
