"""The anatomy segmenter: shapes, its loss, and a short training run on a tiny synthetic store.

The store is written directly with StoreWriter: 32 x 32 slices whose label map is a disc (LV)
inside a ring (MYO) beside a crescent-like box (RV), at random positions, and whose image is a
fixed intensity per class plus noise, so a few epochs are enough to learn it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmldm.config import load_config
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.store import StoreWriter
from mmldm.evaluate.anatomy import anatomy_dice
from mmldm.models.segmenter import (
    CHECKPOINT_NAME,
    Segmenter,
    SegmenterConfig,
    load_segmenter,
    segmentation_loss,
    soft_dice_loss,
)
from mmldm.train.segmenter import train_segmenter

SIZE = 32
LEVELS = np.array([-0.8, 0.8, -0.1, 0.5], np.float32)  # image intensity of BG, LV, MYO, RV
TINY = SegmenterConfig(channels=(8, 16), num_layers=1, epochs=6, batch_size=8, lr=3e-3)


def heart(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(12, 20, 2)
    r = np.hypot(yy - cy, xx - cx)
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[r < rng.uniform(6, 8)] = 2
    label[r < rng.uniform(3, 5)] = 1
    label[(r >= 8) & (r < 12) & (xx < cx - 2)] = 3
    return label


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "tiny.h5"
    rng = np.random.default_rng(0)
    labels = np.stack([heart(rng) for _ in range(32)])
    images = np.clip(LEVELS[labels] + rng.normal(0, 0.15, labels.shape), -1, 1).astype(np.float32)
    writer = StoreWriter(path, SIZE)
    writer.append(images, labels, np.zeros_like(labels))
    n = len(labels)
    subjects = [f"{i // 4:03d}" for i in range(n)]  # 8 subjects of 4 slices; the last 2 held out
    writer.finish(
        {
            "subject": subjects,
            "view": ["SA"] * n,
            "phase": ["ED", "ES"] * (n // 2),
            "slice_index": list(range(n)),
            "source": ["phantom"] * n,
            "split": ["val" if s in ("006", "007") else "train" for s in subjects],
            "vendor": [""] * n,
            "centre": [""] * n,
            "pathology": [""] * n,
            "spacing": [(1.0, 1.0)] * n,
        },
        {"config": "size: 32\n", "sources": "[]"},
    )
    return path


def test_shapes_features_and_size_check():
    model = Segmenter(SegmenterConfig(channels=(8, 16, 16), num_layers=1))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert model(x).shape == (2, 4, 32, 32)
    assert model.features(x).shape == (2, 16) == (2, model.num_features)
    assert model.predict(x).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.zeros(1, 1, 30, 30))


def test_config_rejects_bad_widths_and_profiles_carry_a_section():
    with pytest.raises(ValueError, match="norm_groups"):
        SegmenterConfig(channels=(8, 12), norm_groups=8)
    with pytest.raises(ValueError, match="segmenter.precision"):
        SegmenterConfig(precision="half")
    sizes = [load_config(p).segmenter for p in ("smoke", "quick", "laptop", "paper")]
    params = [sum(p.numel() for p in Segmenter(s).parameters()) for s in sizes]
    assert params == sorted(set(params))  # tiny < small < medium < large: each profile's judge has more capacity
    assert sizes[0].channels[-1] < sizes[3].channels[-1]
    # laptop's 128x128 judge has one level more than quick's 64x64 one: a bottleneck that sees the whole heart
    assert len(sizes[2].channels) == len(sizes[1].channels) + 1


def test_loss_is_small_for_a_confident_correct_prediction():
    labels = torch.randint(0, 4, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 20
    assert soft_dice_loss(perfect, labels).item() < 1e-3
    assert segmentation_loss(perfect, labels).item() < 1e-3
    assert segmentation_loss(torch.zeros(2, 4, 8, 8), labels).item() > 1.0  # log(4) + Dice term


def test_training_lowers_the_loss_and_saves_a_loadable_checkpoint(store, tmp_path):
    run = train_segmenter(TINY, store, tmp_path)
    assert len(run.losses) == TINY.epochs and len(run.step_losses) == TINY.epochs * 3  # 24 slices / 8
    assert run.losses[-1] < 0.8 * run.losses[0]  # seed 0: ~0.66
    assert run.checkpoint == tmp_path / CHECKPOINT_NAME and run.checkpoint.is_file()
    assert not list(tmp_path.glob("*.tmp-*"))  # the temporary file was renamed away
    model = load_segmenter(run.checkpoint)
    x = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    assert torch.equal(model(x), run.model(x))
    ckpt = torch.load(run.checkpoint, weights_only=True)
    assert ckpt["config"]["channels"] == [8, 16] and ckpt["n_train"] == 24 and ckpt["losses"] == run.losses

    # It has learnt the held-out slices' anatomy well beyond chance (the ceiling of a real run).
    val = CardiacSliceDataset(store, split="val")
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    assert np.nanmean(anatomy_dice(model, images, labels)["dice_fg"]) > 0.5


def test_training_is_seeded_and_restores_the_thread_count(store, tmp_path):
    cfg = SegmenterConfig(channels=(8, 16), num_layers=1, epochs=1, batch_size=8)
    a = train_segmenter(cfg, store, tmp_path / "a")
    b = train_segmenter(cfg, store, tmp_path / "b")
    assert a.step_losses == b.step_losses
    torch.set_num_threads(2)
    train_segmenter(SegmenterConfig(channels=(8, 16), num_layers=1, epochs=1, cpu_threads=1), store, tmp_path / "c")
    assert torch.get_num_threads() == 2
