"""Preprocessing: normalisation, crop/resize, edges, split, and the raw folder -> HDF5 store run.

The synthetic dataset here is a few tiny M&Ms-2-layout subjects written by ``write_subject``: a
disc LV inside a myocardium ring with a crescent RV beside it, intensities that follow the labels
(so label boundaries are image edges), a random intensity scale per subject (so normalisation has
work to do) and an unlabelled first and last short-axis slice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from mmldm.config import from_dict, to_dict
from mmldm.data import preprocess as preprocess_module
from mmldm.data.crop import crop_slice, crop_volume, heart_center, window_size
from mmldm.data.edges import canny_edges, to_uint8
from mmldm.data.normalize import normalize
from mmldm.data.preprocess import DataConfig, preprocess
from mmldm.data.split import split_subjects, val_count
from mmldm.data.store import open_store, read_config, read_meta, read_skipped, read_sources
from mmldm.errors import ConfigError, DataError

SIZE = 48  # synthetic source slices are SIZE x SIZE at 1.5 mm
SPACING = 1.5


# ------------------------------------------------------------------ synthetic data
def heart(shape: tuple[int, int], center: tuple[float, float], spacing: float, lv_mm: float = 12.0) -> np.ndarray:
    """Canonical label map: LV disc (radius lv_mm), myocardium ring (+6 mm), RV crescent to one side."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    r = np.hypot(yy - center[0], xx - center[1]) * spacing
    r_rv = np.hypot(yy - center[0], xx - (center[1] - 20.0 / spacing)) * spacing
    label = np.zeros(shape, np.uint8)
    label[(r_rv < lv_mm + 10) & (r >= lv_mm + 6)] = 3
    label[r < lv_mm + 6] = 2
    label[r < lv_mm] = 1
    return label


def phantom_volume(rng: np.random.Generator, z: int, labelled: slice) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8), both (SIZE, SIZE, z); labels only on ``labelled`` slices."""
    label = np.zeros((SIZE, SIZE, z), np.uint8)
    center = (SIZE / 2 + rng.uniform(-4, 4), SIZE / 2 + rng.uniform(-4, 4))
    for k in range(z)[labelled]:
        label[:, :, k] = heart((SIZE, SIZE), center, SPACING)
    tissue = np.array([20.0, 200.0, 80.0, 170.0], np.float32)[label]
    unlabelled = ~label.any(axis=(0, 1))
    for k in np.flatnonzero(unlabelled):  # a body without a heart (still with some contrast)
        tissue[:, :, k] = 60.0
        tissue[8:-8, 8:12, k] = 120.0
    image = (tissue + rng.normal(0, 3, tissue.shape)) * rng.uniform(0.5, 20.0)
    return image.astype(np.float32), label


def write_nifti(path: Path, array: np.ndarray, spacing: float = SPACING) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([spacing, spacing, 10.0, 1.0])), str(path))


def write_subject(root: Path, code: str, rng: np.random.Generator) -> None:
    """One M&Ms-2 subject: SA ED/ES with 5 slices (first and last unlabelled), LA ED/ES with 1."""
    folder = root / "dataset" / code
    for phase in ("ED", "ES"):
        image, label = phantom_volume(rng, 5, slice(1, 4))
        write_nifti(folder / f"{code}_SA_{phase}.nii.gz", image)
        write_nifti(folder / f"{code}_SA_{phase}_gt.nii.gz", label)
        image, label = phantom_volume(rng, 1, slice(0, 1))
        write_nifti(folder / f"{code}_LA_{phase}.nii.gz", image)
        write_nifti(folder / f"{code}_LA_{phase}_gt.nii.gz", label)


def write_dataset(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        write_subject(root, f"{i:03d}", rng)
    lines = ["SUBJECT_CODE,DISEASE,VENDOR"] + [f"{i},NOR,Vendor{i % 2}" for i in range(1, n + 1)]
    (root / "dataset_information.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("raw"))


def small_cfg(**kw) -> DataConfig:
    """64 mm field of view at 32 px: 2 mm pixels, the whole synthetic heart in frame."""
    return DataConfig(**{"size": 32, "fov_mm": 64.0, "val": 2, "workers": 0, **kw})


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("store") / "synthetic.h5"
    return out, preprocess(raw, out, small_cfg(), progress=False)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tmp-*"))


# ------------------------------------------------------------------ normalize
def test_normalize_maps_percentiles_to_minus_one_and_one():
    x = np.random.default_rng(0).gamma(2.0, 100.0, (40, 40, 6)).astype(np.float32)
    y = normalize(x, (0.5, 99.5))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.min() == -1.0 and y.max() == 1.0
    lo, hi = np.percentile(x, (0.5, 99.5))
    inside = (x > lo) & (x < hi)
    assert np.all(np.abs(y[inside]) < 1.0)  # only the clipped tails reach the ends
    assert 0.004 < np.mean(y == 1.0) < 0.006  # 0.5 % of the voxels sit above the 99.5th percentile


def test_normalize_is_invariant_to_the_scanner_scale():
    x = np.random.default_rng(1).gamma(2.0, 1.0, (30, 30, 4)).astype(np.float32)
    np.testing.assert_allclose(normalize(x), normalize(x * 900.0 + 40.0), atol=1e-4)


def test_normalize_rejects_an_image_without_contrast():
    x = np.zeros((20, 20, 2), np.float32)
    x[0, 0, 0] = 5.0  # 1 voxel in 800: both percentiles are 0
    with pytest.raises(ValueError, match="no contrast"):
        normalize(x)
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.full((4, 4, 1), np.nan, np.float32))


# ------------------------------------------------------------------ crop
def test_heart_center_is_the_bounding_box_centre():
    label = np.zeros((20, 30), np.uint8)
    label[4:9, 10:21] = 2
    assert heart_center(label) == (6.0, 15.0)
    assert heart_center(np.zeros((5, 5), np.uint8)) is None


def test_crop_centres_the_heart_and_keeps_the_scale_in_mm():
    """The same 12 mm LV at 1.0 and 2.0 mm spacing, off-centre: same size and place after cropping."""
    areas = []
    for spacing, shape, center in ((1.0, (200, 160), (60.0, 110.0)), (2.0, (100, 80), (30.0, 55.0))):
        label = heart(shape, center, spacing)
        image = label.astype(np.float32)
        img, lab = crop_slice(image, label, (spacing, spacing), fov_mm=120.0, size=60)
        assert img.shape == lab.shape == (60, 60) and img.dtype == np.float32 and lab.dtype == np.uint8
        cy, cx = heart_center(lab)
        assert abs(cy - 29.5) <= 1.0 and abs(cx - 29.5) <= 1.0
        areas.append((lab == 1).sum() * 4.0)  # output pixels are 2 mm: mm^2
    true_area = np.pi * 12.0**2
    assert all(abs(a - true_area) / true_area < 0.1 for a in areas)
    assert window_size((1.0, 2.0), 120.0) == (120, 60)


def test_crop_pads_outside_the_image_with_the_darkest_value():
    label = np.zeros((40, 40), np.uint8)
    label[2:8, 2:8] = 1  # heart in the corner: the window sticks out top-left
    img, lab = crop_slice(np.zeros((40, 40), np.float32), label, (1.0, 1.0), fov_mm=40.0, size=40)
    assert img[0, 0] == -1.0 and img[-1, -1] == 0.0
    assert lab[0, 0] == 0


def test_crop_keeps_image_and_labels_aligned():
    """Image = LV indicator: the resized image's LV centre of mass matches the resized label's.

    Plain cv2.INTER_NEAREST for labels fails this (half an output pixel off); INTER_NEAREST_EXACT
    samples at pixel centres like INTER_LINEAR / INTER_AREA do.
    """
    label = heart((97, 83), (50.0, 40.0), 1.3)
    for size in (48, 256):  # shrinking (INTER_AREA) and growing (INTER_LINEAR)
        img, lab = crop_slice((label == 1).astype(np.float32), label, (1.3, 1.3), 100.0, size, pad_value=0.0)
        offset = np.subtract(ndimage.center_of_mass(img), ndimage.center_of_mass(lab == 1))
        assert np.all(np.abs(offset) < 0.25), offset
        assert np.mean((img > 0.5) == (lab == 1)) > 0.98


def test_unlabelled_slices_use_the_volume_heart_centre():
    label = np.zeros((60, 60, 3), np.uint8)
    label[10:20, 30:40, 0] = 1
    label[14:24, 34:44, 2] = 1  # slice 1 has no label
    image = np.zeros((60, 60, 3), np.float32)
    image[17, 37, 1] = 1.0  # a marker at the volume's bounding-box centre (16.5, 36.5)
    imgs, labs = crop_volume(image, label, (1.0, 1.0, 8.0), fov_mm=20.0, size=20)
    assert np.unravel_index(np.argmax(imgs[1]), (20, 20)) == (10, 10)
    assert not labs[1].any()


# ------------------------------------------------------------------ edges
def test_canny_edges_follow_the_label_boundaries():
    label = heart((64, 64), (32.0, 34.0), 1.0)
    image = np.array([-0.8, 0.8, -0.2, 0.5], np.float32)[label]
    image += np.random.default_rng(0).normal(0, 0.05, image.shape).astype(np.float32)
    edges = canny_edges(image)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 1}
    boundary = ndimage.grey_dilation(label, size=3) != ndimage.grey_erosion(label, size=3)
    near = ndimage.binary_dilation(boundary, iterations=2)
    assert edges.sum() > 0.5 * boundary.sum() / 2  # the boundaries are found ...
    assert np.mean(near[edges > 0]) > 0.95  # ... and the edges found are boundaries


def test_blur_removes_noise_edges():
    image = np.clip(np.random.default_rng(0).normal(0, 0.25, (64, 64)), -1, 1).astype(np.float32)
    assert canny_edges(image, blur=False).sum() > 2 * canny_edges(image, blur=True).sum()
    assert to_uint8(np.array([-1.0, 0.0, 1.0, 3.0])).tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="odd"):
        canny_edges(image, kernel=4)


# ------------------------------------------------------------------ split
def test_split_counts_fractions_and_no_overlap():
    subjects = [f"{i:03d}" for i in range(1, 361)]
    split = split_subjects(subjects, val=10, seed=0)
    assert sorted(split) == subjects
    assert sum(s == "val" for s in split.values()) == 10  # the seed study's 350/10
    assert sum(s == "train" for s in split.values()) == 350
    assert sum(s == "val" for s in split_subjects(subjects, 0.1).values()) == 36
    assert val_count(5, 0.05) == 1 and val_count(1, 0.1) == 0 and val_count(20, 0) == 0


def test_split_is_deterministic_per_subject_set_and_seed():
    subjects = [f"p{i}" for i in range(50)]
    a = split_subjects(subjects, 5, seed=3)
    b = split_subjects(list(reversed(subjects)) + subjects[:7], 5, seed=3)  # order and repeats
    assert a == b
    assert a != split_subjects(subjects, 5, seed=4)
    with pytest.raises(ValueError, match="nothing left"):
        split_subjects(["a", "b"], 2)
    with pytest.raises(ValueError):
        split_subjects(subjects, 2.5)


# ------------------------------------------------------------------ config
def test_data_config_is_checked_when_loaded():
    assert from_dict(DataConfig, {"size": 64, "val": 0.2}).val == 0.2
    with pytest.raises(ConfigError, match="sigma_canny"):
        from_dict(DataConfig, {"sigma_canny": 1.0})
    with pytest.raises(ConfigError, match="canny_kernel"):
        from_dict(DataConfig, {"canny_kernel": 4})
    with pytest.raises(ConfigError, match="views"):
        from_dict(DataConfig, {"views": ["SA", "2CH"]})


# ------------------------------------------------------------------ the whole run
def test_store_arrays_shapes_and_ranges(store):
    path, summary = store
    # 6 subjects x 2 phases x (3 labelled SA + 1 LA) slices
    assert summary.n_slices == 48 and summary.cases == 24 and summary.dropped_unlabelled == 24
    with open_store(path) as f:
        image, label, edge = f["image"][()], f["label"][()], f["edge"][()]
        assert image.shape == label.shape == edge.shape == (48, 32, 32)
        assert image.dtype == np.float16 and label.dtype == np.uint8 and edge.dtype == np.uint8
        assert f["image"].chunks == (1, 32, 32) and f["label"].compression == "gzip"
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.min() < -0.9 and image.max() > 0.9
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert set(np.unique(edge)) == {0, 1}
    assert all(lab.any() for lab in label)  # unlabelled slices were dropped


def test_store_edges_lie_on_label_boundaries(store):
    """In the synthetic data intensities change only where labels do: edges mark label boundaries."""
    with open_store(store[0]) as f:
        label, edge = f["label"][()], f["edge"][()]
    boundary = np.stack([ndimage.grey_dilation(lab, size=3) != ndimage.grey_erosion(lab, size=3) for lab in label])
    near = np.stack([ndimage.binary_dilation(b) for b in boundary])
    assert np.mean(near[edge > 0]) > 0.95  # edges found are on boundaries (within 1-2 px) ...
    covered = np.stack([ndimage.binary_dilation(e > 0) for e in edge])
    assert np.mean(covered[boundary]) > 0.6  # ... and most boundaries have an edge


def test_store_metadata_split_and_attributes(store, raw):
    path, summary = store
    with open_store(path) as f:
        meta = read_meta(f)
        cfg = read_config(f)
        sources = read_sources(f)
        assert read_skipped(f) == []
        assert f.attrs["pixel_mm"] == 2.0
        assert json.loads(f.attrs["cond_channels"])[0] == "edge"
    assert cfg == to_dict(small_cfg())
    assert DataConfig(**cfg) == small_cfg()  # round trip
    assert len(sources) == 48 and all(Path(s).is_file() for s in sources)
    assert Path(sources[0]).name == "001_SA_ED.nii.gz" and Path(sources[1]).name == "001_SA_ED_gt.nii.gz"
    assert set(meta["view"]) == {"SA", "LA"} and set(meta["phase"]) == {"ED", "ES"}
    assert set(meta["source"]) == {"mnms2"}
    assert meta["slice_index"][:3].tolist() == [1, 2, 3]  # slices 0 and 4 had no labels
    np.testing.assert_allclose(meta["spacing"], SPACING)
    assert set(meta["pathology"]) == {"NOR"} and set(meta["vendor"]) == {"Vendor0", "Vendor1"}
    by_subject = {}
    for subject, split in zip(meta["subject"], meta["split"]):
        by_subject.setdefault(subject, set()).add(split)
    assert all(len(s) == 1 for s in by_subject.values())  # no subject in two splits
    assert sorted(s.pop() for s in by_subject.values()).count("val") == 2
    assert summary.subjects == {"train": 4, "val": 2}
    assert summary.slices[("SA", "ED", "val")] == 6 and summary.slices[("LA", "ES", "train")] == 4
    assert "files skipped: 0" in str(summary)


def test_store_is_the_same_with_a_worker_pool(store, raw, tmp_path):
    out = tmp_path / "pooled.h5"
    preprocess(raw, out, small_cfg(workers=2), progress=False)
    with h5py.File(store[0], "r") as a, h5py.File(out, "r") as b:
        for name in ("image", "label", "edge", "meta/subject", "meta/split", "meta/slice_index"):
            np.testing.assert_array_equal(a[name][()], b[name][()])


def test_keep_unlabelled_and_view_filter(raw, tmp_path):
    summary = preprocess(
        raw, tmp_path / "sa.h5", small_cfg(views=("SA",), phases=("ED",), keep_unlabelled=True), progress=False
    )
    assert summary.n_slices == 6 * 5 and summary.dropped_unlabelled == 0
    with open_store(tmp_path / "sa.h5") as f:
        assert set(read_meta(f)["view"]) == {"SA"}
        assert not f["label"][0].any()  # slice 0 kept without labels, centred on the volume's heart


def broken_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the synthetic dataset whose subject 002 SA ES image is a truncated gzip."""
    root = tmp_path / "broken"
    write_dataset(root)
    bad = root / "dataset" / "002" / "002_SA_ES.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    return root, bad


def test_a_bad_file_stops_the_run_naming_it_and_leaves_no_partial_store(raw, tmp_path):
    root, bad = broken_copy(tmp_path)
    out = tmp_path / "out" / "store.h5"
    for workers in (0, 2):
        with pytest.raises(DataError) as err:
            preprocess(root, out, small_cfg(workers=workers), progress=False)
        assert err.value.path == bad and "skip_bad" in str(err.value)
        assert not out.exists() and temp_files(out.parent) == []


def test_a_failed_run_keeps_the_previous_store(raw, tmp_path, monkeypatch):
    out = tmp_path / "store.h5"
    preprocess(raw, out, small_cfg(), progress=False)
    before = out.read_bytes()
    calls = []

    def exploding_canny(*args, **kw):  # a bug half-way through the run, not a bad file
        calls.append(1)
        if len(calls) > 20:
            raise RuntimeError("boom")
        return canny_edges(*args, **kw)

    monkeypatch.setattr(preprocess_module, "canny_edges", exploding_canny)
    with pytest.raises(RuntimeError, match="boom") as err:
        preprocess(raw, out, small_cfg(), progress=False)
    assert any("while preprocessing" in note for note in getattr(err.value, "__notes__", []))
    assert out.read_bytes() == before and temp_files(tmp_path) == []


def test_skip_bad_reports_the_file_and_writes_the_rest(raw, tmp_path, capsys):
    root, bad = broken_copy(tmp_path)
    out = tmp_path / "store.h5"
    summary = preprocess(root, out, small_cfg(), skip_bad=True, progress=True)
    assert len(summary.skipped) == 1 and summary.skipped[0].startswith(f"{bad}: ")
    assert summary.cases == 23 and summary.n_slices == 45
    assert str(bad) in capsys.readouterr().out  # the printed summary names it
    with open_store(out) as f:
        assert read_skipped(f) == summary.skipped
        assert str(bad) not in read_sources(f)
        assert yaml.safe_load(f.attrs["config"])["size"] == 32
    assert temp_files(tmp_path) == []


def test_too_many_validation_subjects_is_an_error_naming_the_source(raw, tmp_path):
    with pytest.raises(DataError, match="val"):
        preprocess(raw, tmp_path / "x.h5", small_cfg(val=6), progress=False)
    assert not (tmp_path / "x.h5").exists() and temp_files(tmp_path) == []


# ------------------------------------------------------------------ real data
def lv_enclosure(label: np.ndarray) -> tuple[float, float]:
    """Of the pixels just outside the LV (canonical 1): fraction myocardium, fraction RV."""
    ring = np.zeros(label.shape, bool)
    for lab, r in zip(label, ring):
        lv = lab == 1
        r[...] = ndimage.binary_dilation(lv) & ~lv
    return float(np.mean(label[ring] == 2)), float(np.mean(label[ring] == 3))


def test_acdc_subjects_preprocess_with_canonical_labels(acdc_root, tmp_path):
    """ACDC stores 1 RV / 3 LV: after the remap, crop and resize the LV (1) sits inside the myocardium."""
    root = tmp_path / "acdc"
    root.mkdir()
    for name in ("patient001", "patient021", "patient041", "patient061", "patient081"):  # one per group
        os.symlink(acdc_root / name, root / name)
    out = tmp_path / "acdc.h5"
    summary = preprocess(root, out, DataConfig(size=64, val=1, workers=2), progress=False)
    with open_store(out) as f:
        meta, label, image = read_meta(f), f["label"][()], f["image"][()]
    assert set(meta["source"]) == {"acdc"} and set(meta["view"]) == {"SA"}
    assert set(meta["pathology"]) == {"NOR", "MINF", "DCM", "HCM", "RV"}
    assert label.shape[1:] == (64, 64) and summary.n_slices == len(label) > 50
    assert -1.0 <= image.min() and image.max() <= 1.0
    myo, rv = lv_enclosure(label)
    assert myo > 0.9 and rv < 0.02, (myo, rv)
    assert lv_enclosure(np.array([0, 3, 2, 1], np.uint8)[label])[0] < 0.5  # the swapped order fails
    # every slice is centred on its heart: bounding-box centres near the middle
    centres = np.array([heart_center(lab) for lab in label])
    assert np.all(np.abs(centres - 31.5) <= 1.0)


def test_a_case_without_any_label_contributes_nothing(tmp_path):
    root = write_dataset(tmp_path / "raw", n=3)
    la = root / "dataset" / "003" / "003_LA_ED_gt.nii.gz"
    write_nifti(la, np.zeros((SIZE, SIZE, 1), np.uint8))
    summary = preprocess(root, tmp_path / "s.h5", small_cfg(val=1), progress=False)
    # 3 subjects x 4 cases, less the empty one; 2 unlabelled slices per SA case, plus the empty LA
    assert summary.cases == 11 and summary.n_slices == 23 and summary.dropped_unlabelled == 6 * 2 + 1
    with open_store(tmp_path / "s.h5") as f:
        assert str(la) not in read_sources(f)


def test_mnms2_subject_keeps_both_views_with_canonical_labels(mnms2_root, tmp_path):
    out = tmp_path / "mnms2.h5"
    summary = preprocess(mnms2_root, out, DataConfig(size=64, val=0, workers=0), progress=False)
    with open_store(out) as f:
        meta, label = read_meta(f), f["label"][()]
    assert set(meta["view"]) == {"SA", "LA"} and set(meta["split"]) == {"train"}
    assert summary.slices[("LA", "ED", "train")] == 1 and summary.slices[("LA", "ES", "train")] == 1
    np.testing.assert_allclose(meta["spacing"][meta["view"] == "LA"], 1.7188, atol=1e-3)
    myo, rv = lv_enclosure(label[meta["view"] == "SA"])
    assert myo > 0.9 and rv < 0.02, (myo, rv)
