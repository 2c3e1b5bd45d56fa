"""The synthetic phantom: M&Ms-2 layout, determinism, resumability, and anatomy that is right.

Images are written small (96 px) to keep the suite fast; anatomy checks draw label maps only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import mmldm.data.phantom.writer as phantom
from mmldm.data.phantom import CSV_COLUMNS, render_subject, subject_files, write_phantom
from mmldm.data.phantom.heart import DISEASES, sample_anatomy
from mmldm.data.phantom.shapes import Grid
from mmldm.data.phantom.short_axis import ShortAxisDrawer
from mmldm.errors import DataError

SIZE = 96
CASES = ("SA_ED", "SA_ES", "LA_ED", "LA_ES")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("phantom")
    return out, write_phantom(out, subjects=3, seed=7, size=SIZE)


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# --- layout ----------------------------------------------------------------------------------


def test_layout_and_file_names(written):
    out, folders = written
    assert folders == [out / "dataset" / code for code in ("001", "002", "003")]
    for folder in folders:
        code = folder.name
        expected = {f"{code}_{case}{gt}.nii.gz" for case in CASES for gt in ("", "_gt")}
        assert {p.name for p in folder.iterdir()} == expected
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "dataset_information.csv", "phantom.json"]
    assert json.loads((out / "phantom.json").read_text()) == {"seed": 7, "size": SIZE}


def test_csv_columns_and_values(written):
    out, _ = written
    with open(out / "dataset_information.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [row["SUBJECT_CODE"] for row in rows] == ["1", "2", "3"]  # integers, not "001"
    for row in rows:
        assert row["DISEASE"] in DISEASES
        assert row["SEX"] in ("M", "F")
        assert 18 <= int(row["AGE"]) <= 90
        assert row["VENDOR"] in ("SIEMENS", "GE", "Philips")
        assert float(row["FIELD"]) in (1.5, 3.0)
        assert row["SCANNER"] and int(row["CENTRE"]) >= 1


def test_shapes_dtypes_and_header_spacing(written):
    _, folders = written
    for folder in folders:
        code = folder.name
        sa = nib.load(str(folder / f"{code}_SA_ED.nii.gz"))
        la = nib.load(str(folder / f"{code}_LA_ED.nii.gz"))
        h, w, z = sa.shape
        assert (h, w) == (SIZE, SIZE) and 8 <= z <= 12
        assert la.shape == (SIZE, SIZE, 1)  # the long axis is one slice
        assert sa.get_data_dtype() == np.float64 and la.get_data_dtype() == np.float64
        sx, sy, sz = (float(v) for v in sa.header.get_zooms())
        assert sx == pytest.approx(380 / SIZE) and sy == pytest.approx(380 / SIZE)
        assert 6 <= sz <= 13  # slice gap in mm
        assert [float(v) for v in la.header.get_zooms()[:2]] == pytest.approx([440 / SIZE] * 2)
        assert sa.header.get_xyzt_units()[0] == "mm"
        assert nib.aff2axcodes(sa.affine) == ("A", "R", "I")
        assert nib.aff2axcodes(la.affine) == ("I", "R", "P")
        for case in CASES:
            gt = nib.load(str(folder / f"{code}_{case}_gt.nii.gz"))
            image = nib.load(str(folder / f"{code}_{case}.nii.gz"))
            assert gt.shape == image.shape
            assert np.allclose(gt.affine, image.affine)


def test_axis_codes_match_the_real_mnms2_headers(mnms2_root):
    real_sa = nib.load(str(mnms2_root / "001" / "001_SA_ED.nii.gz"))
    real_la = nib.load(str(mnms2_root / "001" / "001_LA_ED.nii.gz"))
    assert nib.aff2axcodes(real_sa.affine) == ("A", "R", "I")
    assert nib.aff2axcodes(real_la.affine) == ("I", "R", "P")


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_arrays_other_seed_differs():
    first, again, other = render_subject(3, 1, SIZE), render_subject(3, 1, SIZE), render_subject(4, 1, SIZE)
    for case in CASES:
        assert np.array_equal(first[case][0], again[case][0])
        assert np.array_equal(first[case][1], again[case][1])
    assert not np.array_equal(first["LA_ED"][0], other["LA_ED"][0])


def test_subject_depends_only_on_seed_and_index(tmp_path, written):
    """Subject 2 of a 2-subject run is byte-identical to subject 2 of a 3-subject run."""
    out, _ = written
    write_phantom(tmp_path, subjects=2, seed=7, size=SIZE)
    short_run = subject_files(tmp_path / "dataset" / "002", 2)
    long_run = subject_files(out / "dataset" / "002", 2)
    for a, b in zip(short_run, long_run):
        assert a.read_bytes() == b.read_bytes()


# --- labels and intensities ------------------------------------------------------------------


def test_labels_and_intensities(written):
    _, folders = written
    for folder in folders:
        for case in CASES:
            image = load(folder / f"{folder.name}_{case}.nii.gz")
            label = load(folder / f"{folder.name}_{case}_gt.nii.gz")
            assert set(np.unique(label)) <= {0, 1, 2, 3}
            assert {1, 2, 3} <= set(np.unique(label))  # every case shows all three structures
            assert np.isfinite(image).all() and image.min() >= 0
            assert 100 < image.max() < 20000  # scanner-like units, not [0, 1]
            # bSSFP contrast: blood pool bright, myocardium dark (real M&Ms-2: about 2.4 times).
            # Checked at ED: a hypertrophic ES cavity is 1-2 pixels wide at this test's 4 mm
            # pixels, so partial volume with the wall rightly mixes their intensities.
            if case.endswith("ED"):
                assert np.median(image[label == 1]) > 1.5 * np.median(image[label == 2])


def test_lv_enclosed_by_myocardium_on_short_axis(written):
    _, folders = written
    for folder in folders:
        for phase in ("ED", "ES"):
            label = load(folder / f"{folder.name}_SA_{phase}_gt.nii.gz")
            for z in range(label.shape[2]):
                lv = label[:, :, z] == 1
                border = ndimage.binary_dilation(lv) & ~lv  # 4-connected neighbours of the LV
                assert (label[:, :, z][border] == 2).all(), f"{folder.name} {phase} slice {z}"


def test_end_systole_smaller_than_end_diastole(written):
    _, folders = written
    for folder in folders:
        for view in ("SA", "LA"):
            ed = load(folder / f"{folder.name}_{view}_ED_gt.nii.gz")
            es = load(folder / f"{folder.name}_{view}_ES_gt.nii.gz")
            assert (es == 1).sum() < (ed == 1).sum()


def short_axis_volumes(disease: str, subjects: int = 6) -> dict[str, float]:
    """Mean ED volumes (ml) of LV cavity, myocardium and RV over a few random subjects."""
    grid = Grid(128, 380 / 128)
    totals = {1: 0.0, 2: 0.0, 3: 0.0}
    for s in range(subjects):
        rng = np.random.default_rng(s)
        anatomy = sample_anatomy(rng, disease)
        drawer = ShortAxisDrawer(anatomy, grid, rng)
        voxel = grid.pixel**2 * anatomy.short_axis.gap / 1000
        for d in anatomy.short_axis.positions:
            label = drawer.heart(d, "ED")[1]
            for k in totals:
                totals[k] += (label == k).sum() * voxel / subjects
    return {"LV": totals[1], "MYO": totals[2], "RV": totals[3]}


def test_pathologies_change_the_anatomy_the_way_they_should():
    normal, dilated, hypertrophic, rv_dilated = (short_axis_volumes(d) for d in ("NOR", "LV", "HCM", "TRI"))
    assert dilated["LV"] > 1.5 * normal["LV"]
    assert hypertrophic["MYO"] / hypertrophic["LV"] > 2 * normal["MYO"] / normal["LV"]
    assert rv_dilated["RV"] > 1.5 * normal["RV"]
    assert 80 < normal["LV"] < 220  # a plausible adult LV end-diastolic volume (ml)


# --- resuming and refusing -------------------------------------------------------------------


def test_resume_skips_complete_subjects(tmp_path, monkeypatch):
    write_phantom(tmp_path, subjects=2, seed=1, size=SIZE)
    second = subject_files(tmp_path / "dataset" / "002", 2)
    before = second[-1].read_bytes()
    second[-1].unlink()  # as if the run had been killed while writing subject 2
    (second[0].parent / ".002_LA_ES_gt.nii.gz.tmp-999").write_bytes(b"half a file")

    rendered = []
    original = phantom.render_subject

    def counting(seed, index, size):
        rendered.append(index)
        return original(seed, index, size)

    monkeypatch.setattr(phantom, "render_subject", counting)
    write_phantom(tmp_path, subjects=3, seed=1, size=SIZE)

    assert rendered == [2, 3]
    assert second[-1].read_bytes() == before
    assert not list((tmp_path / "dataset").rglob("*.tmp-*"))


def test_refuses_other_settings_and_other_data(tmp_path):
    write_phantom(tmp_path / "a", subjects=1, seed=0, size=SIZE)
    with pytest.raises(DataError, match="seed"):
        write_phantom(tmp_path / "a", subjects=1, seed=1, size=SIZE)
    real = tmp_path / "real"
    (real / "dataset" / "001").mkdir(parents=True)
    (real / "dataset_information.csv").write_text("SUBJECT_CODE\n1\n")
    with pytest.raises(DataError, match="not a phantom"):
        write_phantom(real, subjects=1)
    assert (real / "dataset_information.csv").read_text() == "SUBJECT_CODE\n1\n"
