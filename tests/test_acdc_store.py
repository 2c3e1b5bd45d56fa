"""All 100 ACDC subjects of ../shared/data preprocessed into one store, checked as a whole.

The reference check of the data half of the pipeline on real images: shapes, the label remap
(ACDC stores 1 RV / 3 LV; the store must hold 1 LV / 3 RV), edges, and a subject-level split.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mmldm.data.preprocess import DataConfig, preprocess
from mmldm.data.store import open_store, read_config, read_meta


@pytest.fixture(scope="module")
def acdc_store(acdc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("acdc") / "acdc64.h5"
    cfg = DataConfig(size=64, fov_mm=160.0, val=10, workers=2)
    summary = preprocess(acdc_root, out, cfg, format="acdc", progress=False)
    return out, summary


def test_all_acdc_subjects_in_one_store(acdc_store):
    path, summary = acdc_store
    with open_store(path) as f:
        meta = read_meta(f)
        image, label, edge = f["image"][()], f["label"][()], f["edge"][()]
        assert read_config(f)["size"] == 64
    n = len(meta["subject"])
    assert image.shape == label.shape == edge.shape == (n, 64, 64)
    assert len(set(meta["subject"])) == 100 and summary.skipped == []
    assert set(meta["phase"]) == {"ED", "ES"} and set(meta["view"]) == {"SA"}
    assert set(meta["pathology"]) == {"NOR", "MINF", "DCM", "HCM", "RV"}
    # Subject-level split, 90/10, nobody in both.
    train = set(meta["subject"][meta["split"] == "train"])
    val = set(meta["subject"][meta["split"] == "val"])
    assert len(train) == 90 and len(val) == 10 and not train & val
    # Values: images normalised, labels canonical, edges binary and present.
    assert np.isfinite(image).all() and image.min() >= -1 and image.max() <= 1
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert set(np.unique(edge)) <= {0, 1} and edge.reshape(n, -1).any(1).mean() > 0.95


def test_acdc_labels_are_remapped_to_canonical_order(acdc_store):
    # Canonical 1 = LV blood pool, enclosed by the myocardium (2); 3 = RV, beside it. If the remap
    # were wrong, "1" would be the RV, whose outside border is mostly background, not myocardium.
    path, _ = acdc_store
    with open_store(path) as f:
        label = f["label"][()]
    ring_myo, rv_bigger = [], []
    for lab in label:
        lv, rv = lab == 1, lab == 3
        if lv.sum() < 20:
            continue
        ring = ndimage.binary_dilation(lv, iterations=1) & ~lv
        ring_myo.append((lab[ring] == 2).mean())
        if rv.sum() > 20:
            rv_ring = ndimage.binary_dilation(rv, iterations=1) & ~rv
            rv_bigger.append((lab[rv_ring] == 2).mean() < (lab[ring] == 2).mean())
    assert np.median(ring_myo) > 0.9
    assert np.mean(rv_bigger) > 0.9
