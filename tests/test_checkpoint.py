"""Checkpoints: atomic writes that keep the previous one, clear errors for broken files, RNG capture."""

from __future__ import annotations

import pickle
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mmldm.checkpoint import (
    LAST,
    PREVIOUS,
    CheckpointError,
    capture_rng,
    find_resume,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    weights_hash,
)
from mmldm.errors import MMLDMError


def state(step: int, value: float = 0.0) -> dict:
    return {"stage": "vqvae", "step": step, "model": {"w": torch.full((3, 4), value)}, "config": {"a": [1, 2]}}


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_round_trip_and_rotation(tmp_path):
    last = tmp_path / LAST
    save_checkpoint(state(1, 1.0), last)
    assert not (tmp_path / PREVIOUS).exists()
    save_checkpoint(state(2, 2.0), last)
    save_checkpoint(state(3, 3.0), last)
    assert load_checkpoint(last)["step"] == 3
    prev = load_checkpoint(tmp_path / PREVIOUS, stage="vqvae")
    assert prev["step"] == 2 and torch.equal(prev["model"]["w"], torch.full((3, 4), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREVIOUS]  # no temporary files left


def test_loads_with_weights_only(tmp_path):
    # Everything in a checkpoint is a tensor or plain data: torch.load(weights_only=True) reads it.
    save_checkpoint({**state(1), "rng": [capture_rng({"noise": torch.Generator().manual_seed(3)})]}, tmp_path / LAST)
    raw = torch.load(tmp_path / LAST, weights_only=True)
    assert raw["format"] == "mmldm-checkpoint" and raw["step"] == 1


def test_truncated_checkpoint_is_a_clear_error_naming_the_good_one(tmp_path):
    last = tmp_path / LAST
    save_checkpoint(state(4), last)
    save_checkpoint(state(8), last)
    truncate(last)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(last)
    msg = str(err.value)
    assert str(last) in msg and "truncated or corrupt" in msg
    assert str(tmp_path / PREVIOUS) in msg and "step 4" in msg
    assert isinstance(err.value, MMLDMError)
    # Resuming falls back to the previous checkpoint, with a warning naming both files.
    with pytest.warns(UserWarning, match=PREVIOUS):
        ckpt, path = find_resume(tmp_path, "vqvae")
    assert path == tmp_path / PREVIOUS and ckpt["step"] == 4


def test_a_broken_last_is_never_rotated_over_a_good_previous(tmp_path):
    last = tmp_path / LAST
    save_checkpoint(state(4), last)
    save_checkpoint(state(8), last)
    truncate(last)
    save_checkpoint(state(12), last)  # e.g. the run resumed from prev.pt and saved again
    assert load_checkpoint(last)["step"] == 12
    assert load_checkpoint(tmp_path / PREVIOUS)["step"] == 4


def test_both_broken_or_missing(tmp_path):
    assert find_resume(tmp_path) is None
    last = tmp_path / LAST
    last.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        find_resume(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an mmldm checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_wrong_stage_is_named(tmp_path):
    save_checkpoint(state(1), tmp_path / LAST)
    with pytest.raises(CheckpointError, match="'vqvae' checkpoint, expected a 'ldm'"):
        load_checkpoint(tmp_path / LAST, stage="ldm")


def test_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path):
    last = tmp_path / LAST
    save_checkpoint(state(1, 1.0), last)
    (tmp_path / f".{LAST}.tmp-999999").write_bytes(b"left by a killed run")
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({**state(2), "bad": lambda: 0}, last)  # a lambda cannot be pickled
    assert load_checkpoint(last)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # stale and failed temporaries gone


def test_rng_capture_and_restore_repeats_every_stream():
    g = torch.Generator().manual_seed(7)
    captured = capture_rng({"noise": g})

    def draw():
        return (random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.rand((), generator=g)))

    first = draw()
    restore_rng(captured, {"noise": g})
    assert draw() == first


def test_weights_hash_is_bitwise():
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a.state_dict()) == weights_hash(b.state_dict())
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(1.0))  # one ulp
    assert weights_hash(a.state_dict()) != weights_hash(b.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights_hash({"x": torch.zeros((), dtype=torch.bfloat16), "y": torch.ones(2, dtype=torch.bool)})


def test_a_flipped_byte_is_caught_by_the_checksums(tmp_path):
    last = tmp_path / LAST
    save_checkpoint(state(1, 1.0), last)
    save_checkpoint(state(2, 2.0), last)
    data = bytearray(last.read_bytes())
    i = data.index(torch.full((3, 4), 2.0).numpy().tobytes())  # inside the tensor's record
    data[i + 5] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(last)
    save_checkpoint(state(3, 3.0), last)  # the damaged file is replaced, not kept as prev.pt
    assert load_checkpoint(tmp_path / PREVIOUS)["step"] == 1
