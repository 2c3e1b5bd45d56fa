"""The trainers on the ``smoke`` profile, and the pieces they are made of.

Training data is a tiny store written directly (``write_tiny_store`` in tests/smoke_models.py: 30
slices of 32x32 concentric LV / myocardium / RV rings, 4 training subjects and 1 validation
subject), so these tests need neither the phantom nor real data. The trained smoke VQVAE and LDM
are conftest's session fixture ``smoke_ldm``, trained on that same store.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmldm.checkpoint import LAST, PREVIOUS, load_checkpoint, weights_hash
from mmldm.config import load_config
from mmldm.data.condition import mask_edges
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.diffusion.latent_norm import denormalize, latent_stats, normalize
from mmldm.errors import ConfigError
from mmldm.train.distributed import Dist
from mmldm.train.latents import LatentDataset, cache_key, ensure_cache
from mmldm.train.log import CSVLog, read_log
from mmldm.train.loop import ResumableSampler
from mmldm.train.optim import TrainConfig, build_optimizer, build_scheduler, lr_factor
from smoke_models import write_tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("store") / "tiny.h5")


# ---------------------------------------------------------------------------------------------
# Config, optimiser, schedule
# ---------------------------------------------------------------------------------------------


def test_profiles_have_training_sections():
    paper, laptop, smoke = (load_config(p) for p in ("paper", "laptop", "smoke"))
    assert paper.train_vqvae.lr == 8e-5 and paper.train_ldm.lr == 8e-6
    assert paper.train_vqvae.batch_size == paper.train_ldm.batch_size == 36
    assert paper.train_vqvae.optimizer == paper.train_ldm.optimizer == "adam"
    assert paper.train_vqvae.betas == (0.5, 0.999)  # the seed's autoencoder Adam
    assert not paper.train_ldm.ema and paper.train_ldm.latent_norm == "none"
    assert laptop.train_ldm.ema and laptop.train_ldm.latent_norm == "channel"
    assert smoke.train_vqvae.steps <= 50 and smoke.train_ldm.steps <= 50 and smoke.train_ldm.deterministic


def test_train_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="grad_accum"):
        load_config("smoke", overrides=["train_ldm.batch_size=5", "train_ldm.grad_accum=2"])
    with pytest.raises(ConfigError, match="LDM options"):
        load_config("smoke", overrides=["train_vqvae.ema=true"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_config("smoke", overrides=["train_ldm.optimizer=sgd"])
    with pytest.raises(ConfigError, match="processes"):
        TrainConfig(batch_size=6, grad_accum=2).micro_batch(world_size=2)


def test_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    const = TrainConfig(steps=100, lr=1.0, warmup_steps=0)
    assert all(lr_factor(s, const) == 1.0 for s in (0, 50, 99))
    # The scheduler applies the same numbers to the optimiser.
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(61):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1) and seen[60] == pytest.approx(0.55)


def test_optimizer_choice():
    params = list(torch.nn.Linear(2, 2).parameters())
    assert type(build_optimizer(params, TrainConfig(optimizer="adam"))) is torch.optim.Adam
    opt = build_optimizer(params, TrainConfig(optimizer="adamw", weight_decay=0.01, betas=(0.9, 0.99)))
    assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.9, 0.99)


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------


def take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_resumes_mid_epoch_and_shards_across_ranks():
    data = list(range(23))
    full = take(iter(ResumableSampler(data, 4, Dist(), seed=1)), 4 * 12)  # 5 batches per epoch: ~2.4 epochs
    later = take(iter(ResumableSampler(data, 4, Dist(), seed=1, start_batch=7)), 4 * 5)
    assert later == full[4 * 7 :]
    # Each epoch is a fresh permutation of distinct items (the 3 left over are dropped).
    epoch0, epoch1 = full[:20], full[20:40]
    assert len(set(epoch0)) == 20 and len(set(epoch1)) == 20 and epoch0 != epoch1
    # Two ranks: disjoint shards of the same epoch permutation.
    r0 = take(iter(ResumableSampler(data, 2, Dist(rank=0, world_size=2), seed=1)), 10)
    r1 = take(iter(ResumableSampler(data, 2, Dist(rank=1, world_size=2), seed=1)), 10)
    assert not set(r0) & set(r1) and len(set(r0) | set(r1)) == 20


def test_sampler_needs_one_full_batch():
    with pytest.raises(ConfigError, match="batch_size"):
        ResumableSampler(list(range(3)), 4, Dist(), seed=0)


# ---------------------------------------------------------------------------------------------
# Latents and logs
# ---------------------------------------------------------------------------------------------


def test_latent_normalisation_round_trip():
    scale, shift = torch.tensor([3.0, 0.5, 1.0]).view(1, 3, 1, 1), torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1)
    z = torch.randn(50, 3, 4, 4) * scale + shift
    stats = latent_stats(z, "channel")
    n = normalize(z, stats)
    assert torch.allclose(n.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(n.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    assert stats["min"] == pytest.approx(float(n.min()), abs=1e-5)
    assert torch.allclose(denormalize(n, stats), z, atol=1e-5)
    ident = latent_stats(z, "none")
    assert torch.equal(normalize(z, ident), z)


def test_latent_cache_is_keyed_and_rebuilt(store, tmp_path):
    from mmldm.models.vqvae import VQVAE

    cfg = load_config("smoke")
    torch.manual_seed(0)
    vqvae = VQVAE(cfg.vqvae).eval()
    h = weights_hash(vqvae.state_dict())
    slices = CardiacSliceDataset(store, split="train")
    path = tmp_path / "latents.h5"
    latents, rebuilt = ensure_cache(path, vqvae, h, slices, 8, torch.device("cpu"), progress=False)
    c = cfg.vqvae.latent_channels
    assert rebuilt and latents.shape == (len(slices), c, 8, 8)
    assert torch.equal(latents[:2], vqvae.encode_to_latent(torch.stack([slices[0]["image"], slices[1]["image"]])))
    again, rebuilt = ensure_cache(path, vqvae, h, slices, 8, torch.device("cpu"), progress=False)
    assert not rebuilt and torch.equal(again, latents)
    _, rebuilt = ensure_cache(path, vqvae, "another-vqvae", slices, 8, torch.device("cpu"), progress=False)
    assert rebuilt
    assert cache_key(h, store, slices.indices) != cache_key(h, store, slices.indices[:-1])
    ds = LatentDataset(slices, latents, latent_stats(latents))
    item = ds[3]
    assert item["latent"].shape == (c, 8, 8) and item["cond"].shape == (5, 32, 32) and item["view"].dtype == torch.long
    assert "mask_edge" not in item
    # Mask-first training: each item also carries the edges drawn from its own label map.
    drawn = LatentDataset(slices, latents, latent_stats(latents), mask_edges_from=cfg.data)[3]
    expected = mask_edges(slices[3]["label"].numpy().astype("uint8"), cfg.data)
    assert torch.equal(drawn["mask_edge"], torch.from_numpy(expected).float()[None])
    assert torch.equal(drawn["cond"], item["cond"]) and drawn["mask_edge"].sum() > 0


def test_csv_log_drops_rows_after_the_resume_step(tmp_path):
    log = CSVLog(tmp_path / "log.csv", ["step", "loss"])
    for s in (2, 4, 6, 8):
        log.write({"step": s, "loss": 1.0 / s, "ignored": 1})
    CSVLog(tmp_path / "log.csv", ["step", "loss"], resume_step=4)
    assert read_log(tmp_path / "log.csv")["step"].tolist() == [2, 4]


# ---------------------------------------------------------------------------------------------
# The two trainers, end to end on the smoke profile
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(smoke_ldm):
    """(cfg, run folder, VQVAE summary, LDM summary): conftest's session smoke VQVAE and LDM."""
    return smoke_ldm["cfg"], smoke_ldm["run"], smoke_ldm["vqvae"], smoke_ldm["ldm"]


def test_vqvae_trainer_writes_checkpoints_logs_and_figures(trained):
    cfg, root, vq, _ = trained
    run = root / "vqvae"
    assert vq["step"] == cfg.train_vqvae.steps
    assert (run / LAST).exists() and (run / PREVIOUS).exists()
    assert vq["loss_curve"] == cfg.figures_dir / "vqvae_loss_smoke.png" and vq["loss_curve"].stat().st_size > 0
    assert vq["samples"].exists() and vq["samples"].parent == run / "samples"
    log = read_log(run / "log.csv")
    every = cfg.train_vqvae.log_every
    assert log["step"].tolist() == list(range(every, cfg.train_vqvae.steps + 1, every))
    assert np.isfinite(log["total"]).all() and (log["images_per_s"] > 0).all()
    assert ((log["usage"] > 0) & (log["usage"] <= 1)).all() and (log["perplexity"] >= 1).all()
    assert log["recon"][-1] < log["recon"][0]  # it learns something even in 12 steps
    # The GAN terms switch on at vqvae.adversarial_start (5 in smoke), not before.
    on = log["step"] > cfg.vqvae.adversarial_start
    assert np.isnan(log["adversarial"][~on]).all() and np.isfinite(log["adversarial"][on]).all()
    assert np.isfinite(log["d_total"][on]).all()
    ckpt = load_checkpoint(run / LAST, stage="vqvae")
    assert ckpt["step"] == cfg.train_vqvae.steps and ckpt["config"]["profile"] == "smoke"
    assert set(ckpt["optimizers"]) == {"generator", "discriminator"} and "discriminator" in ckpt["extra"]
    assert weights_hash(ckpt["model"]) == vq["weights_hash"]


def test_ldm_trainer_caches_latents_and_keeps_the_stats(trained, store):
    cfg, root, _, ldm = trained
    run = root / "ldm"
    assert ldm["step"] == cfg.train_ldm.steps and (run / "latents.h5").exists()
    log = read_log(run / "log.csv")
    assert np.isfinite(log["loss"]).all() and (log["loss"] > 0).all()
    assert (np.diff(log["ema_decay"]) > 0).all()  # EMA warm-up: the decay grows
    ckpt = load_checkpoint(run / LAST, stage="ldm")
    stats = ckpt["extra"]["latent_stats"]
    assert stats["mode"] == "channel" and len(stats["mean"]) == cfg.unet.latent_channels
    assert ckpt["ema"] is not None and ckpt["ema"]["num_updates"] == cfg.train_ldm.steps
    vq_ckpt = load_checkpoint(root / "vqvae" / LAST)
    assert ckpt["extra"]["vqvae"]["hash"] == weights_hash(vq_ckpt["model"])
    assert math.isclose(ckpt["extra"]["latent_stats"]["std"][0], ldm["latent_stats"]["std"][0])


def test_ldm_samples_from_its_checkpoint(trained, store, one_thread):
    from mmldm.inference import LatentDiffusion

    _, root, _, ldm = trained
    assert ldm["samples"].exists()
    model = LatentDiffusion.from_checkpoint(root / "ldm" / LAST)
    assert model.step == ldm["step"] and model.latent_stats == ldm["latent_stats"]
    item = CardiacSliceDataset(store, split="val")[0]
    images = model.sample(item["cond"][None], item["view"][None])
    assert images.shape == (1, 1, 32, 32) and images.abs().max() <= 1
    again = model.sample(item["cond"][None], item["view"][None])
    assert torch.equal(images, again)  # seeded: the same picture twice
    assert not torch.equal(images, model.sample(item["cond"][None], item["view"][None], seed=1))
    # a seed per row: row b is what seed=seeds[b] makes alone (deterministic sampler), whatever the batch
    pair = model.sample(torch.stack([item["cond"]] * 2), torch.stack([item["view"]] * 2), seed=[0, 1])
    torch.testing.assert_close(pair[0:1], images)
    torch.testing.assert_close(pair[1:2], model.sample(item["cond"][None], item["view"][None], seed=1))
    # encode/decode are each other's inverse up to the VQ-VAE's reconstruction (same shape, range)
    z = model.encode(item["image"][None])
    assert z.shape == (
        1,
        model.config.unet.latent_channels,
        32 // model.vqvae.config.downsample_factor,
        32 // model.vqvae.config.downsample_factor,
    )
    assert model.decode(z).shape == (1, 1, 32, 32)


def test_ldm_refuses_a_vqvae_of_another_shape(trained, store, tmp_path):
    from mmldm.train.ldm import train_ldm

    _, root, _, _ = trained
    cfg = load_config(
        "smoke", overrides=["vqvae.down_sample=[true, false]", "unet.cond_downsample=2", "unet.hint_channels=[8, 16]"]
    )
    with pytest.raises(ConfigError, match="cond_downsample"):
        train_ldm(cfg, store, root / "vqvae" / LAST, tmp_path / "ldm", progress=False, figures_dir=tmp_path)


def test_resume_of_a_finished_run_changes_nothing(trained, store, one_thread):
    from mmldm.train.vqvae import train_vqvae

    cfg, root, vq, _ = trained
    again = train_vqvae(cfg, store, root / "vqvae", resume=True, progress=False, figures_dir=root / "figures")
    assert again["step"] == vq["step"] and again["weights_hash"] == vq["weights_hash"]


def test_vqvae_trains_with_the_grain_options(store, tmp_path, one_thread):
    """Hinge loss, spectral-norm discriminator at a lower lr, focal frequency loss and decoder
    noise: the trainer logs the frequency term, trains the discriminator and the noise scales."""
    from mmldm.train.vqvae import VQVAETrainer

    cfg = load_config(
        "smoke",
        overrides=[
            "vqvae.adversarial_start=0", "vqvae.adversarial_loss=hinge", "vqvae.disc_spectral_norm=true",
            "vqvae.disc_lr_scale=0.25", "vqvae.frequency_loss_weight=1.0", "vqvae.decoder_noise=true",
        ],
    )  # fmt: skip
    trainer = VQVAETrainer(cfg, store, tmp_path / "grain", tmp_path, progress=False)
    assert [g["lr"] for g in trainer.opt_d.param_groups] == [0.25 * cfg.train_vqvae.lr]
    before = {n: p.detach().clone() for n, p in trainer.disc.named_parameters()}
    row = trainer.train_step()
    assert row["frequency"] > 0 and "adversarial" in row and "d_total" in row
    assert any(not torch.equal(p, before[n]) for n, p in trainer.disc.named_parameters())
    assert all(m.weight.abs().sum() > 0 for m in trainer.model.decoder.noise)  # the scales moved off 0


def test_gradient_accumulation_matches_one_big_batch(store, tmp_path, one_thread):
    # Two micro-batches of 2 must give the gradient of one batch of 4: the same images (the data
    # order does not depend on the micro-batch size), each half's loss divided by 2. The VQVAE
    # without EMA codebook, restarts or GAN has no per-micro-batch side effects to spoil this.
    from mmldm.train.vqvae import VQVAETrainer

    grads = []
    for accum in (1, 2):
        cfg = load_config(
            "smoke",
            overrides=[
                f"train_vqvae.grad_accum={accum}",
                "vqvae.ema=false",
                "vqvae.restart_after=0",
                "vqvae.adversarial_start=100",
                "train_vqvae.grad_clip=null",
            ],
        )  # clipping would hide a scale error
        trainer = VQVAETrainer(cfg, store, tmp_path / f"accum{accum}", tmp_path, progress=False)
        trainer.train_step()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("amx", [True, False])
def test_amp_means_bf16_autocast_where_the_device_computes_it_natively(monkeypatch, amx):
    # amp: bf16 on a CPU with AMX tiles (and CUDA with bf16), fp32 on other CPUs, where bf16
    # convolutions are slower than fp32 ones; amp off is fp32 everywhere.
    from mmldm.train.loop import autocast, training_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert training_precision(TrainConfig(amp=False), cpu) == "fp32"
    assert training_precision(TrainConfig(amp=True), cpu) == ("bf16" if amx else "fp32")
    with autocast(TrainConfig(amp=True), cpu):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == (torch.bfloat16 if amx else torch.float32)
    laptop = load_config("laptop")
    assert laptop.train_vqvae.amp and laptop.train_ldm.amp and not load_config("smoke").train_ldm.amp


def test_ldm_without_cache_and_with_gpu_options_on_the_cpu(trained, store, tmp_path, one_thread):
    # cache_latents: false encodes into memory and writes no file; channels_last and compile are
    # CUDA options that the CPU ignores; amp is bf16 autocast where the CPU has AMX, else fp32.
    from mmldm.train.ldm import train_ldm

    _, root, _, _ = trained
    cfg = load_config(
        "smoke",
        overrides=[
            "train_ldm.steps=3",
            "train_ldm.cache_latents=false",
            "train_ldm.amp=true",
            "train_ldm.channels_last=true",
            "train_ldm.compile=true",
            "train_ldm.latent_norm=none",
            "train_ldm.ema=false",
        ],
    )
    result = train_ldm(cfg, store, root / "vqvae" / LAST, tmp_path / "ldm", progress=False, figures_dir=tmp_path)
    assert result["step"] == 3 and result["latent_cache"] is None and not (tmp_path / "ldm" / "latents.h5").exists()
    assert result["latent_stats"]["mean"] == [0.0] * cfg.unet.latent_channels
    assert math.isfinite(result["last"]["loss"]) and load_checkpoint(result["checkpoint"])["ema"] is None


def test_auto_resume_continues_the_same_model_and_sets_aside_another(store, tmp_path, one_thread):
    # resume="auto" (what notebooks 03/04 use): more steps of the same model continue; a changed
    # model starts afresh, and the old checkpoints are kept in replaced/, not lost.
    from mmldm.train.vqvae import train_vqvae

    run = tmp_path / "vqvae"
    kw = dict(progress=False, figures_dir=tmp_path / "figures")
    first = train_vqvae(load_config("smoke", overrides=["train_vqvae.steps=4"]), store, run, resume="auto", **kw)
    more = train_vqvae(load_config("smoke", overrides=["train_vqvae.steps=6"]), store, run, resume="auto", **kw)
    assert first["step"] == 4 and more["step"] == 6
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[-1].startswith("6,")  # one log, continued
    other = load_config("smoke", overrides=["train_vqvae.steps=6", "vqvae.codebook_size=32"])
    fresh = train_vqvae(other, store, run, resume="auto", **kw)
    assert fresh["step"] == 6 and fresh["weights_hash"] != more["weights_hash"]
    assert (run / "replaced" / "last.pt").exists()  # the other model's checkpoint is kept
    # resume=True is strict about what it continues: it takes the checkpoint that is there.
    again = train_vqvae(other, store, run, resume=True, **kw)
    assert again["weights_hash"] == fresh["weights_hash"]


def test_clip_to_latents_uses_the_checkpoint_range():
    from mmldm.diffusion.base_sampler import SamplerConfig
    from mmldm.inference import resolve_clipping

    stats = {"min": -2.5, "max": 3.0}
    assert resolve_clipping(SamplerConfig(clip_to_latents=True), stats).clip_x0 == (-2.5, 3.0)
    assert resolve_clipping(SamplerConfig(), stats).clip_x0 is None
    assert resolve_clipping(SamplerConfig(clip_to_latents=True, clip_x0=(-1.0, 1.0)), stats).clip_x0 == (-1.0, 1.0)
    with pytest.raises(ValueError, match="alternatives"):
        SamplerConfig(clip_to_latents=True, dynamic_threshold=0.99)
