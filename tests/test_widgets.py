"""Notebook 06's callbacks (mmldm.viz.widgets), called directly: no browser, a smoke model.

Mask edits are checked on a drawn short-axis label map (LV disk, myocardium ring, RV crescent in
background); the explorer and the widgets on the ``smoke_ldm`` session fixture (tests/conftest.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mmldm.data.edges import canny_edges
from mmldm.errors import DataError, MMLDMError
from mmldm.inference import LatentDiffusion
from mmldm.viz.widgets import (
    Explorer,
    build_ui,
    edit_edges,
    edit_mask,
    repaint,
    to_png,
    trajectory_figure,
)

CANNY = {"canny_sigma": 1.4, "canny_kernel": 5, "canny_low": 50.0, "canny_high": 100.0, "canny_blur": True}


def drawn_heart(size: int = 64) -> np.ndarray:
    """LV disk (r 8) in a myocardium ring (to r 12), an RV crescent to its left, background elsewhere."""
    yy, xx = np.mgrid[:size, :size]
    r_lv = np.hypot(yy - 32, xx - 36)
    label = np.zeros((size, size), np.uint8)
    label[np.hypot(yy - 32, xx - 22) < 13] = 3  # the wall drawn over it leaves a crescent
    label[r_lv < 12] = 2
    label[r_lv < 8] = 1
    return label


def areas(label: np.ndarray) -> list[int]:
    return [int((label == k).sum()) for k in range(4)]


def touches(label: np.ndarray, a: int, b: int) -> bool:
    """Whether a pixel of label a has a 4-neighbour of label b."""
    near_b = cv2.dilate((label == b).astype(np.uint8), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))
    return bool(((label == a) & near_b.astype(bool)).any())


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel to the nearest pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


# ---------------------------------------------------------------------------------------------
# Mask editing and the edge channel (no model)
# ---------------------------------------------------------------------------------------------


def test_drawn_heart_is_anatomically_ordered():
    label = drawn_heart()
    assert all(a > 0 for a in areas(label))
    assert not touches(label, 1, 0) and not touches(label, 1, 3) and touches(label, 2, 3)


def test_growing_the_lv_takes_myocardium_and_keeps_a_wall():
    label = drawn_heart()
    grown = edit_mask(label, "LV", 3)
    a, b = areas(label), areas(grown)
    assert b[1] > a[1] and b[2] < a[2] and b[0] == a[0] and b[3] == a[3]  # BG and RV untouched
    assert b[1] + b[2] == a[1] + a[2]  # the epicardium did not move
    assert not touches(grown, 1, 0) and not touches(grown, 1, 3)  # still inside the wall
    new = (grown == 1) & (label != 1)
    assert distance_to(label == 1)[new].max() <= 3 + 0.5  # within 3 pixels of the old LV
    # Growing more than the wall is thick still leaves a wall (its outermost pixel ring).
    huge = edit_mask(label, "LV", 10)
    assert (huge == 2).sum() > 0 and not touches(huge, 1, 0) and not touches(huge, 1, 3)


def test_shrinking_the_lv_gives_its_pixels_to_the_myocardium():
    label = drawn_heart()
    shrunk = edit_mask(label, 1, -2)
    a, b = areas(label), areas(shrunk)
    assert b[1] < a[1] and b[2] - a[2] == a[1] - b[1] and b[0] == a[0] and b[3] == a[3]


def test_myocardium_grows_into_background_only_and_shrinks_around_the_lv():
    label = drawn_heart()
    grown = edit_mask(label, "myocardium", 2)
    a, b = areas(label), areas(grown)
    assert b[2] > a[2] and b[1] == a[1] and b[3] == a[3] and b[0] == a[0] - (b[2] - a[2])
    assert np.array_equal(grown == 3, label == 3)
    shrunk = edit_mask(label, "myocardium", -6)  # thicker than the wall: a 1-pixel wall stays
    a, b = areas(label), areas(shrunk)
    assert b[2] < a[2] and b[1] == a[1] and b[3] == a[3] and b[0] == a[0] + (a[2] - b[2])
    assert (shrunk == 2).any() and not touches(shrunk, 1, 0) and not touches(shrunk, 1, 3)


def test_rv_grows_into_background_and_shrinks_to_background():
    label = drawn_heart()
    grown = edit_mask(label, "RV", 2)
    assert np.array_equal(grown == 1, label == 1) and np.array_equal(grown == 2, label == 2)
    assert areas(grown)[3] > areas(label)[3]
    shrunk = edit_mask(label, "RV", -2)
    assert np.array_equal(shrunk == 1, label == 1) and np.array_equal(shrunk == 2, label == 2)
    assert 0 < areas(shrunk)[3] < areas(label)[3]
    assert set(np.unique(shrunk[(label == 3) & (shrunk != 3)])) == {0}


def test_edit_mask_leaves_its_input_alone_and_rejects_bad_edits():
    label = drawn_heart()
    before = label.copy()
    edit_mask(label, "LV", 2)
    assert np.array_equal(label, before)
    same = edit_mask(label, "RV", 0)
    assert np.array_equal(same, label) and same is not label
    with pytest.raises(ValueError, match="no RV"):
        edit_mask(np.where(label == 3, 0, label), "RV", 1)
    with pytest.raises(ValueError, match="structure must be one of"):
        edit_mask(label, "aorta", 1)
    with pytest.raises(ValueError, match="labels must be in"):
        edit_mask(label + 4, "LV", 1)


def test_edges_are_recomputed_only_near_the_edit():
    label = drawn_heart()
    image = np.array([-0.8, 0.7, -0.3, 0.5], np.float32)[label]  # bright blood, dark wall
    edges = canny_edges(image, **{k.removeprefix("canny_"): v for k, v in CANNY.items()})
    edges[5, 10:50] = 1  # an edge Canny of this image would not find (stored edges come from the real image)
    assert np.array_equal(edit_edges(image, label, label, edges, CANNY), edges)
    grown = edit_mask(label, "LV", 2)
    new_edges = edit_edges(image, label, grown, edges, CANNY)
    changed = grown != label
    far = distance_to(changed) > CANNY["canny_kernel"] // 2 + 2
    assert np.array_equal(new_edges[far], edges[far])  # the stored edges, bit for bit, away from it
    # The edges now follow the new LV border: most border pixels of the grown LV have an edge within 1 px.
    border = (grown == 1) & cv2.dilate((grown != 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    near_edge = distance_to(new_edges.astype(bool))[border] <= 1.5
    assert near_edge.mean() > 0.8
    # ... and no longer the old one, where the LV grew past it.
    old_border = (label == 1) & cv2.dilate((label != 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    inside = old_border & (distance_to(grown != 1) > 2)
    assert inside.any() and not new_edges[inside].any()


def test_repaint_uses_the_new_structures_intensity():
    label = drawn_heart()
    image = np.array([-0.8, 0.7, -0.3, 0.5], np.float32)[label]
    grown = edit_mask(label, "LV", 2)
    painted = repaint(image, label, grown)
    assert np.allclose(painted[grown != label], 0.7) and np.array_equal(painted[grown == label], image[grown == label])


def test_build_condition_is_edges_then_one_hot():
    from mmldm.data.condition import build_condition

    label = drawn_heart(16)
    edge = np.zeros_like(label)
    edge[3, 4] = 1
    cond = build_condition(label, edge)
    assert torch.equal(build_condition(torch.from_numpy(label), torch.from_numpy(edge)), cond)  # torch path
    assert cond.shape == (5, 16, 16) and cond[0, 3, 4] == 1 and cond[0].sum() == 1
    assert torch.equal(cond[1:].argmax(0), torch.from_numpy(label).long()) and torch.all(cond[1:].sum(0) == 1)


def test_png_round_trip_and_upscaling():
    image = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    png = to_png(image, scale=3)
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (9, 12) and back[0, 0] == 0 and back[-1, -1] == 255
    assert np.array_equal(back[::3, ::3], np.rint((image + 1) * 127.5).astype(np.uint8))
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0, 0] = 1.0  # red
    back = cv2.imdecode(np.frombuffer(to_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert tuple(back[0, 0]) == (0, 0, 255)  # BGR


# ---------------------------------------------------------------------------------------------
# The explorer on a smoke model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explorer(smoke_ldm):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Explorer(LatentDiffusion.from_checkpoint(smoke_ldm["ckpt"]), smoke_ldm["store"])
    torch.set_num_threads(before)


@pytest.fixture
def ex(explorer):
    """The module's explorer, back at its first slice with the stored mask."""
    explorer.select(0)
    return explorer


def test_explorer_offers_the_validation_slices(ex):
    choices = ex.choices()
    assert [i for _, i in choices] == list(range(len(ex.slices))) and len(choices) == 6
    assert choices[0][0].startswith("004 SA")  # subject, view, phase, slice index
    assert ex.image.shape == (32, 32) and ex.cond.shape == (5, 32, 32) and not ex.edited


def test_forward_noising_is_cached_deterministic_and_noisier_with_t(ex):
    x_t, x0 = ex.forward_noising(60)
    assert x_t.shape == x0.shape == (32, 32) and x_t.dtype == np.float32
    assert -1 <= x_t.min() and x_t.max() <= 1 and -1 <= x0.min() and x0.max() <= 1
    again = ex.forward_noising(60)
    assert again[0] is x_t and again[1] is x0  # a cache hit, not a recomputation
    ex._forward.clear()
    fresh = ex.forward_noising(60)
    assert np.array_equal(fresh[0], x_t) and np.array_equal(fresh[1], x0)  # same fixed eps
    # x_t at t = 0 is the slice's own latent (barely noised); later steps drift away from it.
    clean = ex.decode(ex.z0)[0]
    d = [np.abs(ex.forward_noising(t)[0] - clean).mean() for t in (0, 30, 99)]
    assert d[0] < d[1] < d[2]
    with pytest.raises(ValueError, match="t must be in"):
        ex.forward_noising(ex.num_timesteps)


def test_forward_x0_estimate_follows_the_guidance(ex):
    both = ex.forward_noising(50, "both", 2.0, 2.0)[1]
    assert not np.array_equal(both, ex.forward_noising(50, "mask_only", 2.0, 2.0)[1])
    assert not np.array_equal(both, ex.forward_noising(50, "both", 4.0, 2.0)[1])
    assert np.array_equal(both, ex.forward_noising(50, "both", 2.0, 2.0)[1])


def test_regenerate_stores_every_step_and_matches_sample(ex):
    import dataclasses

    traj = ex.regenerate(scale_mask=1.5, scale_edge=1.0, steps=7, mode="both", seed=3)
    assert len(traj) == 8 and traj is ex.trajectory and len(traj.timesteps) == 7
    assert traj.timesteps == sorted(traj.timesteps, reverse=True) and traj.t(7) == -1
    assert traj.x_t.shape == traj.x0.shape == (8, 32, 32) and np.array_equal(traj.x_t[-1], traj.x0[-1])
    assert not np.array_equal(traj.x_t[0], traj.x_t[3])
    # The final frame is exactly what the shared sampling function makes for these settings.
    guidance = dataclasses.replace(ex.cfg.guidance, mode="both", scale_mask=1.5, scale_edge=1.0)
    sampler = dataclasses.replace(ex.sampler_cfg, name="ddim", eta=0.0, num_inference_steps=7)
    ref = ex.ldm.sample(ex.cond[None], ex.view, sampler=sampler, guidance=guidance, seed=3)
    assert np.array_equal(traj.x_t[-1], ref[0, 0].numpy())
    x_t, x0, t = ex.reverse_frame(2)
    assert t == traj.timesteps[2] and np.array_equal(x_t, traj.x_t[2]) and np.array_equal(x0, traj.x0[2])
    same = ex.regenerate(scale_mask=1.5, scale_edge=1.0, steps=7, mode="both", seed=3)
    assert np.array_equal(same.x_t, traj.x_t) and np.array_equal(same.x0, traj.x0)
    other = ex.regenerate(scale_mask=1.5, scale_edge=1.0, steps=7, mode="mask_only", seed=3)
    assert not np.array_equal(other.x_t[-1], traj.x_t[-1])
    with pytest.raises(IndexError):
        ex.reverse_frame(8)
    with pytest.raises(ValueError, match="steps must be in"):
        ex.regenerate(steps=0)


def test_regenerate_from_an_edited_mask(ex):
    edited = edit_mask(ex.label0, "LV", 2)
    traj = ex.regenerate(steps=3, mask=edited)
    assert ex.edited and traj.settings["edited"] and np.array_equal(ex.label, edited)
    assert torch.equal(ex.cond[1:].argmax(0), torch.from_numpy(edited).long())
    assert np.array_equal(ex.cond[0].numpy(), ex.edge) and not np.array_equal(ex.edge, ex.edge0)
    ex.reset_mask()
    assert not ex.edited and np.array_equal(ex.edge, ex.edge0)


def test_reverse_frame_needs_a_trajectory_and_the_store_must_fit(smoke_ldm, tmp_path):
    from smoke_models import write_tiny_store

    ldm = LatentDiffusion.from_checkpoint(smoke_ldm["ckpt"])
    fresh = Explorer(ldm, smoke_ldm["store"])
    with pytest.raises(MMLDMError, match="regenerate"):
        fresh.reverse_frame(0)
    other = write_tiny_store(tmp_path / "big.h5", size=48)
    with pytest.raises(DataError, match="48x48.*32x32") as err:
        Explorer(ldm, other)
    assert str(other) in str(err.value)


def test_trajectory_figure(ex):
    import matplotlib.pyplot as plt

    ex.regenerate(steps=5)
    fig = trajectory_figure(ex, columns=4)
    assert len(fig.axes) == 3 * 5  # three rows; the real slice / condition column + 4 frames
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The widgets, driven by setting their values (what the browser does)
# ---------------------------------------------------------------------------------------------


def test_widgets_call_the_explorer(ex):
    ui = build_ui(ex)
    assert ui.k.max == ui.steps.value == ex.trajectory.settings["steps"] and ui.k.value == ui.k.max
    before = ui.fwd_xt.value, ui.fwd_x0.value
    ui.t.value = 10
    assert ui.fwd_xt.value != before[0] and ui.fwd_x0.value != before[1] and "t = 10" in ui.fwd_xt_caption.value
    assert ui.fwd_xt.value == to_png(ex.forward_noising(10)[0], ui.scale)  # what the explorer returns
    assert "forward t" in ui.latency
    frame = ui.rev_xt.value
    ui.k.value = 0
    assert ui.rev_xt.value != frame and ui.rev_xt.value == to_png(ex.trajectory.x_t[0], ui.scale)

    # Guidance sliders update the forward panel now, and only mark the sample stale. (The smoke
    # model barely reacts to the scales, so the pictures are compared with the explorer's.)
    sample_png, trajectory = ui.final_img.value, ex.trajectory
    assert ui.mode.value == "mask_only"  # the widgets start from the profile's mode: the mask alone
    ui.scale_mask.value = 4.0
    assert (10, "mask_only", 4.0, ui.scale_edge.value) in ex._forward
    assert ui.fwd_x0.value == to_png(ex.forward_noising(10, "mask_only", 4.0, ui.scale_edge.value)[1], ui.scale)
    assert ui.final_img.value == sample_png and ex.trajectory is trajectory and "Regenerate" in ui.final_caption.value
    cond_mask_only = ui.cond_img.value
    ui.mode.value = "both"
    assert (10, "both", 4.0, ui.scale_edge.value) in ex._forward  # the observer asked for it
    assert cond_mask_only == to_png(ex.condition_rgb("mask_only"), ui.scale) != ui.cond_img.value
    assert ui.cond_img.value == to_png(ex.condition_rgb("both"), ui.scale)
    ui.steps.value = 3
    ui.on_regenerate()
    s = ex.trajectory.settings
    assert (s["mode"], s["scale_mask"], s["steps"]) == ("both", 4.0, 3) and ui.k.max == 3
    assert ui.final_img.value == to_png(ex.trajectory.x_t[-1], ui.scale) and "Regenerate" not in ui.final_caption.value

    # Editing the mask updates the condition at once; regenerating uses it.
    cond_png = ui.cond_img.value
    ui.structure.value, ui.pixels.value = "LV", 2
    ui.on_apply()
    assert ex.edited and ui.cond_img.value != cond_png and "edited" in ui.cond_caption.value
    ui.on_regenerate()
    assert ex.trajectory.settings["edited"]
    ui.on_reset()
    assert not ex.edited and ui.cond_img.value == cond_png

    # An impossible edit is reported in the status line, not raised.
    for _ in range(3):
        ui.structure.value, ui.pixels.value = "RV", -5
        ui.on_apply()
    assert "no RV" in ui.status.value

    # Another slice: new picture, new forward panel.
    real = ui.real_img.value
    ui.slice.value = 2
    assert ex.index == 2 and ui.real_img.value != real and "new slice" in ui.final_caption.value


def test_typical_slice_is_the_first_showing_all_three_structures(ex):
    def shows_all(i, k=20):
        counts = np.bincount(np.asarray(ex.slices[i]["label"]).ravel(), minlength=4)
        return bool((counts[1:] >= k).all())

    i = ex.typical_slice()
    assert shows_all(i) or not any(shows_all(j) for j in range(len(ex.slices)))
    assert not any(shows_all(j) for j in range(i))
    assert ex.typical_slice(min_pixels=10**6) == 0  # none qualifies: the first slice
