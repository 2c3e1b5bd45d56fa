"""Exports keep the scan's place and orientation (mmldm/data/geometry.py).

A synthetic slice written as diag(mm, mm, 999) while its pixels keep ACDC's axes turns 180° against
the real slice of the same mask once a reader reorients both to RAS. Here the real and the grid
slice are compared in scanner millimetres, which no reorientation changes: the LV and RV centres of
a real ACDC slice and of its grid twin (from a label volume, and through a preprocessed store) must
fall on the same points, and the files written keep that affine through ``as_closest_canonical``.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mmldm.data.geometry import grid_affine

LV, RV = 1, 3  # canonical labels


def world_centre(label: np.ndarray, value: int, affine: np.ndarray, z: int = 0) -> np.ndarray:
    """The scanner position (mm) of the centre of ``value`` in a 2-D label array (slice ``z``) or
    a 3-D one."""
    idx = np.argwhere(label == value).mean(axis=0)
    idx = np.concatenate([idx, [z] * (3 - len(idx)), [1.0]])
    return (affine @ idx)[:3]


def test_grid_affine_maps_pixel_centres_onto_the_window():
    # A 40 x 20 window at (-3, 5) resized to 10 x 10: grid pixel (0, 0) covers source rows -3..0
    # (centre -1.5) and columns 5..6 (centre 5.5); pixel (9, 9) rows 33..36 and columns 23..24.
    a = grid_affine(np.eye(4), (-3, 5, 40, 20), size=10, z=7)
    assert np.allclose(a @ [0, 0, 0, 1], [-1.5, 5.5, 7, 1])
    assert np.allclose(a @ [9, 9, 0, 1], [34.5, 23.5, 7, 1])
    assert np.allclose(np.linalg.norm(a[:3, :3], axis=0), [4, 2, 999])


def _mid_slice_with_both(label: np.ndarray) -> int:
    both = [z for z in range(label.shape[2]) if (label[:, :, z] == LV).any() and (label[:, :, z] == RV).any()]
    return both[len(both) // 2]


def test_a_grid_slice_lies_where_its_real_acdc_slice_lies(acdc_root, tmp_path):
    from mmldm.generate_nifti import read_labels
    from mmldm.synthesize import _volume_masks, write_case

    gt = acdc_root / "patient001" / "patient001_frame01_gt.nii.gz"
    label, spacing, img = read_labels(gt, "acdc")  # canonical 1 LV, 3 RV
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")  # the case this guards: ACDC is not stored RAS
    masks = _volume_masks(label, spacing, gt, "SA", 128, 256.0, img.affine)
    z = _mid_slice_with_both(label)
    (mask,) = [m for m in masks if m.where == f"slice {z}"]
    for value in (LV, RV):
        real = world_centre(label[:, :, z], value, img.affine, z)
        grid = world_centre(mask.label, value, mask.affine)
        assert np.linalg.norm(real - grid) < 2.0, (value, real, grid)  # within about one grid pixel

    # The exported files carry it, and survive an RAS reorientation with the anatomy in place.
    (tmp_path / "imagesTr").mkdir(), (tmp_path / "labelsTr").mkdir()
    write_case(tmp_path, "case", np.zeros((128, 128), np.float32), mask.label, 2.0, mask.affine)
    written = nib.load(tmp_path / "labelsTr" / "case.nii.gz")
    assert np.allclose(written.affine, mask.affine, atol=1e-4)
    canon = nib.as_closest_canonical(written)
    assert nib.aff2axcodes(canon.affine) == ("R", "A", "S")
    data = np.asarray(canon.dataobj)
    for value in (LV, RV):
        assert (
            np.linalg.norm(world_centre(data, value, canon.affine) - world_centre(label[:, :, z], value, img.affine, z))
            < 2.0
        )


def test_a_store_keeps_each_slice_affine(acdc_root, tmp_path):
    import shutil

    from mmldm.data.preprocess import DataConfig, preprocess
    from mmldm.synthesize import _store_masks

    src = tmp_path / "acdc"
    for name in ("patient001", "patient002"):
        shutil.copytree(acdc_root / name, src / name)
    store = tmp_path / "s.h5"
    preprocess(src, store, DataConfig(size=64, val=1), format="acdc", progress=False)
    masks = _store_masks(store, 64, 256.0, "all")
    from mmldm.generate_nifti import read_labels

    label, _, img = read_labels(src / "patient001" / "patient001_frame01_gt.nii.gz", "acdc")
    z = _mid_slice_with_both(label)
    (mask,) = [m for m in masks if m.subject == "patient001" and m.where.endswith(f"ED slice {z})")]
    assert mask.affine is not None
    for value in (LV, RV):
        real = world_centre(label[:, :, z], value, img.affine, z)
        assert np.linalg.norm(real - world_centre(mask.label, value, mask.affine)) < 4.0  # one 4-mm grid pixel


@pytest.mark.parametrize("pixel_mm", [2.0])
def test_a_mask_of_unknown_place_is_written_plain(tmp_path, pixel_mm):
    from mmldm.synthesize import write_case

    (tmp_path / "imagesTr").mkdir(), (tmp_path / "labelsTr").mkdir()
    write_case(tmp_path, "c", np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), pixel_mm)
    assert np.allclose(nib.load(tmp_path / "imagesTr" / "c_0000.nii.gz").affine, np.diag([2.0, 2.0, 999.0, 1.0]))
