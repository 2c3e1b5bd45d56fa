"""Numbers as the report, its figures and the CLI show them: one home for reading and printing them.

    finite_float(x)       the finite float x stands for, or a default (None) for missing/NaN/inf/bool
    mean_std_entry(e)     (mean, std) of a metrics.json entry {"mean", "std"} or a bare number
    fmt(x, digits)        a number for a table: fixed decimals, "n/a" when missing
    fmt_ms(e, digits)     an entry as "mean ± std"
    fmt_pct(x)            a fraction as a percentage, "12.3 %"
    fmt_count(n)          a parameter count as "0.91 M" or "12.3 k"
    fmt_band(lo, hi)      a frequency band as "0.0625–0.125", or "> 0.25" with no top end

Pure functions of the standard library (no numpy, torch or matplotlib), so that anything, the
CLI included, can import them cheaply. metrics.json writes NaN as null (``mmldm.evaluate.run
.jsonable``); every function here treats null, NaN and inf alike: as a value that is not there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MISSING = "n/a"


def finite_float(x, default=None):
    """The finite float that ``x`` stands for, else ``default``: None, NaN, inf, booleans and
    anything ``float()`` rejects count as missing.

    >>> finite_float(3), finite_float("0.25"), finite_float(None), finite_float(float("nan"))
    (3.0, 0.25, None, None)
    >>> finite_float(True), finite_float("abc", default=-1.0), finite_float(float("inf"), math.nan)
    (None, -1.0, nan)
    """
    if isinstance(x, bool) or x is None:
        return default
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def mean_std_entry(entry, default=None) -> tuple:
    """``(mean, std)`` of a summary entry: ``{"mean": m, "std": s}`` (metrics.json's shape) or a
    bare number (std missing); each missing part is ``default``.

    >>> mean_std_entry({"mean": 0.5, "std": 0.1, "n": 12})
    (0.5, 0.1)
    >>> mean_std_entry(0.5), mean_std_entry({"mean": 0.5, "std": None}), mean_std_entry(None, math.nan)
    ((0.5, None), (0.5, None), (nan, nan))
    """
    if isinstance(entry, Mapping):
        return finite_float(entry.get("mean"), default), finite_float(entry.get("std"), default)
    return finite_float(entry, default), default


def fmt(x, digits: int = 3, small: bool = True, missing: str = MISSING) -> str:
    """A number for a table, with ``digits`` decimals and thousands separators; missing, NaN and
    inf become ``missing``. With ``small``, a non-zero value too small for ``digits`` decimals is
    shown in scientific notation instead of as 0.

    >>> fmt(0.44), fmt(116.09, 2), fmt(1021.78, 0), fmt(None), fmt(float("nan"), missing="-")
    ('0.440', '116.09', '1,022', 'n/a', '-')
    >>> fmt(0.00012), fmt(0.00012, small=False), fmt(0)
    ('1.2e-04', '0.000', '0.000')
    """
    v = finite_float(x)
    if v is None:
        return missing
    if small and v != 0 and abs(v) < 10**-digits:
        return f"{v:.1e}"
    return f"{v:,.{digits}f}"


def fmt_ms(entry, digits: int = 3) -> str:
    """A ``{"mean", "std"}`` entry (or a bare number) as ``mean ± std``; the std is left out when
    missing, the whole is ``n/a`` when the mean is.

    >>> fmt_ms({"mean": 0.3011, "std": 0.0517}), fmt_ms({"mean": 14.37, "std": 1.23}, 2)
    ('0.301 ± 0.052', '14.37 ± 1.23')
    >>> fmt_ms({"mean": 0.5}), fmt_ms(0.5), fmt_ms({"std": 0.1}), fmt_ms({"mean": 0.5, "std": 0.0001})
    ('0.500', '0.500', 'n/a', '0.500 ± 0.000')
    """
    m, s = mean_std_entry(entry)
    if m is None:
        return MISSING
    return fmt(m, digits) + (f" ± {fmt(s, digits, small=False)}" if s is not None else "")


def fmt_pct(x) -> str:
    """A fraction as a percentage with one decimal.

    >>> fmt_pct(0.1234), fmt_pct(0), fmt_pct(None)
    ('12.3 %', '0.0 %', 'n/a')
    """
    v = finite_float(x)
    return MISSING if v is None else f"{100 * v:.1f} %"


def fmt_count(n) -> str:
    """A parameter count: millions from 100,000 on, else thousands.

    >>> fmt_count(2_940_123), fmt_count(99_999), fmt_count(240), fmt_count(None)
    ('2.94 M', '100.0 k', '0.2 k', 'n/a')
    """
    v = finite_float(n)
    if v is None:
        return MISSING
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def fmt_band(lo, hi) -> str:
    """A spectrum band (cycles/pixel; ``mmldm.evaluate.spectrum.band_edges``) in words; ``hi``
    None or inf: the band runs to the corners.

    >>> fmt_band(0.0, 0.0625), fmt_band(0.25, None), fmt_band(0.25, float("inf"))
    ('0–0.0625', '> 0.25', '> 0.25')
    """
    return f"> {lo:g}" if finite_float(hi) is None else f"{lo:g}–{hi:g}"
