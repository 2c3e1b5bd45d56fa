"""CardiacSliceDataset over a small store written directly with StoreWriter.

The synthetic slices are built so that every check can be exact: the label map is an asymmetric
pattern (so each of the 8 dihedral transforms gives a different map), the image is a fixed
function of the label (``LUT[label]``, exact in float16), and the edge map is the label boundary.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from mmldm.data.dataset import CardiacSliceDataset, expand_batch
from mmldm.data.schema import COND_CHANNELS, LABELS, VIEWS
from mmldm.data.store import StoreWriter
from mmldm.errors import DataError

SIZE = 32
LUT = np.array([-1.0, -0.5, 0.25, 0.75], np.float32)  # image value per label, exact in float16
SUBJECTS = ("001", "002", "003", "004")  # 3 slices each: SA, SA, LA; subject 004 is validation


def pattern(rng: np.random.Generator) -> np.ndarray:
    """An asymmetric label map: no rotation or mirror image of it equals another."""
    label = np.zeros((SIZE, SIZE), np.uint8)
    dy, dx = rng.integers(-2, 3, 2)
    label[4 + dy : 18 + dy, 3 + dx : 11 + dx] = 1
    label[4 + dy : 18 + dy, 11 + dx : 15 + dx] = 2
    label[20 + dy : 27 + dy, 3 + dx : 28 + dx] = 3
    return label


def boundary(label: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (a definition every dihedral map keeps)."""
    cross = ndimage.generate_binary_structure(2, 1)
    return (ndimage.grey_dilation(label, footprint=cross) != ndimage.grey_erosion(label, footprint=cross)).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "tiny.h5"
    rng = np.random.default_rng(0)
    labels = np.stack([pattern(rng) for _ in range(3 * len(SUBJECTS))])
    writer = StoreWriter(path, SIZE)
    writer.append(LUT[labels], labels, np.stack([boundary(lab) for lab in labels]))
    n = len(labels)
    writer.finish(
        {
            "subject": [s for s in SUBJECTS for _ in range(3)],
            "view": ["SA", "SA", "LA"] * len(SUBJECTS),
            "phase": ["ED", "ES", "ED"] * len(SUBJECTS),
            "slice_index": list(range(n)),
            "source": ["phantom"] * n,
            "split": ["val" if s == "004" else "train" for s in SUBJECTS for _ in range(3)],
            "vendor": [""] * n,
            "centre": [""] * n,
            "pathology": ["NOR"] * n,
            "spacing": [(1.5, 1.5)] * n,
        },
        {"config": "size: 32\n", "sources": "[]"},
    )
    return path, labels


def test_items_have_the_documented_shapes_types_and_values(store):
    path, labels = store
    ds = CardiacSliceDataset(path, split="train")
    assert len(ds) == 9
    item = ds[4]
    assert item["image"].shape == item["edge"].shape == (1, SIZE, SIZE)
    assert item["onehot"].shape == (4, SIZE, SIZE) and item["cond"].shape == (5, SIZE, SIZE)
    assert item["label"].shape == (SIZE, SIZE) and item["label"].dtype == torch.int64
    for key in ("image", "edge", "onehot", "cond"):
        assert item[key].dtype == torch.float32, key
    assert item["view"].dtype == torch.int64 and item["view"].item() == VIEWS.index("SA")
    assert (item["subject"], item["phase"], item["slice_index"], item["index"]) == ("002", "ES", 4, 4)
    assert torch.equal(item["label"], torch.from_numpy(labels[4]).long())
    assert torch.equal(item["image"][0], torch.from_numpy(LUT[labels[4]]))
    assert ds[2]["view"].item() == 1 and ds[-1]["index"] == 8
    with pytest.raises(IndexError):
        ds[9]


def test_onehot_and_condition_channel_order(store):
    path, labels = store
    item = CardiacSliceDataset(path, split=None)[7]
    onehot, cond, label = item["onehot"], item["cond"], item["label"]
    assert torch.all(onehot.sum(0) == 1) and torch.equal(onehot.argmax(0), label)
    assert torch.equal(cond[0], item["edge"][0]) and torch.equal(cond[1:], onehot)
    assert torch.equal(cond[COND_CHANNELS.index("edge")], torch.from_numpy(boundary(labels[7])).float())
    for k, name in LABELS.items():
        assert torch.equal(cond[COND_CHANNELS.index(name)], (label == k).float()), name


def test_split_and_view_filters(store):
    path, _ = store
    assert len(CardiacSliceDataset(path, split=None)) == 12
    val = CardiacSliceDataset(path, split="val")
    assert len(val) == 3 and set(val.meta["subject"]) == {"004"}
    la = CardiacSliceDataset(path, split="train", views="LA")
    assert len(la) == 3 and all(la[i]["view"].item() == 1 for i in range(3))
    assert len(CardiacSliceDataset(path, split=None, views=["SA", "LA"])) == 12
    with pytest.raises(DataError, match="no slices"):
        CardiacSliceDataset(path, split="test")
    with pytest.raises(ValueError, match="views"):
        CardiacSliceDataset(path, views=("2CH",))


def test_in_memory_gives_the_same_items(store):
    path, _ = store
    lazy = CardiacSliceDataset(path, split="train", views="SA")
    memory = CardiacSliceDataset(path, split="train", views="SA", in_memory=True)
    assert memory._file is None  # nothing kept open
    for i in range(len(lazy)):
        a, b = lazy[i], memory[i]
        for key in ("image", "cond", "label", "view"):
            assert torch.equal(a[key], b[key]), key
    memory[0]["image"].fill_(9.0)  # items never alias the in-memory arrays
    assert memory[0]["image"].max() < 1.0


def test_lazy_open_and_pickling(store):
    path, _ = store
    ds = CardiacSliceDataset(path, split="train")
    assert ds._file is None  # __init__ read the metadata and closed the file
    ds[0]
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))  # an open handle would fail to pickle
    assert clone._file is None
    assert torch.equal(clone[3]["image"], ds[3]["image"]) and clone._file is not None
    ds.close()
    assert ds._file is None


def test_dataloader_with_two_workers_reads_every_item_once(store):
    path, labels = store
    ds = CardiacSliceDataset(path, split=None)
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    assert ds._file is None  # only the workers opened the file
    index = torch.cat([b["index"] for b in batches])
    assert index.tolist() == list(range(12))
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (12, 1, SIZE, SIZE)
    assert torch.equal(images[:, 0], torch.from_numpy(LUT[labels]))
    assert batches[0]["cond"].shape == (5, 5, SIZE, SIZE) and batches[0]["view"].shape == (5,)
    assert batches[0]["subject"] == ["001", "001", "001", "002", "002"]


def dihedral_images(label: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(m, k) for m in (label, label[:, ::-1]) for k in range(4)]


def test_augmentation_keeps_image_edges_and_labels_aligned(store):
    path, labels = store
    torch.manual_seed(0)
    ds = CardiacSliceDataset(path, split=None, augment=True, jitter=0.0)
    candidates = dihedral_images(labels[5])
    seen = set()
    for _ in range(40):
        item = ds[5]
        label = item["label"].numpy()
        matches = [k for k, c in enumerate(candidates) if np.array_equal(c, label)]
        assert len(matches) == 1  # the label map is one of the 8 dihedral transforms
        seen.add(matches[0])
        assert np.array_equal(item["image"][0].numpy(), LUT[label])  # image moved with it
        assert np.array_equal(item["edge"][0].numpy(), boundary(label))  # edges moved with it
        assert torch.equal(item["onehot"].argmax(0), item["label"])
    assert len(seen) >= 6  # the transforms really vary


def test_intensity_jitter_is_affine_on_the_image_only(store):
    path, labels = store
    torch.manual_seed(1)
    ds = CardiacSliceDataset(path, split=None, augment=True, jitter=0.2)
    item = ds[0]
    image, label = item["image"][0].numpy(), item["label"].numpy()
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert any(np.array_equal(c, label) for c in dihedral_images(labels[0]))
    assert np.array_equal(item["edge"][0].numpy(), boundary(label))
    # one scale and shift maps the clean LUT values to the jittered ones (where not clipped)
    ref = LUT[label]
    keep = np.abs(image) < 1.0
    scale, shift = np.polyfit(ref[keep], image[keep], 1)
    assert not np.allclose(image, ref)
    np.testing.assert_allclose(scale * ref[keep] + shift, image[keep], atol=1e-5)
    assert 0.8 <= scale <= 1.2 and abs(shift) <= 0.2


def test_each_worker_draws_its_own_augmentations(store):
    path, _ = store
    ds = CardiacSliceDataset(path, split=None, augment=True, jitter=0.2)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, sampler=[0, 0, 0, 0])
    first, second = [b["image"] for b in list(loader)[:2]]  # item 0 from worker 0, item 1 from worker 1
    assert not torch.equal(first, second)


def test_compact_items_expand_to_the_same_batch(store):
    path, labels = store
    compact = CardiacSliceDataset(path, split=None, expand=False)
    full = CardiacSliceDataset(path, split=None)
    item = compact[3]
    assert item["image"].dtype == torch.float16 and item["image"].shape == (1, SIZE, SIZE)
    assert item["label"].dtype == torch.uint8 and item["label"].shape == (SIZE, SIZE)
    assert item["edge"].dtype == torch.uint8 and item["edge"].shape == (1, SIZE, SIZE)
    assert "cond" not in item and "onehot" not in item
    one = expand_batch(item)  # a single item: no batch dimension
    for key in ("image", "edge", "onehot", "cond", "label"):
        assert torch.equal(one[key], full[3][key]) and one[key].dtype == full[3][key].dtype, key
    loader = DataLoader(compact, batch_size=4, num_workers=2)
    expected = DataLoader(full, batch_size=4)
    for got, want in zip(loader, expected):
        got = expand_batch(got, "cpu")
        for key in ("image", "edge", "onehot", "cond", "label", "view", "index"):
            assert torch.equal(got[key], want[key]), key
        assert got["subject"] == want["subject"]
