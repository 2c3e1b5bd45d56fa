"""The evaluation engine (mmldm/evaluate/run.py) and ``python -m mmldm evaluate``, on smoke models.

A tiny store is written directly (tests/smoke_models.py: 32 x 32 rings of LV / myocardium / RV,
4 training and 2 held-out subjects, SA and LA views, ED and ES, two pathologies), a smoke VQVAE and
LDM are trained on it once for the module (a few seconds), and the evaluation runs on a handful of
held-out slices. The smoke model's images are noise by design: these tests check the plumbing,
the schema and the value ranges, never the quality.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmldm.checkpoint import LAST
from mmldm.cli import main as cli_main
from mmldm.config import load_config
from mmldm.errors import ConfigError
from mmldm.evaluate.memorisation import memorisation_ratios
from mmldm.evaluate.paired import EDGE_SOURCES, generate_paired, pick_indices
from mmldm.evaluate.run import PUBLISHED, VARIANTS, evaluate, evaluation_settings, realism_images, variant_settings
from mmldm.evaluate.settings import EvaluationConfig
from mmldm.inference import LatentDiffusion
from smoke_models import train_smoke_ldm, write_tiny_store

SIZE = 32
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cfg, store, run folder): a smoke VQVAE and LDM trained once for this module, on a ring store
    of its own: 6 subjects of 4 slices, the last 2 held out, pathologies NOR and DCM."""
    root = tmp_path_factory.mktemp("eval_run")
    store = write_tiny_store(root / "tiny.h5", subjects=6, per_subject=4, held_out=2, pathologies=("NOR", "DCM"))
    cfg = load_config("smoke")
    train_smoke_ldm(cfg, store, root, root / "figures")
    return cfg, store, root


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """One evaluation: 6 held-out slices, the main variant and the DDPM one on a 3-slice subset;
    no segmenter given (one is trained beside the run), the Inception file missing."""
    cfg, store, root = trained
    out = tmp_path_factory.mktemp("eval_out") / "evaluation" / "metrics.json"
    metrics = evaluate(
        cfg,
        root / "ldm" / LAST,
        store=store,
        out=out,
        n=6,
        n_ddpm=3,
        variants=["ddpm1000_both", "ddim50_both"],
        main="ddim50_both",  # not the smoke profile's (mask-only) main: named, so it leads
        inception_path=out.parent / "absent.pt",
        progress=False,
    )
    return metrics, out


def test_variant_settings_change_only_what_they_name():
    cfg = load_config("laptop")
    for name in VARIANTS:
        sampler, guidance = variant_settings(name, cfg.sampler, cfg.guidance, 1000)
        assert sampler.clip_to_latents == cfg.sampler.clip_to_latents and sampler.eta == cfg.sampler.eta
        assert guidance.p_drop_mask == cfg.guidance.p_drop_mask
    main = variant_settings(cfg.evaluation.main, cfg.sampler, cfg.guidance, 1000)
    assert main == (cfg.sampler, cfg.guidance)  # the laptop profile's main row is its own sampler and guidance
    quick = load_config("quick")
    assert variant_settings(quick.evaluation.main, quick.sampler, quick.guidance, 1000) == (
        quick.sampler,
        quick.guidance,
    )
    assert variant_settings("ddpm1000_both", cfg.sampler, cfg.guidance, 1000)[0].num_inference_steps == 1000
    assert variant_settings("ddpm1000_both", cfg.sampler, cfg.guidance, 100)[0].num_inference_steps == 100
    assert variant_settings("dpm20_both", cfg.sampler, cfg.guidance, 1000)[0].name == "dpm_solver"
    assert variant_settings("ddim50_mask_only", cfg.sampler, cfg.guidance, 1000)[1].mode == "mask_only"
    plain = variant_settings("ddim50_no_guidance", cfg.sampler, cfg.guidance, 1000)[1]
    assert (plain.scale_mask, plain.scale_edge, plain.mode) == (1.0, 1.0, "both")
    with pytest.raises(ConfigError, match="unknown evaluation variant"):
        variant_settings("ddim7", cfg.sampler, cfg.guidance, 1000)


def test_evaluation_precision_is_checked_and_laptop_samples_in_bf16_where_native():
    with pytest.raises(ValueError, match="evaluation.precision"):
        EvaluationConfig(precision="fp16")
    assert load_config("smoke").evaluation.precision == "fp32"  # tests compare with fp32 references
    assert load_config("laptop").evaluation.precision == "auto"


def _check_stat(block, lo, hi):
    assert set(block) == {"mean", "std", "n"}
    assert lo <= block["mean"] <= hi, block


def test_metrics_json_schema_and_ranges(evaluated):
    metrics, out = evaluated
    on_disk = json.loads(out.read_text())  # parses; NaN would have been written as null
    assert on_disk == metrics
    assert set(metrics) >= {
        "meta",
        "published",
        "reconstruction",
        "ceiling",
        "variants",
        "main",
        "groups",
        "realism",
        "memorisation",
    }
    meta = metrics["meta"]
    for key in (
        "profile",
        "source",
        "store",
        "split",
        "n",
        "seed",
        "ldm_checkpoint",
        "ldm_step",
        "vqvae_checkpoint",
        "segmenter_checkpoint",
        "created",
        "seconds",
        "torch",
        "device",
        "precision",
    ):
        assert key in meta, key
    assert meta["profile"] == "smoke" and meta["split"] == "val" and meta["n"] == 6 and meta["source"] == "phantom"
    assert meta["ldm_step"] == load_config("smoke").train_ldm.steps and meta["segmenter_trained"] is True
    assert metrics["published"] == PUBLISHED
    assert metrics["reconstruction"] is None  # no recon_metrics.json beside this VQVAE

    assert metrics["main"] == "ddim50_both" and list(metrics["variants"]) == ["ddim50_both", "ddpm1000_both"]
    main, ddpm = metrics["variants"]["ddim50_both"], metrics["variants"]["ddpm1000_both"]
    assert main["n"] == 6 and ddpm["n"] == 3
    assert main["sampler"]["name"] == "ddim" and main["sampler"]["num_inference_steps"] == 50
    assert ddpm["sampler"]["name"] == "ddpm" and ddpm["sampler"]["num_inference_steps"] == 100  # smoke T = 100
    assert ddpm["main_on_same_slices"]["n"] == 3 and "main_on_same_slices" not in main
    for v in (main, ddpm):
        _check_stat(v["ssim"], -1, 1)
        _check_stat(v["nmse"], 0, math.inf)
        _check_stat(v["psnr"], 0, 100)
        assert 0 <= v["saturated"] <= 1 and v["s_per_image"] > 0
        assert set(v["dice"]) == {"LV", "MYO", "RV", "mean_fg"}
        assert all(d is None or 0 <= d <= 1 for d in v["dice"].values())
    assert set(metrics["ceiling"]["dice"]) == {"LV", "MYO", "RV", "mean_fg"}

    groups = metrics["groups"]
    assert set(groups) == {"view", "phase", "pathology"}
    assert sum(g["n"] for g in groups["view"].values()) == 6 and set(groups["pathology"]) <= {"NOR", "DCM"}
    for g in groups["phase"].values():
        assert {"ssim", "psnr", "nmse", "dice_fg"} <= set(g)

    assert meta["evaluation"] == {
        "n": 6,
        "n_ddpm": 3,
        "variants": ["ddpm1000_both", "ddim50_both"],
        "main": "ddim50_both",
        "realism_n": 8,
        "realism_seeds": 2,
        "batch_size": 32,
        "precision": "fp32",
    }

    # Realism: the smoke profile asks for 8 images, 2 seeds for each of 4 masks of the 8 held-out slices.
    realism = metrics["realism"]
    assert realism["variant"] == "ddim50_both" and realism["sampler"] == main["sampler"]
    assert (realism["n_generated"], realism["n_masks"], realism["seeds"]) == (8, 4, [0, 4])
    assert realism["reused_main"] is False  # the main variant ran on 6 slices, not on these 4 masks
    assert (realism["n_heldout"], realism["n_train"]) == (8, 8)  # all 8 held-out slices; as many training ones
    # The classifier two-sample tests: 8 images a set and 2 held-out subjects give 2 folds at most;
    # a test that ran reports chance-level-or-better figures on both measures.
    c2st = realism["c2st"]
    assert set(c2st) == {"generated", "real_vs_real", "autoencoder"}
    for name, block in c2st.items():
        assert block["available"] or block["reason"], name
        if block["available"]:
            assert 0.0 <= block["accuracy"] <= 1.0 and 0.0 <= block["auc"] <= 1.0
            assert block["n_a"] == block["n_b"] == 8 and block["grouped"] and block["folds"] == 2
    inception, seg = realism["inception"], realism["segmenter"]
    assert inception["available"] is False and "absent.pt" in inception["reason"] and inception["fid"] is None
    assert inception["ratio"] is None and inception["autoencoder"]["fid"] is None
    assert seg["available"] is True and seg["label"] == "in-domain (segmenter features)"
    assert (
        seg["fid"] >= 0
        and seg["real_vs_real_fid"] > 0
        and seg["ratio"] == pytest.approx(seg["fid"] / seg["real_vs_real_fid"])
    )
    assert (seg["n"], seg["n_heldout"], seg["n_real_vs_real"]) == (8, 8, 8)
    assert seg["kid_mean"] is not None and seg["kid_std"] >= 0 and seg["kid_subset_size"] == 4
    ae_fid = seg["autoencoder"]
    assert (
        ae_fid["n"] == 8
        and ae_fid["fid"] >= 0
        and ae_fid["ratio"] == pytest.approx(ae_fid["fid"] / seg["real_vs_real_fid"])
    )
    spec = realism["spectrum"]
    assert len(spec["frequency"]) == SIZE // 2 + 1 and spec["frequency"][-1] == 0.5 and spec["cutoff"] == 0.25
    assert set(spec["spectra"]) == {"generated", "heldout", "train", "reconstruction"}
    assert spec["reference"] == "heldout"
    assert all(len(v) == SIZE // 2 + 1 and min(v) >= 0 for v in spec["spectra"].values())
    assert all(0 < v < 1 for v in spec["hf_fraction"].values())
    assert set(spec["hf_ratio"]) == {"generated", "train", "reconstruction"}
    fraction = spec["hf_fraction"]
    assert spec["hf_ratio"]["generated"] == pytest.approx(fraction["generated"] / fraction["heldout"])
    assert spec["n"] == {"generated": 8, "heldout": 8, "train": 8, "reconstruction": 8}
    ae = realism["autoencoder"]
    assert ae["n"] == 8 and ae["n_train"] == 8
    _check_stat(ae["ssim"], -1, 1)
    _check_stat(ae["psnr"], 0, 100)
    assert ae["ssim"]["n"] == 8

    mem = metrics["memorisation"]
    assert len(mem["ratios"]) == 6 and all(r is None or r >= 0 for r in mem["ratios"]) and mem["space"] == "pixels"
    assert mem["summary"]["n"] == 6 and len(mem["baseline"]["ratios"]) == 6
    assert "another subject" in mem["heldout_reference"]


def test_side_files_are_written_and_consistent(evaluated, trained):
    metrics, out = evaluated
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["metrics.json", "per_image.csv", "samples.pt"]  # no temporary file left behind
    samples = torch.load(out.parent / "samples.pt", weights_only=False)
    assert samples["variant"] == "ddim50_both"
    assert samples["generated"].shape == samples["real"].shape == (6, 1, SIZE, SIZE)
    assert samples["label"].shape == samples["segmentation"].shape == (6, SIZE, SIZE)
    assert samples["cond"].shape == (6, 5, SIZE, SIZE) and samples["cond"].dtype == torch.uint8
    assert samples["generated"].abs().max() <= 1 and len(samples["meta"]["subject"]) == 6
    examples = samples["examples"]
    assert set(examples["generated"]) == {"ddim50_both", "ddpm1000_both"}
    assert len(examples["indices"]) == 3 and examples["generated"]["ddpm1000_both"].shape == (3, 1, SIZE, SIZE)

    table = pd.read_csv(out.parent / "per_image.csv")
    assert len(table) == 6 + 3 and set(table["variant"]) == {"ddim50_both", "ddpm1000_both"}
    main = table[table["variant"] == "ddim50_both"]
    assert np.isclose(main["ssim"].mean(), metrics["variants"]["ddim50_both"]["ssim"]["mean"], atol=1e-5)
    assert np.allclose(main["memorisation_ratio"], metrics["memorisation"]["ratios"], atol=1e-4, equal_nan=True)
    assert {"real_dice_fg", "subject", "view", "phase", "position"} <= set(table.columns)


def test_heldout_neighbour_excludes_the_same_subject():
    heldout = torch.tensor([[0.0], [10.0], [3.0]])
    generated = heldout[:2].clone()  # exact copies of held-out slices 0 and 1
    train = torch.tensor([[1.0], [12.0]])
    plain = memorisation_ratios(generated, train, heldout)
    assert np.allclose(plain["d_heldout"], 0)  # its own source slice: every ratio would be inf
    grouped = memorisation_ratios(generated, train, heldout, query_groups=["a", "b"], heldout_groups=["a", "b", "b"])
    assert grouped["index_heldout"].tolist() == [2, 0] and np.allclose(grouped["d_heldout"], [3, 10])
    assert np.allclose(grouped["ratio"], [1 / 3, 2 / 10])
    with pytest.raises(ValueError, match="outside group"):
        memorisation_ratios(generated, train, heldout, query_groups=["a", "a"], heldout_groups=["a", "a", "a"])


def test_cli_evaluate_prints_a_table_and_reuses_the_segmenter(evaluated, trained, tmp_path, capsys):
    cfg, store, root = trained
    (root / "vqvae" / "recon_metrics.json").write_text('{"metrics": {"ssim": {"mean": 0.5}}}')
    out = tmp_path / "m.json"
    code = cli_main(
        [
            "evaluate",
            "--config",
            "smoke",
            "--checkpoint",
            str(root / "ldm" / LAST),
            "--store",
            str(store),
            "--n",
            "4",
            "--variants",
            "ddim50_both",
            "ddim50_no_guidance",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--inception",
            str(tmp_path / "absent.pt"),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "ddim50_no_guidance" in printed and "ceiling" in printed and "real vs real" in printed
    assert "unavailable" in printed  # Inception on CPU is too slow for a unit test (test_fid.py checks it)
    metrics = json.loads(out.read_text())
    assert metrics["meta"]["n"] == 4 and metrics["meta"]["segmenter_trained"] is False  # the one trained above
    assert metrics["meta"]["precision"] == "fp32"  # the smoke profile's evaluation.precision
    # What --n and --variants leave unsaid comes from the smoke profile's evaluation section.
    assert metrics["meta"]["evaluation"]["n_ddpm"] == cfg.evaluation.n_ddpm == 2
    assert metrics["realism"]["n_generated"] == cfg.evaluation.realism_n == 8
    assert metrics["realism"]["reused_main"] is True  # 4 slices = the 4 realism masks: seed 0 reused
    assert metrics["variants"]["ddim50_no_guidance"]["guidance"]["scale_mask"] == 1.0
    assert metrics["reconstruction"] == {"metrics": {"ssim": {"mean": 0.5}}}


def test_cli_n_takes_a_count_or_all(trained, tmp_path, capsys):
    cfg, store, root = trained
    for bad in ("0", "some"):
        with pytest.raises(SystemExit):
            cli_main(["evaluate", "--config", "smoke", "--checkpoint", str(root / "ldm" / LAST), "--n", bad])
        assert "positive integer or 'all'" in capsys.readouterr().err


def test_cli_names_a_missing_checkpoint(trained, tmp_path, capsys):
    cfg, store, root = trained
    code = cli_main(
        [
            "evaluate",
            "--config",
            "smoke",
            "--checkpoint",
            str(tmp_path / "nope.pt"),
            "--store",
            str(store),
            "--out",
            str(tmp_path / "m.json"),
            "--quiet",
        ]
    )
    assert code == 2 and "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_evaluation_settings_take_the_profile_and_let_arguments_override():
    cfg = load_config("smoke")
    assert evaluation_settings(cfg) == cfg.evaluation
    s = evaluation_settings(cfg, n="all", n_ddpm=5, batch_size=3, realism_n=10, realism_seeds=3)
    assert (s.n, s.n_ddpm, s.batch_size, s.realism_n, s.realism_seeds) == (None, 5, 3, 10, 3)
    assert s.realism_masks == 4  # ceil(10 / 3)
    assert evaluation_settings(cfg, n=7).n == 7 and evaluation_settings(cfg, n=None).n == cfg.evaluation.n
    # Variants without the profile's main one: the first given becomes main; repeats count once.
    s = evaluation_settings(cfg, variants=["dpm20_both", "ddim50_edges_only", "dpm20_both"])
    assert s.main == "dpm20_both" and s.variants == ["dpm20_both", "ddim50_edges_only"]
    # With the profile's main among them, it stays main.
    assert evaluation_settings(cfg, variants=["dpm20_both", cfg.evaluation.main]).main == cfg.evaluation.main
    for bad in (
        dict(variants=["ddim7"]),
        dict(n=0),
        dict(realism_n=1),
        dict(main="ddim50_edges_only", variants=["ddim50_both"]),
    ):
        with pytest.raises(ConfigError, match="evaluation"):
            evaluation_settings(cfg, **bad)


def test_realism_images_use_distinct_seeds_and_reuse_only_identical_generations(trained):
    cfg, store, root = trained
    ldm = LatentDiffusion.from_checkpoint(root / "ldm" / LAST)
    settings = EvaluationConfig(n=4, realism_n=8, realism_seeds=2)
    sampler, guidance = variant_settings("ddim50_both", cfg.sampler, cfg.guidance, 100)
    masks = pick_indices(8, 4)
    main = generate_paired(ldm, store, indices=masks, sampler=sampler, guidance=guidance, seed=0, progress=False)
    kwargs = dict(n_split=8, n_train_split=16, progress=False)
    reused = realism_images(ldm, store, main, settings, sampler, guidance, **kwargs)
    fresh = realism_images(ldm, store, {**main, "indices": masks[:3]}, settings, sampler, guidance, **kwargs)
    assert reused["reused_main"] and not fresh["reused_main"] and reused["seeds"] == [0, 4]
    assert reused["generated"].shape == (8, 1, SIZE, SIZE) and reused["masks"].tolist() == masks.tolist()
    torch.testing.assert_close(reused["generated"], fresh["generated"])  # reuse changes no image
    torch.testing.assert_close(reused["generated"][:4], main["generated"])
    assert not torch.allclose(reused["generated"][:4], reused["generated"][4:])  # the second seed differs
    assert reused["heldout"].shape == reused["train"].shape == reused["reconstructed_train"].shape == (8, 1, SIZE, SIZE)
    assert reused["reconstructed_heldout"].abs().max() <= 1
    assert not torch.allclose(reused["reconstructed_heldout"], reused["heldout"])  # a lossy autoencoder


def test_paired_generation_takes_its_edges_from_the_image_the_mask_or_nowhere(trained):
    from mmldm.data.condition import mask_edges

    cfg, store, root = trained
    ldm = LatentDiffusion.from_checkpoint(root / "ldm" / LAST)
    masks = pick_indices(8, 2)
    runs = {e: generate_paired(ldm, store, indices=masks, seed=0, progress=False, edges=e) for e in EDGE_SOURCES}
    assert runs["image"]["edges"] == "image" and torch.count_nonzero(runs["none"]["cond"][:, 0]) == 0
    for i in range(2):
        drawn = mask_edges(runs["mask"]["label"][i].numpy().astype("uint8"), ldm.config.data)
        assert torch.equal(runs["mask"]["cond"][i, 0], torch.from_numpy(drawn).float())
        assert torch.equal(runs["mask"]["cond"][i, 1:], runs["image"]["cond"][i, 1:])  # the same mask
    with pytest.raises(ValueError, match="edges must be"):
        generate_paired(ldm, store, indices=masks, progress=False, edges="drawn")


def test_a_run_segmenter_trained_otherwise_is_kept_and_the_new_judge_named_by_its_settings(smoke_ldm, tmp_path):
    # evaluate --config <another profile> used to retrain <run>/segmenter/segmenter.pt in place, silently;
    # synthesize then audited with that judge.
    import dataclasses

    from mmldm.evaluate.run import get_segmenter

    cfg, store, folder = smoke_ldm["cfg"], smoke_ldm["store"], tmp_path / "segmenter"
    _, main, trained = get_segmenter(cfg, store, None, folder, progress=False)
    assert trained and main == folder / "segmenter.pt"
    before = main.read_bytes()
    other = dataclasses.replace(cfg, segmenter=dataclasses.replace(cfg.segmenter, epochs=cfg.segmenter.epochs + 1))
    with pytest.warns(UserWarning, match="it is kept"):
        _, judge, trained = get_segmenter(other, store, None, folder, progress=False)
    assert trained and judge.parent == folder and judge.name.startswith("segmenter-") and judge != main
    assert main.read_bytes() == before
    _, again, trained = get_segmenter(other, store, None, folder, progress=False)  # reused while it fits
    assert again == judge and not trained
    _, back, trained = get_segmenter(cfg, store, None, folder, progress=False)
    assert back == main and not trained
