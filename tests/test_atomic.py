"""mmldm.atomic: a write is all or nothing, and no temporary file outlives it."""

import json

import pytest
import torch

from mmldm import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}')
    seen = []

    def crash(tmp):
        seen.append(tmp)
        tmp.write_text('{"half')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic.write_atomic(path, crash)
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert seen[0].parent == tmp_path and seen[0] != path  # it wrote beside the target, not onto it


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def crash(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C too

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(tmp_path / "sub" / "a.bin", crash)
    assert list((tmp_path / "sub").iterdir()) == []


def test_writers_give_the_complete_result(tmp_path):
    text = "line\n" * 10_000
    assert atomic.write_text(tmp_path / "deep" / "a.txt", text).read_text() == text  # folder made
    data = bytes(range(256)) * 1000
    assert atomic.write_bytes(tmp_path / "b.bin", data).read_bytes() == data
    assert atomic.copy_file(tmp_path / "b.bin", tmp_path / "c.bin").read_bytes() == data
    obj = {"w": torch.arange(1000.0), "n": 3}
    loaded = torch.load(atomic.torch_save(obj, tmp_path / "d.pt"), weights_only=True)
    assert loaded["n"] == 3 and torch.equal(loaded["w"], obj["w"])
    # Overwriting replaces the whole file, never appends to or truncates part of it.
    assert atomic.write_text(tmp_path / "deep" / "a.txt", "short").read_text() == "short"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "c.bin", "d.pt", "deep"]


def test_temporary_name_is_hidden_beside_the_target_and_keeps_a_requested_suffix(tmp_path):
    path = tmp_path / "fig.png"
    plain, suffixed = atomic.temporary_path(path), atomic.temporary_path(path, ".png")
    assert plain.parent == suffixed.parent == tmp_path
    assert plain.name.startswith(".fig.png.tmp-") and suffixed.suffix == ".png"
    assert plain.match(atomic.STALE_GLOB) and suffixed.match(atomic.STALE_GLOB)
    names = []
    atomic.write_atomic(path, lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"png")), suffix=".png")
    assert names == [suffixed.name] and path.read_bytes() == b"png"
