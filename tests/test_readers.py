"""Dataset readers: layouts recognised, cases listed, labels in canonical order, metadata read.

Two halves. Synthetic: small files written in tmp_path in each dataset's exact layout, so every
reader (M&Ms-1 included, which has no real data here) is checked value for value. Real: the
shared ACDC and M&Ms-2 data, checked for counts, frames from Info.cfg, and anatomy: after the
remap, label 1 (LV) must be the cavity the myocardium encloses and label 3 (RV) must lie outside
it, which fails loudly if the ACDC ventricles were left the wrong way round.
"""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mmldm.data.readers import detect_format, find_cases, load_case
from mmldm.errors import DataError

# ---------------------------------------------------------------- synthetic data helpers

# Canonical -> ACDC numbering, written out here rather than imported so the test stays honest:
# ACDC stores the LV as 3 and the RV as 1.
TO_ACDC = np.array([0, 3, 2, 1], dtype=np.uint8)


def write_nifti(path: Path, array: np.ndarray, zooms=(1.5, 1.25, 8.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(tuple(zooms) + (1.0,) * (array.ndim - len(zooms)))
    nib.save(img, str(path))
    return path


def heart(lv_radius: int, size: int = 40, slices: int = 3) -> np.ndarray:
    """Canonical labels (H, W, Z): LV disk, myocardial ring around it, RV beside the ring."""
    yy, xx = np.mgrid[:size, :size]
    r_lv = np.hypot(yy - size / 2, xx - size / 2 + 4)
    r_rv = np.hypot(yy - size / 2, xx - size / 2 - lv_radius - 7)
    sl = np.zeros((size, size), np.uint8)
    sl[r_rv < 6] = 3
    sl[r_lv < lv_radius + 3] = 2
    sl[r_lv < lv_radius] = 1
    return np.repeat(sl[:, :, None], slices, axis=2)


def image_for(label: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (label * 100 + rng.integers(0, 50, label.shape)).astype(np.int16)


def write_mnms2_subject(folder: Path, name: str, cine: bool = True) -> None:
    """One M&Ms-2 subject folder: SA and LA at ED and ES, gt files, and an unlabelled cine."""
    for view, slices in (("SA", 3), ("LA", 1)):
        for phase, radius in (("ED", 8), ("ES", 5)):
            label, stem = heart(radius, slices=slices), folder / f"{name}_{view}_{phase}"
            write_nifti(Path(f"{stem}.nii.gz"), image_for(label).astype(np.float64))  # as on disk
            write_nifti(Path(f"{stem}_gt.nii.gz"), label.astype(np.float64))
    if cine:
        write_nifti(folder / f"{name}_LA_CINE.nii.gz", np.ones((40, 40, 1, 4), np.int16))


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_mnms_subject(folder: Path, frames: dict[str, int], n_frames: int = 5) -> np.ndarray:
    """One M&Ms-1 subject: 4-D cine and 4-D gt labelled only at the ED and ES frames."""
    label = np.zeros((40, 40, 3, n_frames), np.uint8)
    label[..., frames["ED"]] = heart(9)
    label[..., frames["ES"]] = heart(5)
    image = np.stack([image_for(heart(7), seed=t) for t in range(n_frames)], axis=3)
    write_nifti(folder / f"{folder.name}_sa.nii.gz", image)
    write_nifti(folder / f"{folder.name}_sa_gt.nii.gz", label)
    return label


def write_acdc_patient(folder: Path, ed: int, es: int, dtype, group: str = "HCM") -> None:
    """One ACDC patient: Info.cfg and two frames whose gt uses ACDC's 1 RV / 3 LV numbering."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 170.5\nNbFrame: 20\nWeight: 70.0\n")
    for frame, radius in ((ed, 8), (es, 5)):
        label = heart(radius)
        stem = f"{folder.name}_frame{frame:02d}"
        write_nifti(folder / f"{stem}.nii.gz", image_for(label).astype(dtype))
        write_nifti(folder / f"{stem}_gt.nii.gz", TO_ACDC[label])
    write_nifti(folder / f"{folder.name}_4d.nii.gz", np.ones((40, 40, 3, 20), np.int16))


# ---------------------------------------------------------------- M&Ms-2 (synthetic)


@pytest.fixture
def mnms2_release(tmp_path: Path) -> Path:
    root = tmp_path / "MnM2"
    for name in ("001", "002"):
        write_mnms2_subject(root / "dataset" / name, name)
    write_csv(
        root / "dataset_information.csv",
        ["SUBJECT_CODE", "DISEASE", "SEX", "AGE", "VENDOR", "SCANNER", "FIELD"],
        [[1, "NOR", "M", 54, "SIEMENS", "Avanto", 1.5], [2, "ARR", "F", 61, "GE", "Signa", 3.0]],
    )
    return root


def test_mnms2_release_root_lists_four_cases_per_subject_with_csv_metadata(mnms2_release):
    cases = find_cases(mnms2_release)
    assert detect_format(mnms2_release) == "mnms2"
    assert [(c.subject, c.view, c.phase) for c in cases] == [
        (s, v, p) for s in ("001", "002") for v in ("SA", "LA") for p in ("ED", "ES")
    ]
    assert all(c.source == "mnms2" and c.frame is None for c in cases)
    assert not any("CINE" in c.image_path.name or "CINE" in c.label_path.name for c in cases)
    assert cases[0].meta == {
        "pathology": "NOR",
        "sex": "M",
        "age": 54,
        "vendor": "SIEMENS",
        "scanner": "Avanto",
        "field": 1.5,
    }
    assert cases[-1].meta["pathology"] == "ARR" and cases[-1].meta["field"] == 3.0


def test_mnms2_dataset_folder_or_subject_folder_give_the_same_cases(mnms2_release):
    whole = find_cases(mnms2_release)
    assert find_cases(mnms2_release / "dataset") == whole  # the CSV is found beside dataset/
    one = find_cases(mnms2_release / "dataset" / "002")
    assert one == [c for c in whole if c.subject == "002"]


def test_mnms2_volumes_keep_labels_and_raw_intensities(mnms2_release):
    cases = {(c.subject, c.view, c.phase): c for c in find_cases(mnms2_release)}
    sa = load_case(cases["001", "SA", "ED"])
    la = load_case(cases["001", "LA", "ES"])
    assert sa.image.dtype == np.float32 and sa.label.dtype == np.uint8
    np.testing.assert_array_equal(sa.label, heart(8))  # already canonical: no remap
    np.testing.assert_array_equal(sa.image, image_for(heart(8)).astype(np.float32))
    assert la.image.shape == la.label.shape == (40, 40, 1) and la.case.view == "LA"
    np.testing.assert_array_equal(la.label, heart(5, slices=1))
    assert sa.spacing == pytest.approx((1.5, 1.25, 8.0))


def test_phantom_format_reads_the_mnms2_layout_as_source_phantom(mnms2_release):
    cases = find_cases(mnms2_release, format="phantom")
    assert len(cases) == 8 and {c.source for c in cases} == {"phantom"}
    volume = load_case(cases[0])
    np.testing.assert_array_equal(volume.label, heart(8))


def test_mnms2_without_csv_has_empty_meta(tmp_path):
    write_mnms2_subject(tmp_path / "007", "007", cine=False)
    cases = find_cases(tmp_path)
    assert len(cases) == 4 and all(c.meta == {} for c in cases)


# ---------------------------------------------------------------- M&Ms-1 (synthetic)


def test_mnms_frames_and_meta_from_information_csv(tmp_path):
    root = tmp_path / "OpenDataset"
    written = write_mnms_subject(root / "Training" / "Labeled" / "A1B2C3", {"ED": 1, "ES": 3})
    write_mnms_subject(root / "Validation" / "D4E5F6", {"ED": 0, "ES": 2})
    unlabelled = root / "Training" / "Unlabeled" / "Z9Z9Z9"
    write_nifti(unlabelled / "Z9Z9Z9_sa.nii.gz", np.ones((8, 8, 2, 3), np.int16))
    write_csv(
        root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv",
        ["", "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Age", "Pathology"],
        [[0, "A1B2C3", "Siemens", "A", 1, 1, 3, 50, "HCM"],
         [1, "D4E5F6", "Philips", "B", 2, 0, 2, 40, "NOR"]],
    )  # fmt: skip
    cases = find_cases(root)
    assert detect_format(root) == "mnms"
    assert [(c.subject, c.phase, c.frame) for c in cases] == [
        ("A1B2C3", "ED", 1), ("A1B2C3", "ES", 3), ("D4E5F6", "ED", 0), ("D4E5F6", "ES", 2),
    ]  # fmt: skip
    assert cases[0].meta == {
        "vendor": "Siemens", "vendor_code": "A", "centre": 1, "age": 50, "pathology": "HCM",
    }  # fmt: skip
    assert all(c.view == "SA" and c.source == "mnms" for c in cases)
    es = load_case(cases[1])
    assert es.image.shape == es.label.shape == (40, 40, 3)
    np.testing.assert_array_equal(es.label, written[..., 3])
    np.testing.assert_array_equal(es.image, image_for(heart(7), seed=3).astype(np.float32))
    # pointing below the root still finds the CSV two folders up
    assert find_cases(root / "Training" / "Labeled")[0].meta["vendor"] == "Siemens"


def test_mnms_without_csv_takes_ed_as_the_labelled_frame_with_the_larger_lv(tmp_path):
    # ES comes first in time here, so "first labelled frame" alone would get it wrong
    written = write_mnms_subject(tmp_path / "Training" / "Labeled" / "Q1W2E3", {"ED": 4, "ES": 1})
    cases = find_cases(tmp_path / "Training", format="mnms")
    assert [(c.phase, c.frame) for c in cases] == [("ED", 4), ("ES", 1)]
    assert cases[0].meta == {}
    ed = load_case(cases[0])
    assert (ed.label == 1).sum() > (load_case(cases[1]).label == 1).sum()
    np.testing.assert_array_equal(ed.label, written[..., 4])


# ---------------------------------------------------------------- ACDC (synthetic)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_acdc_remaps_ventricles_and_keeps_intensities_unscaled(tmp_path, dtype):
    write_acdc_patient(tmp_path / "training" / "patient001", ed=1, es=9, dtype=dtype)
    cases = find_cases(tmp_path / "training")
    assert [(c.phase, c.image_path.name) for c in cases] == [
        ("ED", "patient001_frame01.nii.gz"), ("ES", "patient001_frame09.nii.gz"),
    ]  # fmt: skip
    volume = load_case(cases[0])
    np.testing.assert_array_equal(volume.label, heart(8))  # canonical: 1 LV, 3 RV
    assert volume.image.dtype == np.float32
    raw = image_for(heart(8)).astype(dtype)
    np.testing.assert_array_equal(volume.image, raw.astype(np.float32))
    assert cases[0].meta == {"pathology": "HCM", "height": 170.5, "weight": 70.0, "n_frames": 20}


def test_acdc_parent_of_training_and_testing(tmp_path):
    write_acdc_patient(tmp_path / "training" / "patient002", ed=1, es=7, dtype=np.int16)
    write_acdc_patient(tmp_path / "testing" / "patient101", ed=2, es=11, dtype=np.int16, group="RV")
    cases = find_cases(tmp_path)
    assert detect_format(tmp_path) == "acdc"
    assert [c.subject for c in cases] == ["patient002"] * 2 + ["patient101"] * 2
    assert cases[2].image_path.name == "patient101_frame02.nii.gz"
    assert cases[3].meta["pathology"] == "RV"
    assert find_cases(tmp_path / "testing" / "patient101") == cases[2:]


def test_forcing_the_wrong_format_names_the_folder_and_layout(tmp_path):
    write_acdc_patient(tmp_path / "patient003", ed=1, es=5, dtype=np.int16)
    assert len(find_cases(tmp_path, format="acdc")) == 2
    with pytest.raises(DataError) as err:
        find_cases(tmp_path, format="mnms2")
    assert err.value.path == tmp_path and "no cases found" in str(err.value)
    assert "M&Ms-2" in str(err.value)


# ---------------------------------------------------------------- real data


def lv_is_enclosed_by_myocardium(label: np.ndarray) -> tuple[float, float]:
    """Fractions of slices (with LV, MYO and RV) where anatomy looks right.

    First: the pixels just outside the LV are mostly (>= 75%) myocardium. Second: the pixels
    just outside the RV are mostly not myocardium (the RV's free wall is not labelled) and
    almost never LV (the septum separates them). Swapping LV and RV fails both.
    """
    cross = ndimage.generate_binary_structure(2, 1)
    lv_ok, rv_ok = [], []
    for z in range(label.shape[2]):
        sl = label[:, :, z]
        if not ((sl == 1).any() and (sl == 2).any() and (sl == 3).any()):
            continue
        lv_ring = ndimage.binary_dilation(sl == 1, cross) & (sl != 1)
        rv_ring = ndimage.binary_dilation(sl == 3, cross) & (sl != 3)
        lv_ok.append((sl[lv_ring] == 2).mean() >= 0.75)
        rv_ok.append((sl[rv_ring] == 2).mean() < 0.6 and (sl[rv_ring] == 1).mean() < 0.05)
    assert lv_ok, "no slice holds LV, myocardium and RV together"
    return float(np.mean(lv_ok)), float(np.mean(rv_ok))


def read_cfg(path: Path) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


# One patient from each ACDC diagnosis group (the training set lists them in blocks of 20).
ACDC_SAMPLE = ("patient001", "patient021", "patient041", "patient061", "patient081")


@pytest.fixture(scope="module")
def acdc_cases(acdc_root):
    return find_cases(acdc_root)


@pytest.fixture(scope="module")
def acdc_sample(acdc_cases):
    return [load_case(c) for c in acdc_cases if c.subject in ACDC_SAMPLE]


def test_acdc_real_lists_100_patients_with_frames_from_info_cfg(acdc_root, acdc_cases):
    assert detect_format(acdc_root) == "acdc"
    assert len(acdc_cases) == 200
    assert len({c.subject for c in acdc_cases}) == 100
    by_key = {(c.subject, c.phase): c for c in acdc_cases}
    assert by_key["patient001", "ED"].image_path.name == "patient001_frame01.nii.gz"
    assert by_key["patient001", "ES"].image_path.name == "patient001_frame12.nii.gz"
    assert by_key["patient001", "ES"].label_path.name == "patient001_frame12_gt.nii.gz"
    for (subject, phase), case in by_key.items():
        cfg = read_cfg(acdc_root / subject / "Info.cfg")
        assert case.image_path.name == f"{subject}_frame{int(cfg[phase]):02d}.nii.gz"
        assert case.meta["pathology"] == cfg["Group"]
    assert by_key["patient001", "ED"].meta["pathology"] == "DCM"
    groups = collections.Counter(c.meta["pathology"] for c in acdc_cases if c.phase == "ED")
    assert groups == {"DCM": 20, "HCM": 20, "MINF": 20, "NOR": 20, "RV": 20}


def test_acdc_real_volumes_are_float32_unscaled_with_header_spacing(acdc_sample):
    assert len(acdc_sample) == 2 * len(ACDC_SAMPLE)
    for volume in acdc_sample:
        raw = nib.load(str(volume.case.image_path))
        assert volume.image.dtype == np.float32 and volume.label.dtype == np.uint8
        assert volume.image.shape == volume.label.shape == raw.shape
        np.testing.assert_array_equal(volume.image, np.asarray(raw.dataobj).astype(np.float32))
        assert volume.spacing == pytest.approx(raw.header.get_zooms()[:3])
        assert set(np.unique(volume.label)) <= {0, 1, 2, 3}


def test_acdc_real_remapped_lv_is_enclosed_by_myocardium(acdc_sample):
    for volume in acdc_sample:
        lv_ok, rv_ok = lv_is_enclosed_by_myocardium(volume.label)
        assert lv_ok >= 0.9, f"{volume.case.subject} {volume.case.phase}: LV not enclosed"
        assert rv_ok >= 0.9, f"{volume.case.subject} {volume.case.phase}: RV not outside"


def test_acdc_real_ed_lv_is_larger_than_es_lv(acdc_sample):
    lv = {(v.case.subject, v.case.phase): int((v.label == 1).sum()) for v in acdc_sample}
    assert all(lv[s, "ED"] > lv[s, "ES"] for s in ACDC_SAMPLE)


def test_mnms2_real_subject(mnms2_root):
    cases = find_cases(mnms2_root)  # a folder of subject folders, no CSV
    assert detect_format(mnms2_root) == "mnms2"
    assert [(c.subject, c.view, c.phase) for c in cases] == [("001", v, p) for v in ("SA", "LA") for p in ("ED", "ES")]
    volumes = {(c.view, c.phase): load_case(c) for c in cases}
    for (view, phase), volume in volumes.items():
        assert volume.image.dtype == np.float32 and volume.label.dtype == np.uint8
        assert set(np.unique(volume.label)) == {0, 1, 2, 3}
        if view == "SA":
            assert volume.image.shape == (256, 256, 12)
            lv_ok, rv_ok = lv_is_enclosed_by_myocardium(volume.label)
            assert lv_ok >= 0.9 and rv_ok >= 0.9, f"SA {phase}: anatomy check failed"
        else:
            assert volume.image.shape == volume.label.shape == (256, 256, 1)
            assert volume.case.view == "LA"
    for view in ("SA", "LA"):
        assert (volumes[view, "ED"].label == 1).sum() > (volumes[view, "ES"].label == 1).sum()
