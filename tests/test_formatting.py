"""mmldm.formatting: the one home of number reading and printing for the report, its figures and the CLI."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys

import pytest

from mmldm import formatting
from mmldm.formatting import finite_float, fmt, fmt_count, fmt_ms, fmt_pct, mean_std_entry


def test_the_docstring_examples_hold():
    result = doctest.testmod(formatting)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.parametrize(
    "x, expected",
    [
        (3, 3.0),
        (-0.5, -0.5),
        ("0.25", 0.25),
        (0, 0.0),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        (-float("inf"), None),
        (True, None),
        (False, None),
        ("abc", None),
        ([1], None),
        ({"mean": 1}, None),
    ],
)
def test_finite_float_keeps_finite_numbers_only(x, expected):
    assert finite_float(x) == expected
    assert finite_float(x, default=-7.0) == (-7.0 if expected is None else expected)


def test_mean_std_entry_reads_both_shapes():
    assert mean_std_entry({"mean": 0.5, "std": 0.1, "n": 3}) == (0.5, 0.1)
    assert mean_std_entry({"mean": 0.5}) == (0.5, None)
    assert mean_std_entry({"mean": None, "std": 0.1}) == (None, 0.1)
    assert mean_std_entry(0.5) == (0.5, None)
    assert mean_std_entry("0.5", default=0.0) == (0.5, 0.0)
    m, s = mean_std_entry({"mean": float("nan"), "std": float("inf")}, math.nan)
    assert math.isnan(m) and math.isnan(s)
    m, s = mean_std_entry(None, math.nan)
    assert math.isnan(m) and math.isnan(s)


def test_fmt():
    assert fmt(0.44) == "0.440" and fmt(116.09, 2) == "116.09" and fmt(14.375, 1) == "14.4"
    assert fmt(1021.78, 0) == "1,022" and fmt(1234567.891, 2) == "1,234,567.89"
    assert fmt(-0.0004) == "-4.0e-04" and fmt(0.0004, small=False) == "0.000"
    assert fmt(0.0004, 4) == "0.0004" and fmt(0) == "0.000"
    for missing in (None, float("nan"), float("inf"), "x", True):
        assert fmt(missing) == "n/a" and fmt(missing, missing="-") == "-"


def test_fmt_ms():
    assert fmt_ms({"mean": 0.3011, "std": 0.0517}) == "0.301 ± 0.052"
    assert fmt_ms({"mean": 27.891, "std": 1.1}, 2) == "27.89 ± 1.10"
    assert fmt_ms({"mean": 0.0123, "std": 0.0021}, 4) == "0.0123 ± 0.0021"
    assert fmt_ms({"mean": 0.5, "std": 0.00001}) == "0.500 ± 0.000"  # a tiny std is not put in e-notation
    assert fmt_ms({"mean": 0.00001, "std": 0.1}) == "1.0e-05 ± 0.100"  # a tiny mean is
    assert fmt_ms({"mean": 0.5, "std": None}) == "0.500" and fmt_ms(0.5) == "0.500"
    assert fmt_ms({"mean": None, "std": 0.1}) == "n/a" and fmt_ms(None) == "n/a" and fmt_ms({}) == "n/a"


def test_fmt_pct_and_fmt_count():
    assert fmt_pct(0.1234) == "12.3 %" and fmt_pct(1) == "100.0 %" and fmt_pct(0.0) == "0.0 %"
    assert fmt_pct(None) == "n/a" and fmt_pct(float("nan")) == "n/a"
    assert fmt_count(905_012) == "0.91 M" and fmt_count(100_000) == "0.10 M" and fmt_count(99_999) == "100.0 k"
    assert fmt_count(240) == "0.2 k" and fmt_count(None) == "n/a"


def test_no_heavy_imports():
    code = (
        "import sys, mmldm.formatting; "
        "print(sorted(m for m in ('numpy', 'torch', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_report_figures_and_the_cli_use_it():
    from mmldm import report
    from mmldm.evaluate import run
    from mmldm.viz import report_figures as rf

    assert report.fmt is fmt and report.fmt_ms is fmt_ms and report.fmt_pct is fmt_pct
    # The figures plot NaN where a value is missing; a Dice block's bar is its mean_fg.
    assert rf._num("0.5") == 0.5 and math.isnan(rf._num(None)) and math.isnan(rf._num(float("inf")))
    assert rf._mean_std({"mean": 0.3, "std": 0.05}) == (0.3, 0.05)
    m, s = rf._mean_std({"mean_fg": 0.6, "LV": 0.9})
    assert m == 0.6 and math.isnan(s)
    assert all(math.isnan(v) for v in rf._mean_std(None))
    # The CLI's table: fixed decimals, "-" where metrics.json has null.
    from test_report import synthetic_metrics

    metrics = synthetic_metrics()
    metrics["variants"]["ddim50_both"]["dice"]["mean_fg"] = None
    metrics["realism"]["inception"]["autoencoder"]["fid"] = None
    text = run.format_table(metrics)
    first = text.splitlines()[1].split()
    assert first == ["ddim50_both", "12", "0.301", "14.37", "0.422", "-", "0.00", "0.111"]
    assert "VQ-VAE reconstructions -, ratio 1.42" in text and "KID 0.0456 ± 0.0078" in text
    assert "nan" not in text.lower()
