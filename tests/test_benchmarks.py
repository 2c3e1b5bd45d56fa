"""benchmarks/models.py runs end to end on the smoke profile and prints the table it promises.

One timed call per measurement and no warm-up budget: these tests check the plumbing (shapes,
the samplers, the table and the JSON), never the timings themselves.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from mmldm.config import load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_models", REPO / "benchmarks" / "models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def tiny(bench, **over):
    """One timed call per measurement; nothing run whole unless ``max_full`` says so."""
    return bench.Settings.quick(
        **{"repeats": 1, "min_repeats": 1, "budget": 0.0, "max_full": 0.0, "train_batch": 2, "sample_batch": 2, **over}
    )


EXPECTED_ROWS = [
    "Image / latent",
    "VQVAE parameters",
    "UNet parameters, concat_nearest",
    "UNet parameters, hint_encoder",
    "UNet parameters, spade",
    "VQVAE training, images/s (batch)",
    "UNet training, images/s (batch), concat_nearest",
    "UNet training, images/s (batch), hint_encoder",
    "UNet training, images/s (batch), spade",
    "UNet forward, ms per sampling batch (batch)",
    "DDPM-1000 sampling, s/image",
    "DDIM-50 sampling, s/image",
    "DPM-Solver-20 sampling, s/image",
    "VQVAE decode, s/image",
]


def test_cli_prints_the_table_and_writes_json(bench, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    bench.main(
        [
            "--profiles",
            "smoke",
            "smoke",
            "--device",
            "cpu",
            "--quick",
            "--repeats",
            "1",
            "--min-repeats",
            "1",
            "--budget",
            "0",
            "--max-full",
            "0",
            "--train-batch",
            "2",
            "--sample-batch",
            "2",
            "--json",
            str(out_json),
        ]
    )
    text = capsys.readouterr().out
    assert "no GPU found" in text or not torch.cuda.is_available()

    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["", "smoke (CPU)", "smoke (CPU)"]
    assert set(table[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[2:])}
    assert list(rows) == EXPECTED_ROWS
    assert all(len(cells) == 2 and all(cells) for cells in rows.values())
    # max_full = 0: every sampler is extrapolated, marked "~", and explained in a footnote.
    for label in EXPECTED_ROWS[10:13]:
        assert rows[label][0].startswith("~")
    assert rows["UNet parameters, hint_encoder"][0].endswith("*")  # smoke's own mode
    assert "~ extrapolated" in text and "shared" in text and "wall time" in text

    data = json.loads(out_json.read_text())
    assert len(data["results"]) == 2
    r = data["results"][0]
    assert (
        r["profile"] == "smoke"
        and r["device"] == "cpu"
        and r["latent_shape"] == [load_config("smoke").vqvae.latent_channels, 8, 8]
    )
    assert set(r["params"]["unet"]) == set(bench.MODES) and r["params"]["vqvae"] > 0
    assert set(r["train_unet"]) == set(bench.MODES)
    for e in [r["train_vqvae"], *r["train_unet"].values()]:
        assert e["batch"] == 2 and e["n"] == 1 and e["images_per_s"] > 0
    for name, _, steps in bench.SAMPLERS:
        e = r["sampling"][name]
        assert e["extrapolated"] and e["steps"] == steps
        assert math.isclose(e["seconds"], e["per_step_s"] * steps)
        assert math.isclose(e["per_image_s"], e["seconds"] / 2)


def test_short_sampler_runs_whole(bench):
    """A sampler whose estimate is under max_full runs through sample() and is not marked."""
    cfg = bench.load_config("smoke")
    s = tiny(bench, max_full=1e9)
    out = bench.sampling_times(
        cfg, 2, torch.device("cpu"), s, samplers=(("dpm_solver", "DPM-Solver", 3), ("ddpm", "DDPM", 4))
    )
    for name in ("dpm_solver", "ddpm"):
        assert not out[name]["extrapolated"] and out[name]["n"] == 1 and out[name]["seconds"] > 0
    assert out["dpm_solver"]["label"] == "DPM-Solver-3"
    assert out["vqvae_decode"]["per_image_s"] > 0


def test_profile_mode_only_leaves_other_modes_blank(bench):
    s = tiny(bench, modes=("spade",))
    res = bench.benchmark_profile("smoke", torch.device("cpu"), s, log=lambda m: None)
    assert list(res["train_unet"]) == ["spade"]
    rows = dict(bench.table_rows([res]))
    assert rows["UNet training, images/s (batch), concat_nearest"] == ["–"]
    assert rows["UNet training, images/s (batch), spade"][0].endswith("(2)")


# ---------------------------------------------------------------------------------------------
# benchmarks/gpu_check.py: without CUDA it refuses (exit 2), unless --cpu-dry-run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_says_so_and_exits_2(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--cpu-dry-run" in err
    assert not out.exists()


def run_dry(gpu_check, out, *extra) -> dict:
    assert gpu_check.main(["--cpu-dry-run", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_gpu_check_cpu_dry_run_writes_every_measurement(gpu_check, tmp_path, monkeypatch, capsys):
    """Every stage in two of the eight combinations (the flags are no-ops on the CPU), smoke models."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    combos = ["fp32", "bf16+channels_last+compile"]
    data = run_dry(gpu_check, tmp_path / "gpu_check.json", "--profile", "smoke", "--combos", *combos)
    text = capsys.readouterr().out
    assert "CPU dry run" in text and "written:" in text

    cfg = load_config("smoke")
    assert data["dry_run"] and data["profile"] == "smoke" and data["device"]["torch"] == torch.__version__
    assert data["model"]["image"] == [1, cfg.data.size, cfg.data.size]
    rows = data["rows"]
    assert [(r["stage"], r["combo"]) for r in rows] == [(s, c) for s in gpu_check.STAGES for c in combos]
    for r in rows:
        assert "error" not in r, r.get("traceback")
        assert r["images_per_s"] > 0 and r["peak_allocated_mb"] is None and not r["flags_applied"]
        line = next(ln for ln in text.splitlines() if ln.startswith(r["stage"]) and f" {r['combo']} " in ln)
        assert f"{r['images_per_s']:.2f}" in line
        assert r["amp"] == r["channels_last"] == r["compile"] == (r["combo"] != "fp32")
    train = [r for r in rows if r["stage"] != "sampling"]
    assert all(r["batch"] == 1 and r["steps"] == 1 and r["s_per_step"] > 0 for r in train)
    for r in (r for r in rows if r["stage"] == "sampling"):
        assert r["sampler"] == "ddim" and r["sampler_steps"] == 2
        assert r["output_shape"] == [2, 1, cfg.data.size, cfg.data.size] and r["output_finite"] and r["decode_s"] > 0


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_paper_models(gpu_check, tmp_path, monkeypatch):
    """The paper's models (at 64x64), one combination: ~10 s (30 s on a busy 2-core machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = run_dry(gpu_check, tmp_path / "gpu_check.json", "--combos", "bf16+channels_last+compile")
    assert data["profile"] == "paper" and data["model"]["latent"] == [3, 8, 8]
    vqvae, ldm, sampling = data["rows"]
    assert not any("error" in r for r in data["rows"]), [r.get("traceback") for r in data["rows"]]
    assert ldm["params"] == sampling["params"]["unet"] == 103_526_546
    assert sampling["params"]["vqvae"] == 22_003_932 and vqvae["params"] > 22_003_932  # + discriminator


def test_gpu_check_records_a_failure_and_goes_on(gpu_check, tmp_path, monkeypatch):
    """An out-of-memory error in one measurement is written into its row; the next one still runs."""
    from mmldm.train.ldm import LDMTrainer

    def out_of_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(LDMTrainer, "train_step", out_of_memory)
    data = run_dry(
        gpu_check, tmp_path / "gpu_check.json", "--profile", "smoke", "--combos", "fp32", "--stages", "ldm", "sampling"
    )
    ldm, sampling = data["rows"]
    assert ldm["error"].startswith("out of memory: CUDA out of memory") and "images_per_s" not in ldm
    assert "error" not in sampling and sampling["images_per_s"] > 0


# ---------------------------------------------------------------------------------------------
# benchmarks/utility.py: every regime, arm and seed, same steps, nested subjects, resumable
# ---------------------------------------------------------------------------------------------


def test_utility_trains_every_arm_and_resumes(smoke_ldm, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("benchmarks_utility", REPO / "benchmarks" / "utility.py")
    utility = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utility)
    args = ["--run", str(smoke_ldm["run"]), "--store", str(smoke_ldm["store"]), "--out", str(tmp_path / "u")]
    args += ["--subjects", "1", "all", "--steps", "2", "3", "--seeds", "0", "1", "--augment-masks", "1"]
    args += ["--augment-masks-full", "0", "--threads", "1", "--precision", "fp32"]
    result = utility.main(args)
    rows = result["rows"]
    assert len(rows) == 2 * 3 * 2 and {r["arm"] for r in rows} == set(utility.ARMS)
    one, every = result["regimes"]["1"], result["regimes"]["all"]
    assert len(one["subjects"]) == 1 and set(one["subjects"]) < set(every["subjects"])  # nested
    assert one["synthetic_slices"] == 2 * one["real_slices"] and every["synthetic_slices"] == every["real_slices"]
    for r in rows:
        reg = result["regimes"][r["regime"]]
        expect = {"real": reg["real_slices"], "synth": reg["synthetic_slices"]}
        assert r["train_slices"] == expect.get(r["arm"], reg["real_slices"] + reg["synthetic_slices"])
        assert r["steps"] == reg["steps"] and all(0.0 <= r["dice"][c] <= 1.0 for c in ("LV", "MYO", "fg"))
    summary = result["summary"]["1"]["real+synth"]["fg"]
    seeds = [r["dice"]["fg"] for r in rows if r["regime"] == "1" and r["arm"] == "real+synth"]
    assert summary["mean"] == pytest.approx(sum(seeds) / 2) and summary["n"] == 2
    assert (tmp_path / "u" / "utility.png").exists() and (tmp_path / "u" / "utility.csv").read_text().count("\n") == 13
    # A re-run trains nothing: every result is on disk with the same steps and training set.
    monkeypatch.setattr(utility, "fit_segmenter", lambda *a, **k: pytest.fail("trained again"))
    again = utility.main(args)
    assert again["rows"] == rows
    # A result of another model is trained again (each row records the LDM weights it measured).
    assert {r["ldm_weights"] for r in rows} == {result["settings"]["ldm_weights"]}
    stale = tmp_path / "u" / "results" / "1_real_s0.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "ldm_weights": "0" * 16}))
    from mmldm.train.segmenter import fit_segmenter

    trained = []
    monkeypatch.setattr(utility, "fit_segmenter", lambda *a, **k: trained.append(k["desc"]) or fit_segmenter(*a, **k))
    utility.main(args)
    assert trained == ["1 real s0"]
