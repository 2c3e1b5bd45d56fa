"""Profiles load strictly: every profile builds, and a wrong key or value names itself."""

from __future__ import annotations

import pytest

from mmldm.config import PROFILES, REPO_ROOT, Config, load_config, to_dict
from mmldm.errors import ConfigError
from mmldm.report import report_dir


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert cfg.data.size % 2 ** sum(cfg.vqvae.down_sample) == 0


def test_paper_profile_is_the_seed():
    cfg = load_config("paper")
    assert cfg.data.size == 256
    assert cfg.vqvae.latent_channels == 3 and cfg.vqvae.codebook_size == 16384
    assert cfg.data.size // 2 ** sum(cfg.vqvae.down_sample) == 32  # 32x32x3 latent
    assert cfg.unet.down_channels == [256, 384, 512, 768] and cfg.unet.mid_channels == [768, 512]
    assert cfg.unet.num_down_layers == cfg.unet.num_up_layers == 2
    assert cfg.unet.num_heads == 8 and cfg.unet.dropout == 0.1
    assert cfg.unet.conditioning == "concat_nearest"
    assert cfg.diffusion.num_train_timesteps == 1000
    assert cfg.sampler.name == "ddpm" and cfg.sampler.num_inference_steps == 1000
    assert cfg.data.val == 10


def test_paper_yaml_matches_code_defaults():
    # paper.yaml spells out every key; it must agree with the dataclass defaults it documents.
    assert to_dict(load_config("paper")) == to_dict(Config())


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\nunet:\n  down_chanels: [8, 16]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unet.*down_chanels"):
        load_config(bad)


def test_unknown_section_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\ntrainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="trainer"):
        load_config(bad)


def test_wrong_type_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\ndata:\n  size: sixty-four\n")
    with pytest.raises(ConfigError, match=r"data\.size.*integer"):
        load_config(bad)


def test_bad_literal_is_named():
    with pytest.raises(ConfigError, match="conditioning"):
        load_config("smoke", overrides=["unet.conditioning=film"])


def test_inconsistent_sections_rejected():
    other = load_config("smoke").vqvae.latent_channels + 1
    with pytest.raises(ConfigError, match="latent_channels"):
        load_config("smoke", overrides=[f"unet.latent_channels={other}"])


def test_overrides_and_base_chain():
    cfg = load_config("smoke", overrides=["data.size=64", "sampler.name=dpm_solver"])
    assert cfg.data.size == 64 and cfg.sampler.name == "dpm_solver"
    # smoke -> quick -> paper: keys smoke does not set come from quick, then paper.
    assert cfg.unet.conditioning == "hint_encoder"  # from quick (laptop overrides it with spade)
    assert cfg.diffusion.beta_schedule == load_config("paper").diffusion.beta_schedule


def test_missing_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_config("no_such_profile")
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_paths_are_per_source_and_profile(acdc_root, mnms2_root):
    # Run folder and store are named by the dataset kind and the profile; figures and report go
    # inside the run folder (the tracked report/ only changes with ./run_all.sh --publish).
    a = load_config("laptop")
    b = load_config("laptop", overrides=[f"paths.source={acdc_root}"])
    assert a.store_path != b.store_path and b.store_path.name == "acdc_laptop.h5"
    assert load_config("smoke").store_path != a.store_path
    for cfg, run in (
        (a, "phantom_laptop"),
        (b, "acdc_laptop"),
        (load_config("paper", overrides=[f"paths.source={mnms2_root}"]), "mnms2_paper"),
        (load_config("smoke"), "phantom_smoke"),
    ):
        assert (
            cfg.run_dir == REPO_ROOT / "runs" / run and cfg.store_path == REPO_ROOT / "data" / "processed" / f"{run}.h5"
        )
        assert cfg.figures_dir == cfg.run_dir / "figures" and report_dir(cfg) == cfg.run_dir
    # A forced format names the kind without looking at the folder; a folder of no known layout is "data".
    assert load_config("laptop", overrides=["paths.source=/nowhere", "paths.format=mnms"]).run_dir.name == "mnms_laptop"
    assert load_config("laptop", overrides=["paths.source=/nowhere"]).run_dir.name == "data_laptop"
    # paths.name (./run_all.sh --name) names the run folder and store instead; {source} stays usable.
    named = load_config("laptop", overrides=[f"paths.source={acdc_root}", "paths.name=acdc_testing"])
    assert named.run_dir.name == "acdc_testing" and named.store_path.name == "acdc_testing.h5"
    assert load_config("smoke", overrides=["paths.runs=runs/{source}-{profile}"]).run_dir.name == "phantom-smoke"
    for bad in ("a/b", "''", ".."):
        with pytest.raises(ConfigError, match="name"):
            load_config("smoke", overrides=[f"paths.name={bad}"])


def test_evaluation_section_is_validated(tmp_path):
    cfg = load_config("smoke")
    assert (cfg.evaluation.n, cfg.evaluation.n_ddpm, cfg.evaluation.realism_n, cfg.evaluation.realism_seeds) == (
        4,
        2,
        8,
        2,
    )
    assert cfg.evaluation.main in cfg.evaluation.variants and len(cfg.evaluation.variants) == 8
    assert load_config("smoke", overrides=["evaluation.n=null"]).evaluation.n is None  # null: every slice
    for override, message in (
        ("evaluation.variants=[ddim50_both, ddim7]", "ddim7"),
        ("evaluation.n=0", r"evaluation\.n"),
        ("evaluation.realism_seeds=0", "realism_seeds"),
        ("evaluation.realism_n=1", "realism_n"),
        ("evaluation.main=dpm20_both", "evaluation.main"),
        ("evaluation.variants=[]", "empty"),
        ("evaluation.n_ddpm=-1", "n_ddpm"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(
                "smoke", overrides=[override, "evaluation.variants=[ddim50_both]"] if "main" in override else [override]
            )
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\nevaluation:\n  seeds: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*evaluation.*seeds"):
        load_config(bad)
