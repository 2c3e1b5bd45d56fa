"""``python -m mmldm generate``: a label volume in NIfTI in, a synthetic image volume out.

The smoke VQVAE and LDM are conftest's session fixture ``smoke_ldm`` (trained on the tiny ring
store of test_train.py, 32 x 32, a few seconds); a smoke segmenter for the read-back measurement
is trained here on the same store. Their images
are noise by design: these tests check geometry, header, determinism, options and errors, never
image quality.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.condition import mask_edges
from mmldm.data.crop import crop_pad, crop_slice, heart_center
from mmldm.data.readers import acdc
from mmldm.errors import DataError, MMLDMError
from mmldm.generate_nifti import (
    FILL,
    LABEL_ORDERS,
    default_edges,
    from_grid,
    generate,
    parse_slices,
    read_labels,
    readback_dice,
    sampling_setup,
    slice_window,
    to_grid,
)

AFFINE = np.array([[0.0, 1.3, 0.0, -20.0], [-1.2, 0.0, 0.0, 15.0], [0.0, 0.0, 8.0, -40.0], [0, 0, 0, 1]])


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def models(smoke_ldm, tmp_path_factory):
    """(ldm checkpoint, segmenter checkpoint): conftest's session smoke LDM, and a smoke segmenter
    trained here on the same tiny ring store (for the read-back measurement)."""
    from mmldm.train.segmenter import train_segmenter

    seg = train_segmenter(load_config("smoke"), smoke_ldm["store"], tmp_path_factory.mktemp("segmenter"))
    return smoke_ldm["ckpt"], seg.checkpoint


def acdc_like_labels(shape=(40, 48, 3)) -> np.ndarray:
    """ACDC order on disk (1 RV, 2 MYO, 3 LV): LV disc in a myocardium ring, RV crescent beside;
    the last slice is empty (above the base)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.uint8)
    for z in range(shape[2] - 1):
        cy, cx = 20 + z, 22 + 2 * z
        r = np.hypot(yy - cy, xx - cx)
        label[..., z][(r >= 11) & (r < 16) & (xx < cx - 3)] = 1
        label[..., z][r < 9] = 2
        label[..., z][r < 5 + z] = 3
    return label


def save(path, array, affine=AFFINE, codes=(1, 2)):
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=codes[0])
    img.header.set_sform(affine, code=codes[1])
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# The pieces (no model)
# ---------------------------------------------------------------------------------------------


def test_label_orders_reuse_the_readers_tables(tmp_path):
    assert LABEL_ORDERS["acdc"] is acdc.REMAP and LABEL_ORDERS["mnms2"] is None
    path = save(tmp_path / "l.nii.gz", acdc_like_labels())
    as_acdc, spacing, _ = read_labels(path, "acdc")
    as_mnms, _, _ = read_labels(path, "mnms")
    disk = acdc_like_labels()
    assert (as_acdc[disk == 3] == 1).all() and (as_acdc[disk == 1] == 3).all()  # LV <-> RV
    assert np.array_equal(as_mnms, disk)
    assert spacing == pytest.approx((1.2, 1.3, 8.0))


def test_window_is_the_one_crop_pad_cuts_and_the_grid_matches_preprocessing():
    rng = np.random.default_rng(0)
    label = acdc_like_labels((37, 53, 2))[..., 0]
    for spacing, fov, size in (((1.5, 1.25), 40.0, 32), ((0.7, 0.9), 30.0, 16), ((2.0, 2.0), 120.0, 32)):
        center = heart_center(label) + rng.uniform(-3, 3, 2)
        r0, c0, rows, cols = slice_window(center, spacing, fov)
        index = crop_pad(np.arange(label.size).reshape(label.shape), center, (rows, cols), -1)
        rr, cc = np.mgrid[r0 : r0 + rows, c0 : c0 + cols]
        inside = (rr >= 0) & (rr < label.shape[0]) & (cc >= 0) & (cc < label.shape[1])
        assert np.array_equal(index[inside], (rr * label.shape[1] + cc)[inside]) and (index[~inside] == -1).all()
        grid = to_grid(label, center, spacing, fov, size)
        assert np.array_equal(grid, crop_slice(np.zeros(label.shape), label, spacing, fov, size, center)[1])
        # Back onto the slice: a constant stays constant inside the window, FILL outside it.
        back = from_grid(np.full((size, size), 0.5, np.float32), (r0, c0, rows, cols), label.shape)
        covered = np.zeros(label.shape, bool)
        covered[max(r0, 0) : r0 + rows, max(c0, 0) : c0 + cols] = True
        assert np.allclose(back[covered], 0.5) and (back[~covered] == FILL).all()


def test_grid_round_trip_keeps_a_smooth_image():
    # A smooth ramp sampled on the grid and mapped back matches the ramp on the source pixels.
    shape, spacing, fov, size = (60, 60), (1.0, 1.0), 40.0, 32
    center = (29.5, 29.5)
    r0, c0, rows, cols = slice_window(center, spacing, fov)
    g = (np.arange(size) + 0.5) * rows / size - 0.5 + r0  # source row of each grid pixel centre
    ramp_grid = np.tile((g / 60.0)[:, None], (1, size)).astype(np.float32)
    back = from_grid(ramp_grid, (r0, c0, rows, cols), shape)
    rows_in = np.arange(r0 + 2, r0 + rows - 2)  # away from the window's border (no extrapolation)
    assert np.allclose(back[rows_in, 30], rows_in / 60.0, atol=1e-3)


def test_mask_edges_are_the_label_borders():
    data = load_config("smoke").data
    label = LABEL_ORDERS["acdc"][acdc_like_labels((64, 64, 2))[..., 0]]
    edges = mask_edges(label, data)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 1}
    border = np.zeros(label.shape, bool)  # pixels whose 3x3 neighbourhood holds two labels
    padded = np.pad(label, 1, mode="edge")
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            border |= padded[1 + dr : 65 + dr, 1 + dc : 65 + dc] != label
    near = np.zeros_like(border)  # within 2 pixels of a border
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            near |= np.roll(np.roll(border, dr, 0), dc, 1)
    assert edges[~near].sum() == 0  # nothing away from a label border
    for a, b in ((0, 2), (2, 1), (0, 3)):  # every kind of border gets edges along it
        pair = np.zeros_like(border)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                pair |= (label == a) & (np.roll(np.roll(label, dr, 0), dc, 1) == b)
        assert edges[pair | np.roll(pair, 1, 0) | np.roll(pair, -1, 0)].sum() > 0, (a, b)


def test_parse_slices():
    assert parse_slices(None, 4) == [0, 1, 2, 3]
    assert parse_slices("1:3", 10) == [1, 2] and parse_slices("7:", 9) == [7, 8] and parse_slices("4,1", 6) == [1, 4]
    for bad in ("12", "a:b", "5:5"):
        with pytest.raises(MMLDMError, match="--slices"):
            parse_slices(bad, 10)


# ---------------------------------------------------------------------------------------------
# Generating volumes with the smoke model
# ---------------------------------------------------------------------------------------------


def test_output_keeps_shape_affine_and_header(models, tmp_path):
    ldm_ckpt, _ = models
    src = save(tmp_path / "labels.nii.gz", acdc_like_labels().astype(np.int16))
    summary = generate(ldm_ckpt, src, tmp_path / "out" / "image.nii.gz", labels="acdc", progress=False, device="cpu")
    assert summary["generated"] == [0, 1] and summary["filled"] == [2]  # the empty slice is not generated
    out, ref = nib.load(str(tmp_path / "out" / "image.nii.gz")), nib.load(str(src))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    assert out.get_data_dtype() == np.float32 and out.header["bitpix"] == 32
    for key in ("pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "xyzt_units"):
        assert np.array_equal(out.header[key], ref.header[key]), key
    image = np.asarray(out.dataobj)
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    assert (image[..., 2] == FILL).all() and image[..., 0].std() > 0
    assert not list(tmp_path.glob("out/*.tmp-*"))  # written atomically: nothing left beside it

    # A stack stored (H, W, Z, 1), and a single slice stored (H, W), keep their shapes; .nii works too.
    src4 = save(tmp_path / "labels4.nii", acdc_like_labels()[..., None])
    generate(ldm_ckpt, src4, tmp_path / "image4.nii", labels="acdc", slices="0", progress=False, device="cpu")
    assert nib.load(str(tmp_path / "image4.nii")).shape == (40, 48, 3, 1)
    src2 = save(tmp_path / "labels2.nii.gz", acdc_like_labels()[..., 1])
    generate(ldm_ckpt, src2, tmp_path / "image2.nii.gz", labels="acdc", view="LA", progress=False, device="cpu")
    assert nib.load(str(tmp_path / "image2.nii.gz")).shape == (40, 48)


def test_edges_default_to_the_profiles_guidance_mode():
    """A mask-first profile (guidance.mode mask_only) samples from the mask alone unless edges
    are asked for; a profile sampling with both conditions draws the mask's edges."""
    cfg = load_config("smoke")
    with_mode = {
        m: dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, mode=m)) for m in ("both", "mask_only")
    }
    assert default_edges(with_mode["both"]) == "auto" and default_edges(with_mode["mask_only"]) == "none"
    assert sampling_setup(with_mode["mask_only"])[0].guidance.mode == "mask_only"
    assert sampling_setup(with_mode["mask_only"], "auto")[0].guidance.mode == "both"
    assert sampling_setup(with_mode["both"])[0].guidance.mode == "both"
    assert sampling_setup(with_mode["both"], "none")[0].guidance.mode == "mask_only"
    assert load_config("paper").guidance.mode == "both"  # the reference study's design stays


def test_seeded_slice_independent_and_edges_matter(models, tmp_path):
    ldm_ckpt, _ = models
    src = save(tmp_path / "labels.nii.gz", acdc_like_labels())

    def run(name, **kw):
        generate(ldm_ckpt, src, tmp_path / name, labels="acdc", progress=False, device="cpu", **kw)
        return np.asarray(nib.load(str(tmp_path / name)).dataobj)

    a, b = run("a.nii.gz", seed=3), run("b.nii.gz", seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run("c.nii.gz", seed=4))
    assert not np.array_equal(a, run("auto.nii.gz", seed=3, edges="auto"))  # the default is the mask alone
    only = run("one.nii.gz", seed=3, slices="1:2")  # slice 1 alone is the same picture as in the full run
    assert np.array_equal(only[..., 1], a[..., 1]) and (only[..., 0] == FILL).all()
    # Other sampler settings give other images; the empty slice can be generated on request.
    assert not np.array_equal(a, run("ddpm.nii.gz", seed=3, sampler="ddpm", steps=4))
    assert not np.array_equal(a, run("scale.nii.gz", seed=3, scale_mask=3.0, scale_edge=0.5))
    empty = run("empty.nii.gz", seed=3, empty="generate")
    assert empty[..., 2].std() > 0 and np.array_equal(empty[..., :2], a[..., :2])
    # Each slice has its own noise (seed + z): two identical label slices give two pictures.
    twin = save(tmp_path / "twin.nii.gz", acdc_like_labels()[..., [0, 0]])
    generate(ldm_ckpt, twin, tmp_path / "twin_out.nii.gz", labels="acdc", progress=False, device="cpu")
    twins = np.asarray(nib.load(str(tmp_path / "twin_out.nii.gz")).dataobj)
    assert not np.array_equal(twins[..., 0], twins[..., 1])


@pytest.mark.parametrize("case", ["values", "acdc_value_4", "series", "corrupt", "truncated", "missing", "float"])
def test_bad_input_names_the_file(models, tmp_path, case):
    ldm_ckpt, _ = models
    path = tmp_path / f"{case}.nii.gz"
    label = acdc_like_labels()
    if case == "values":
        label[0, 0, 0] = 7
        save(path, label)
        expect = "outside"
    elif case == "acdc_value_4":
        label[3, 3, 1] = 4
        save(path, label)
        expect = "label order 'acdc'"
    elif case == "series":
        save(path, np.stack([label, label], axis=-1))
        expect = "pick a frame"
    elif case == "corrupt":
        path.write_bytes(b"this is not a NIfTI file" * 20)
        expect = "cannot read"
    elif case == "truncated":
        save(path, label)
        full = path.read_bytes()
        path.write_bytes(full[: len(full) // 2])
        expect = "cannot read"
    elif case == "missing":
        expect = "not found"
    else:
        save(path, label.astype(np.float32) + 0.5)
        expect = "non-integer"
    with pytest.raises(DataError, match=expect) as err:
        generate(ldm_ckpt, path, tmp_path / "out.nii.gz", labels="acdc", progress=False, device="cpu")
    assert err.value.path == path and str(path) in str(err.value)
    assert not (tmp_path / "out.nii.gz").exists()


def test_bad_options(models, tmp_path):
    ldm_ckpt, _ = models
    src = save(tmp_path / "labels.nii.gz", acdc_like_labels())
    with pytest.raises(DataError, match="must end in"):
        generate(ldm_ckpt, src, tmp_path / "out.png", labels="acdc", progress=False)
    for kw, expect in (
        ({"labels": "nope"}, "label order"),
        ({"labels": "acdc", "view": "XY"}, "view"),
        ({"labels": "acdc", "steps": 10_000}, "--steps"),
        ({"labels": "acdc", "edges": "sobel"}, "edges"),
        ({"labels": "acdc", "slices": "9"}, "--slices"),
    ):
        with pytest.raises(MMLDMError, match=expect):
            generate(ldm_ckpt, src, tmp_path / "out.nii.gz", progress=False, device="cpu", **kw)


def test_cli_end_to_end(models, tmp_path, capsys):
    ldm_ckpt, _ = models
    src = save(tmp_path / "labels.nii.gz", acdc_like_labels())
    out = tmp_path / "synthetic.nii.gz"
    rc = main(
        [
            "generate",
            "--checkpoint",
            str(ldm_ckpt),
            "--labels",
            "acdc",
            str(src),
            str(out),
            "--edges",
            "none",
            "--sampler",
            "ddim",
            "--steps",
            "4",
            "--scale-mask",
            "2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0 and out.is_file()
    assert "generate: wrote" in capsys.readouterr().out
    assert nib.load(str(out)).shape == (40, 48, 3)

    bad = save(tmp_path / "bad_gt.nii.gz", np.full((8, 8, 2), 9, np.uint8))
    rc = main(
        [
            "generate",
            "--checkpoint",
            str(ldm_ckpt),
            "--labels",
            "mnms2",
            str(bad),
            str(tmp_path / "x.nii.gz"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"mmldm generate: error: {bad}: label values outside")


def test_readback_dice_runs_with_the_smoke_models(models, tmp_path):
    ldm_ckpt, seg_ckpt = models
    label = acdc_like_labels()
    src = save(tmp_path / "labels.nii.gz", label)
    image = save(tmp_path / "image.nii.gz", np.array([10.0, 200.0, 80.0, 150.0], np.float32)[label])
    result = readback_dice(ldm_ckpt, seg_ckpt, src, "acdc", image, progress=False, device="cpu")
    assert result["slices"] == [0, 1] and result["per_slice"]["dice_LV"].shape == (2,)
    for summary in (result["dice"], result["ceiling"]):
        assert set(summary) == {"LV", "MYO", "RV", "fg"}
        assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in summary.values())
        assert np.isfinite(summary["fg"])


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


def test_real_acdc_label_volume(models, acdc_root, tmp_path, capsys):
    ldm_ckpt, _ = models
    src = acdc_root / "patient001" / "patient001_frame01_gt.nii.gz"
    out = tmp_path / "patient001_frame01_synthetic.nii.gz"
    rc = main(
        [
            "generate",
            "--checkpoint",
            str(ldm_ckpt),
            "--labels",
            "acdc",
            str(src),
            str(out),
            "--slices",
            "3:5",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    ref, img = nib.load(str(src)), nib.load(str(out))
    assert img.shape == ref.shape == (216, 256, 10) and np.array_equal(img.affine, ref.affine)
    assert np.array_equal(img.header["pixdim"], ref.header["pixdim"]) and img.get_data_dtype() == np.float32
    image = np.asarray(img.dataobj)
    assert (image[..., [0, 1, 2, 5, 6, 7, 8, 9]] == FILL).all()
    # The model's 160 mm window at 1.5625 mm: 102 x 102 source pixels around each slice's heart.
    label, spacing, _ = read_labels(src, "acdc")
    for z in (3, 4):
        r0, c0, rows, cols = slice_window(heart_center(label[..., z]), spacing[:2], 160.0)
        assert (rows, cols) == (102, 102)
        inside = np.zeros(label.shape[:2], bool)
        inside[max(r0, 0) : r0 + rows, max(c0, 0) : c0 + cols] = True
        assert image[inside, z].std() > 0 and (image[~inside, z] == FILL).all()  # nothing outside the window
