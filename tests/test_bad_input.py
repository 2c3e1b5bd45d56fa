"""Broken datasets: each way a folder or file can be wrong gives one DataError naming it.

Every test writes a small valid dataset in tmp_path, breaks one thing, and checks that the
error's ``path`` is the broken file (or folder) and that the message says what is wrong.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmldm.data.nifti import load_nifti
from mmldm.data.readers import find_cases, load_case
from mmldm.errors import DataError


def write_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 8.0, 1.0])), str(path))
    return path


def good_label(shape=(24, 24, 3)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10], label[10:14, 4:10], label[14:20, 4:10] = 1, 2, 3
    return label


def good_image(shape=(24, 24, 3)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 97


@pytest.fixture
def subject(tmp_path: Path) -> Path:
    """A valid one-subject M&Ms-2 folder (SA ED only); tests break one of its files."""
    folder = tmp_path / "dataset" / "001"
    write_nifti(folder / "001_SA_ED.nii.gz", good_image())
    write_nifti(folder / "001_SA_ED_gt.nii.gz", good_label())
    return folder


def load_error(root: Path) -> DataError:
    (case,) = find_cases(root)
    with pytest.raises(DataError) as err:
        load_case(case)
    return err.value


def test_the_valid_fixture_loads(subject):
    (case,) = find_cases(subject.parent.parent)
    assert load_case(case).label.max() == 3


# ---------------------------------------------------------------- damaged files


def test_truncated_gz_is_caught_at_load(subject):
    path = subject / "001_SA_ED.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = load_error(subject)
    assert err.path == path and "corrupt or truncated" in str(err)


def test_corrupt_gz_bytes(subject):
    path = subject / "001_SA_ED_gt.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    data = bytearray(gzip.compress(raw))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16  # inside the deflate stream
    path.write_bytes(bytes(data))
    err = load_error(subject)
    assert err.path == path and "cannot read NIfTI" in str(err)


@pytest.mark.parametrize("content", [b"", b"this is not a NIfTI file", gzip.compress(b"nor this")])
def test_empty_or_non_nifti_file(subject, content):
    path = subject / "001_SA_ED.nii.gz"
    path.write_bytes(content)
    err = load_error(subject)
    assert err.path == path and "cannot read NIfTI" in str(err)


def test_truncated_uncompressed_nii(tmp_path):
    path = write_nifti(tmp_path / "x.nii", good_image())
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError) as err:
        load_nifti(path, ndim=3)
    assert err.value.path == path and "corrupt or truncated" in str(err.value)


# ---------------------------------------------------------------- wrong contents


def test_shape_mismatch_names_both_files(subject):
    path = write_nifti(subject / "001_SA_ED_gt.nii.gz", good_label((24, 20, 3)))
    err = load_error(subject)
    assert err.path == path and "does not match image shape" in str(err)
    assert "001_SA_ED.nii.gz" in str(err) and "(24, 20, 3)" in str(err)


@pytest.mark.parametrize("bad_value", [4, 255])
def test_label_values_outside_0_to_3(subject, bad_value):
    label = good_label()
    label[0, 0, 0] = bad_value
    path = write_nifti(subject / "001_SA_ED_gt.nii.gz", label)
    err = load_error(subject)
    assert err.path == path and "outside {0, 1, 2, 3}" in str(err) and str(bad_value) in str(err)


def test_negative_and_fractional_labels(subject):
    path = subject / "001_SA_ED_gt.nii.gz"
    write_nifti(path, good_label().astype(np.int16) - 1)
    assert "found -1" in str(load_error(subject))
    label = good_label().astype(np.float32)
    label[1, 1, 1] = 1.5
    write_nifti(path, label)
    err = load_error(subject)
    assert err.path == path and "non-integer" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_intensities(subject, bad):
    image = good_image()
    image[3, 3, 1] = bad
    path = write_nifti(subject / "001_SA_ED.nii.gz", image)
    err = load_error(subject)
    assert err.path == path and "1 NaN/inf" in str(err)


def test_constant_image(subject):
    path = write_nifti(subject / "001_SA_ED.nii.gz", np.full((24, 24, 3), 7.0, np.float32))
    err = load_error(subject)
    assert err.path == path and "constant" in str(err)


def test_4d_file_where_3d_is_expected(subject):
    path = write_nifti(subject / "001_SA_ED.nii.gz", np.stack([good_image()] * 2, axis=3))
    err = load_error(subject)
    assert err.path == path and "is 4-D" in str(err) and "expected a 3-D" in str(err)


def test_3d_file_where_4d_is_expected(tmp_path):
    folder = tmp_path / "Training" / "Labeled" / "A1B2C3"
    path = write_nifti(folder / "A1B2C3_sa.nii.gz", good_image())
    label = np.zeros((24, 24, 3, 4), np.uint8)
    label[..., 0], label[..., 2] = good_label(), good_label()
    write_nifti(folder / "A1B2C3_sa_gt.nii.gz", label)
    cases = find_cases(tmp_path, format="mnms")
    with pytest.raises(DataError) as err:
        load_case(cases[0])
    assert err.value.path == path and "is 3-D" in str(err.value) and "4-D" in str(err.value)


def test_mnms_frame_without_labels_hints_at_1_based_indices(tmp_path):
    folder = tmp_path / "Training" / "Labeled" / "A1B2C3"
    write_nifti(folder / "A1B2C3_sa.nii.gz", np.stack([good_image()] * 4, axis=3))
    label = np.zeros((24, 24, 3, 4), np.uint8)
    label[..., 0], label[..., 2] = good_label(), good_label()
    path = write_nifti(folder / "A1B2C3_sa_gt.nii.gz", label)
    (tmp_path / "info.csv").write_text("External code,Vendor,ED,ES\nA1B2C3,A,1,3\n")  # 1-based
    cases = find_cases(tmp_path)
    assert [c.frame for c in cases] == [1, 3]
    with pytest.raises(DataError) as err:
        load_case(cases[0])
    assert err.value.path == path and "frame 1 has no labels" in str(err.value)


def test_mnms_without_csv_needs_two_labelled_frames(tmp_path):
    folder = tmp_path / "A1B2C3"
    write_nifti(folder / "A1B2C3_sa.nii.gz", np.stack([good_image()] * 4, axis=3))
    label = np.zeros((24, 24, 3, 4), np.uint8)
    label[..., 2] = good_label()
    path = write_nifti(folder / "A1B2C3_sa_gt.nii.gz", label)
    with pytest.raises(DataError) as err:
        find_cases(tmp_path)
    assert err.value.path == path and "labels on 1 frame(s)" in str(err.value)


# ---------------------------------------------------------------- missing files, wrong folders


def test_missing_gt_file(subject):
    (subject / "001_SA_ED_gt.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        find_cases(subject.parent.parent)
    assert err.value.path == subject / "001_SA_ED.nii.gz"
    assert "001_SA_ED_gt.nii.gz is missing" in str(err.value)


def test_gt_deleted_after_listing(subject):
    (case,) = find_cases(subject.parent.parent)
    case.label_path.unlink()
    with pytest.raises(DataError) as err:
        load_case(case)
    assert err.value.path == case.label_path and "file not found" in str(err.value)


def test_acdc_info_cfg_without_es_and_missing_frame(tmp_path):
    folder = tmp_path / "patient001"
    write_nifti(folder / "patient001_frame01.nii.gz", good_image())
    write_nifti(folder / "patient001_frame01_gt.nii.gz", good_label())
    cfg = folder / "Info.cfg"
    cfg.write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(DataError) as err:
        find_cases(tmp_path)
    assert err.value.path == cfg and "'ES:'" in str(err.value)
    cfg.write_text("ED: 1\nES: 9\nGroup: NOR\n")
    with pytest.raises(DataError) as err:
        find_cases(tmp_path)
    assert err.value.path == folder / "patient001_frame09.nii.gz"
    assert "ES is frame 9" in str(err.value)


@pytest.mark.parametrize("content", ["empty", "wrong"])
def test_empty_or_unrecognised_folder(tmp_path, content):
    if content == "wrong":
        (tmp_path / "notes.txt").write_text("hello")
        write_nifti(tmp_path / "scans" / "brain.nii.gz", good_image())
    with pytest.raises(DataError) as err:
        find_cases(tmp_path)
    message = str(err.value)
    assert err.value.path == tmp_path and "no known dataset layout" in message
    for layout in ("M&Ms-2", "M&Ms:", "ACDC"):
        assert layout in message


def test_missing_folder_a_file_and_an_unknown_format(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nowhere")
    path = write_nifti(tmp_path / "x.nii.gz", good_image())
    with pytest.raises(DataError, match="not a folder"):
        find_cases(path)
    with pytest.raises(DataError, match="unknown format 'kaggle'"):
        find_cases(tmp_path, format="kaggle")


# ---------------------------------------------------------------- a damaged store


@pytest.mark.parametrize("array", ["image", "label"])
def test_a_store_damaged_in_the_middle_names_the_file_and_the_array(tmp_path, array):
    # Bytes overwritten inside one array: the uncompressed image reads as wrong numbers without any
    # HDF5 error, the gzip'ed label fails to inflate (h5py's OSError names no file). Both are one
    # DataError naming the store and the array, before any training reads them.
    import h5py

    from mmldm.data.dataset import CardiacSliceDataset
    from mmldm.data.store import verify_store
    from smoke_models import write_tiny_store

    store = write_tiny_store(tmp_path / "store.h5")
    CardiacSliceDataset(store)  # whole: reads
    with h5py.File(store, "r") as f:
        ds = f[array]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(len(ds) // 2).byte_offset
    with open(store, "r+b") as f:
        f.seek(offset + 8)
        f.write(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        verify_store(store)
    assert err.value.path == store and f"damaged at /{array}" in str(err.value), str(err.value)
    with pytest.raises(DataError, match=f"damaged at /{array}"):
        CardiacSliceDataset(store, split="val")


def test_a_2d_image_is_one_slice_with_a_word(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", good_image((24, 24)))
    with pytest.warns(UserWarning, match=r"flat.nii.gz: a 2-D image \(24, 24\), read as a volume of one slice"):
        array, _ = load_nifti(path, ndim=3)
    assert array.shape == (24, 24, 1)
